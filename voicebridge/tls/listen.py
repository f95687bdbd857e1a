"""TLS for ``--listen ssl:...``: the whole certificate chain, TLS 1.2 or newer, reloadable on SIGHUP.

The description is Twisted's (``ssl:443:privateKey=privkey.pem:certKey=fullchain.pem``), but the
endpoint is built here because Twisted's own parser keeps only the first certificate of certKey:
with certbot's fullchain.pem the intermediate never reaches the client, and Twilio, which has no
cached intermediates, fails the handshake (error 31910).

``ReloadableTLS`` hands every new connection the current context; ``reload()`` checks new files
completely before swapping, so a broken renewal keeps the old certificate. Connections already
open keep the context they started with.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters, TLSVersion
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from voicebridge.tls.inspect import dns_names

log = Logger(namespace="voicebridge.tls")

MINIMUM_VERSION = TLSVersion.TLSv1_2
EXPIRY_WARNING_DAYS = 14
KNOWN_KEYS = ("port", "privateKey", "certKey", "extraCertChain", "dhParameters", "interface", "backlog")
_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


class TLSConfigError(ValueError):
    """A TLS listener that cannot work, with the file and the reason."""


def is_ssl(description: str) -> bool:
    return description.split(":", 1)[0].strip().lower() == "ssl"


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """``ssl:443:a=b`` -> (["ssl", "443"], {"a": "b"}), with Twisted's own quoting rules (``\\:``).

    Twisted's tokenizer is private; it is used in this one place only, and tests pin its behaviour.
    """
    from twisted.internet.endpoints import _parse

    return _parse(description)


def tcp_fields(description: str, args, kwargs, known, usage: str, error=TLSConfigError, interface: str = ""):
    """(port, interface, backlog) of a TCP listening description (``ssl:``, ``tcp:``), or ``error`` naming the
    mistake: a key not in ``known``, no port or more than one (``usage`` shows the form), a bad port or backlog."""
    where = f"--listen {description}"
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise error(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    positional = args[1:]
    if "port" in kwargs:
        positional = [kwargs["port"], *positional]
    if len(positional) != 1:
        raise error(f"{where}: expected {usage}")
    port = positional[0]
    if not port.isdigit() or int(port) > 65535:
        raise error(f"{where}: port {port!r} is not a TCP port number")
    backlog = kwargs.get("backlog", "50")
    if not backlog.isdigit() or int(backlog) < 1:
        raise error(f"{where}: backlog {backlog!r} is not a positive number")
    return int(port), kwargs.get("interface", interface), int(backlog)


@dataclass(frozen=True)
class TLSListen:
    """What one ``ssl:`` description asks for."""

    port: int
    private_key: str
    cert_key: str
    extra_chain: str | None = None
    dh_parameters: str | None = None
    interface: str = ""
    backlog: int = 50


def parse_ssl(description: str) -> TLSListen:
    """Parse ``ssl:PORT:privateKey=...:certKey=...[:extraCertChain=...][:interface=...][:backlog=...]``."""
    args, kwargs = split_description(description)
    where = f"--listen {description}"
    if not args or args[0].lower() != "ssl":
        raise TLSConfigError(f"{where}: not an ssl: endpoint")
    if "sslmethod" in kwargs:
        raise TLSConfigError(f"{where}: sslmethod is not supported; voicebridge always negotiates TLS 1.2 or newer")
    port, interface, backlog = tcp_fields(description, args, kwargs, KNOWN_KEYS, "ssl:PORT:privateKey=KEY:certKey=CERT")
    private_key = kwargs.get("privateKey")
    if not private_key:
        raise TLSConfigError(f"{where}: privateKey= is required (certbot: /etc/letsencrypt/live/DOMAIN/privkey.pem)")
    return TLSListen(
        port=int(port),
        private_key=private_key,
        cert_key=kwargs.get("certKey") or private_key,
        extra_chain=kwargs.get("extraCertChain") or None,
        dh_parameters=kwargs.get("dhParameters") or None,
        interface=interface,
        backlog=backlog,
    )


# Loading and checking a certificate, key and chain: pure, apart from reading the files.


def _read(path: str, role: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"{role} {path}: {e.strerror}") from None


def _certificates(data: bytes, path: str, role: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError(f"{role} {path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(f"{role} {path}: a certificate in it does not parse ({e})") from None


def _private_key(data: bytes, path: str):
    block = _KEY_BLOCK.search(data)
    if block is None:
        raise TLSConfigError(f"privateKey {path}: no PEM private key in it (-----BEGIN PRIVATE KEY-----)")
    try:
        return serialization.load_pem_private_key(block.group(0), password=None)
    except TypeError:
        raise TLSConfigError(
            f"privateKey {path}: the key is encrypted; voicebridge needs it unencrypted, as certbot writes it"
        ) from None
    except ValueError as e:
        raise TLSConfigError(f"privateKey {path}: the key does not parse ({e})") from None


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Material:
    """A private key with its certificate chain (leaf first), and what is worth warning about."""

    key: object
    chain: tuple
    source: str
    warnings: tuple = ()
    expired: bool = False
    not_after: datetime.datetime = field(default=None)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def fingerprint(self) -> str:
        return self.leaf.fingerprint(hashes.SHA256()).hex()

    def summary(self) -> dict:
        return {
            "subject": self.leaf.subject.rfc4514_string(),
            "names": dns_names(self.leaf),  # what clients check (RFC 6125): a certificate without them names nothing
            "issuer": self.leaf.issuer.rfc4514_string(),
            "not_after": self.not_after.isoformat(),
            "chain_length": len(self.chain),
            "sha256": self.fingerprint,
        }


def load_material(
    private_key: str, cert_key: str, extra_chain: str | None = None, now: datetime.datetime | None = None
) -> Material:
    """Read and check the files; raise TLSConfigError for anything that cannot serve."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = _private_key(_read(private_key, "privateKey"), private_key)
    chain = _certificates(_read(cert_key, "certKey"), cert_key, "certKey")
    if extra_chain:
        chain += _certificates(_read(extra_chain, "extraCertChain"), extra_chain, "extraCertChain")
    unique, seen = [], set()
    for cert in chain:  # fullchain.pem and chain.pem together repeat the intermediate
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint not in seen:
            seen.add(fingerprint)
            unique.append(cert)
    leaf = unique[0]
    if _public(leaf.public_key()) != _public(key.public_key()):
        raise TLSConfigError(
            f"privateKey {private_key} does not belong to the certificate in certKey {cert_key} "
            f"({leaf.subject.rfc4514_string()}): the two files are from different issuances"
        )
    warnings = []
    not_after = leaf.not_valid_after_utc
    expired = now >= not_after
    if expired:
        warnings.append(
            f"the certificate in {cert_key} expired on {not_after:%Y-%m-%d %H:%M} UTC: clients refuse it (Twilio: error 31910)"
        )
    elif now < leaf.not_valid_before_utc:
        warnings.append(f"the certificate in {cert_key} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    elif not_after - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        days = (not_after - now).days
        warnings.append(
            f"the certificate in {cert_key} expires in {days} day(s), on {not_after:%Y-%m-%d}: renew it, then send SIGHUP"
        )
    self_issued = leaf.issuer == leaf.subject
    if not self_issued and not any(c.subject == leaf.issuer for c in unique[1:]):
        warnings.append(
            f"certKey {cert_key} holds the certificate but not the intermediate that issued it ({leaf.issuer.rfc4514_string()}): "
            "clients without it cached, Twilio among them, fail the handshake (error 31910). Use certbot's fullchain.pem, "
            "or add extraCertChain=chain.pem"
        )
    for lower, upper in zip(unique, unique[1:], strict=False):
        if lower.issuer != upper.subject and lower.issuer != lower.subject:
            warnings.append(
                f"the chain in {cert_key} is out of order: {lower.subject.rfc4514_string()} is followed by "
                f"{upper.subject.rfc4514_string()}, which did not issue it (leaf first, then each issuer)"
            )
            break
    return Material(key, tuple(unique), cert_key, tuple(warnings), expired, not_after)


def certificate_options(material: Material, dh_parameters: str | None = None) -> CertificateOptions:
    """Twisted's TLS settings for this material: the whole chain, TLS 1.2 or newer. Checked by OpenSSL now."""
    dh = None
    if dh_parameters:
        _read(dh_parameters, "dhParameters")
        try:
            SSL.Context(SSL.TLS_METHOD).load_tmp_dh(dh_parameters.encode())
        except SSL.Error as e:
            raise TLSConfigError(f"dhParameters {dh_parameters}: OpenSSL cannot read DH parameters from it ({e})") from None
        dh = DiffieHellmanParameters.fromFile(FilePath(dh_parameters))
    options = CertificateOptions(  # cryptography objects: pyOpenSSL >= 24.3 takes them, and deprecates its own
        privateKey=material.key,
        certificate=material.leaf,
        extraCertChain=list(material.chain[1:]),
        dhParameters=dh,
        raiseMinimumTo=MINIMUM_VERSION,
    )
    try:
        options.getContext()  # OpenSSL's own checks, now rather than at the first client
    except Exception as e:
        raise TLSConfigError(f"OpenSSL refused the certificate from {material.source}: {e}") from None
    return options


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableTLS:
    """The TLS side of one ``ssl:`` listener; every new connection gets the current certificate."""

    def __init__(self, spec: TLSListen, listener: str = ""):
        """Reads and checks everything now (raises TLSConfigError); says nothing until ``announce()``."""
        self.spec = spec
        self.listener = listener or f"ssl:{spec.port}"
        self.material = self._load()
        self.options = certificate_options(self.material, spec.dh_parameters)

    def announce(self) -> None:
        """Log what is served (``tls.loaded``), once the listener is bound and has its address."""
        self._announce("tls.loaded", "serving")

    def _load(self) -> Material:
        return load_material(self.spec.private_key, self.spec.cert_key, self.spec.extra_chain)

    def _announce(self, event_name: str, verb: str) -> None:
        summary = self.material.summary()
        log.info(
            "{listener}: {verb} certificate {subject} for {names_text}, issued by {issuer}, valid until {not_after}; "
            "sending a chain of {chain_length} certificate(s)",
            event_name=event_name,
            listener=self.listener,
            verb=verb,
            names_text=", ".join(summary["names"]) or "no names",
            **summary,
        )
        for warning in self.material.warnings:
            log.warn("{listener}: {warning}", event_name="tls.warning", listener=self.listener, warning=warning)

    def reload(self) -> bool:
        """Load the files again; swap only if the new material is fully usable. Returns whether it swapped."""
        try:
            material = self._load()
            if material.expired:
                raise TLSConfigError(material.warnings[0])
            options = certificate_options(material, self.spec.dh_parameters)
        except Exception as e:
            log.error(
                "{listener}: certificate reload failed, still serving {sha256} valid until {not_after}: {reason}",
                event_name="tls.reload_failed",
                listener=self.listener,
                reason=str(e),
                sha256=self.material.fingerprint,
                not_after=self.material.not_after.isoformat(),
            )
            return False
        changed = material.fingerprint != self.material.fingerprint
        self.material, self.options = material, options
        self._announce("tls.reloaded", "now serving" if changed else "reloaded, unchanged,")
        return True

    # What TLSMemoryBIOFactory calls for each new connection.

    def serverConnectionForTLS(self, protocol):
        return self.options.serverConnectionForTLS(protocol)

    def getContext(self):
        return self.options.getContext()


def build(description: str) -> ReloadableTLS:
    """Everything an ``ssl:`` listener serves, read and checked by OpenSSL; TLSConfigError names the flag."""
    spec = parse_ssl(description)
    try:
        return ReloadableTLS(spec, f"ssl:{spec.port}")
    except TLSConfigError as e:
        raise TLSConfigError(f"--listen {description}: {e}") from None


def server_endpoint(reactor, description: str, tls: ReloadableTLS | None = None) -> tuple[SSL4ServerEndpoint, ReloadableTLS]:
    """The endpoint for an ``ssl:`` description, and its reloadable TLS settings (``tls``: as built at start-up)."""
    tls = tls or build(description)
    spec = tls.spec
    endpoint = SSL4ServerEndpoint(reactor, spec.port, tls, backlog=spec.backlog, interface=spec.interface)
    return endpoint, tls
