"""Client connections voicebridge makes (to an application behind a relay, or to itself as Twilio).

``wss://`` is always verified: the certificate must chain to a trusted root and name the host
(``optionsForClientTLS``, with ``service_identity`` checking the name). The roots are the
system's, or those of a PEM file the operator names (a private CA, or the tests' CA).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS


def endpoint_for(
    reactor, url: str, trust_root=None, connect_to: tuple[str, int] | None = None, timeout: float = 10, tls_options=None
):
    """A client endpoint for a ws(s):// or http(s):// URL.

    TLS is verified against ``trust_root`` (system roots when None), unless the caller brings its
    own ``tls_options`` (an IOpenSSLClientConnectionCreator). ``connect_to`` sends the connection
    to another (host, port), leaving SNI and Host as the URL says.
    """
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    port = parts.port or (443 if secure else 80)
    host, port = connect_to if connect_to else (parts.hostname, port)
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if secure:
        endpoint = wrapClientTLS(tls_options or ssl.optionsForClientTLS(parts.hostname, trustRoot=trust_root), endpoint)
    return endpoint


def load_trust_root(path: str):
    """The CA certificates in a PEM file, as a trust root; raises ValueError naming the file and the problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read CA file {path}: {e.strerror}") from None
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        raise ValueError(f"CA file {path} holds no PEM certificate")
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:  # OpenSSL's errors are not one type
        raise ValueError(f"CA file {path}: a certificate does not load ({e})") from None
    return ssl.trustRootFromCertificates(certificates)
