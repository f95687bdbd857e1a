"""Certificates made by the tests: a root CA, an intermediate, and leaves good and bad.

Everything a TLS deployment meets: a full chain, a leaf without its intermediate (Twilio's 31910),
a name mismatch, an expired leaf, a root nobody trusts.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("voice.example.test", "localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "voicebridge tests"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issuer:
    key: object
    cert: x509.Certificate


def _sign(
    subject_key, subject: x509.Name, issuer: Issuer | None, *, ca: bool, names=(), not_before=None, not_after=None, path_len=None
):
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = not_before or now - datetime.timedelta(hours=1)
    not_after = not_after or now + datetime.timedelta(days=30)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        sans = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    return builder.sign((issuer or Issuer(subject_key, None)).key, hashes.SHA256())


class PKI:
    """A root, an intermediate under it, and files written in ``directory``."""

    def __init__(self, directory: Path, label: str = "voicebridge test"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        root_key = _key()
        self.root = Issuer(
            root_key,
            _sign(
                root_key,
                _name(f"{label} root CA"),
                None,
                ca=True,
                path_len=1,
                not_after=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=365),
            ),
        )
        inter_key = _key()
        self.intermediate = Issuer(inter_key, _sign(inter_key, _name(f"{label} intermediate CA"), self.root, ca=True, path_len=0))
        self.root_pem = self._write("root.pem", _pem(self.root.cert))
        self.intermediate_pem = self._write("intermediate.pem", _pem(self.intermediate.cert))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def leaf(self, prefix: str = "leaf", names=DEFAULT_NAMES, expired: bool = False) -> Leaf:
        """A server certificate signed by the intermediate, written the way certbot writes it."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        window = {}
        if expired:
            window = {"not_before": now - datetime.timedelta(days=60), "not_after": now - datetime.timedelta(days=1)}
        cert = _sign(key, _name(names[0]), self.intermediate, ca=False, names=names, **window)
        return Leaf(
            key=self._write(f"{prefix}-privkey.pem", _pem_key(key)),
            cert=self._write(f"{prefix}-cert.pem", _pem(cert)),
            chain=self._write(f"{prefix}-chain.pem", _pem(self.intermediate.cert)),
            fullchain=self._write(f"{prefix}-fullchain.pem", _pem(cert) + _pem(self.intermediate.cert)),
            certificate=cert,
        )

    def self_signed(self, prefix: str = "selfsigned", names=DEFAULT_NAMES) -> Leaf:
        """A leaf nobody's root vouches for (an untrusted root, to a client)."""
        key = _key()
        cert = _sign(key, _name(names[0]), None, ca=False, names=names)
        pem = _pem(cert)
        return Leaf(
            key=self._write(f"{prefix}-privkey.pem", _pem_key(key)),
            cert=self._write(f"{prefix}-cert.pem", pem),
            chain=self._write(f"{prefix}-chain.pem", b""),
            fullchain=self._write(f"{prefix}-fullchain.pem", pem),
            certificate=cert,
        )


@dataclass
class Leaf:
    key: Path
    cert: Path  # the leaf alone (certbot's cert.pem)
    chain: Path  # the intermediate(s) (certbot's chain.pem)
    fullchain: Path  # leaf + intermediate (certbot's fullchain.pem)
    certificate: x509.Certificate
