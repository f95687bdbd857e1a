"""A blocking TLS client for tests: what certificate a server shows, and whether it verifies."""

from __future__ import annotations

import socket
import ssl
import warnings
from dataclasses import dataclass

from cryptography import x509


@dataclass
class Handshake:
    leaf: x509.Certificate
    version: str


def handshake(port: int, cafile, hostname: str = "voice.example.test", version: ssl.TLSVersion | None = None) -> Handshake:
    """Connect to 127.0.0.1:port presenting ``hostname``, verify against ``cafile`` only; raises ssl.SSLError."""
    context = ssl.create_default_context(cafile=str(cafile))
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
            context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what the server must refuse
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            return Handshake(x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)), tls.version())


def trust_root(pki):
    """The test root as a Twisted trust root, for ``twiliosim.play_call``: read as the relay reads ``--relay-ca``."""
    from voicebridge.net.wsclient import load_trust_root

    return load_trust_root(str(pki.root_pem))
