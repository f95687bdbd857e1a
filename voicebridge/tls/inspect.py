"""What a TLS server presents, and why a client like Twilio's would refuse it.

``InspectingTLS`` is a client connection creator that lets OpenSSL verify the chain against the
trust roots as usual, but records every verification error instead of stopping at the first, so
the probe sees the whole picture: the certificates the server actually sent, and each problem
with them. ``classify`` turns that record into one problem a person can fix; it is pure.

Telling an incomplete chain from an untrusted root (the heuristic, documented in the README):

- OpenSSL reports a self-signed certificate (error 18 or 19): the chain ends at a root nobody
  trusts -> ``untrusted``.
- OpenSSL cannot find the issuer of a certificate (errors 2, 20, 21):
  - at the leaf (depth 0, not a CA): the server sent its certificate without the intermediate
    that signed it -> ``incomplete-chain``. Public CAs never sign server certificates with a root
    directly (the CA/Browser Forum rules keep roots offline), so a leaf's missing issuer is an
    intermediate that the server should have sent.
  - at an intermediate (a CA certificate): the chain the server sent is complete up to a root
    that is not in the trust store, i.e. a private or unknown CA -> ``untrusted``.
  Limits: a private CA that signs leaves straight from its root looks like ``incomplete-chain``;
  a chain with two intermediates of which the upper one is missing looks like ``untrusted``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

# OpenSSL's X509_V_ERR_* codes the classification needs.
UNABLE_TO_GET_ISSUER_CERT = 2
CERT_SIGNATURE_FAILURE = 7
CERT_NOT_YET_VALID = 9
CERT_HAS_EXPIRED = 10
DEPTH_ZERO_SELF_SIGNED_CERT = 18
SELF_SIGNED_CERT_IN_CHAIN = 19
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
INVALID_CA = 24
INVALID_PURPOSE = 26

_ISSUER_MISSING = {UNABLE_TO_GET_ISSUER_CERT, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE}
_SELF_SIGNED = {DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN}
_TIME = {CERT_NOT_YET_VALID, CERT_HAS_EXPIRED}

_ERROR_TEXT = {
    UNABLE_TO_GET_ISSUER_CERT: "unable to get issuer certificate",
    CERT_SIGNATURE_FAILURE: "certificate signature failure",
    CERT_NOT_YET_VALID: "certificate is not yet valid",
    CERT_HAS_EXPIRED: "certificate has expired",
    DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed certificate",
    SELF_SIGNED_CERT_IN_CHAIN: "self-signed certificate in certificate chain",
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unable to get local issuer certificate",
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unable to verify the first certificate",
    INVALID_CA: "invalid CA certificate",
    INVALID_PURPOSE: "unsupported certificate purpose",
}

# Problems, most useful to fix first: a certificate for another name is the wrong certificate
# altogether; an expired one must be renewed whatever else is wrong.
HOSTNAME_MISMATCH = "hostname-mismatch"
EXPIRED = "expired"
UNTRUSTED = "untrusted"
INCOMPLETE_CHAIN = "incomplete-chain"
HANDSHAKE = "handshake-failed"
PRIORITY = (HOSTNAME_MISMATCH, EXPIRED, UNTRUSTED, INCOMPLETE_CHAIN)


@dataclass(frozen=True)
class VerifyError:
    depth: int
    errno: int
    certificate: x509.Certificate | None = None

    @property
    def text(self) -> str:
        return _ERROR_TEXT.get(self.errno, f"OpenSSL verify error {self.errno}")


@dataclass
class TLSFindings:
    """What one TLS handshake showed, and the problem a client like Twilio's would stop at."""

    problem: str | None
    reason: str
    problems: list[str] = field(default_factory=list)
    chain: list[dict] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    not_after: str | None = None
    protocol: str | None = None

    def as_dict(self) -> dict:
        return {
            "problem": self.problem,
            "reason": self.reason,
            "problems": self.problems,
            "chain": self.chain,
            "names": self.names,
            "not_after": self.not_after,
            "protocol": self.protocol,
        }


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string() or "(empty name)"


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def describe(cert: x509.Certificate) -> dict:
    return {
        "subject": common_name(cert.subject),
        "issuer": common_name(cert.issuer),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "ca": is_ca(cert),
        "self_signed": cert.subject == cert.issuer,
    }


def hostname_problem(cert: x509.Certificate, hostname: str) -> str | None:
    """Why ``cert`` is not valid for ``hostname`` (service_identity's RFC 6125 rules), or None."""
    try:
        try:
            ip = ipaddress.ip_address(hostname)
        except ValueError:
            verify_certificate_hostname(cert, hostname)
        else:
            verify_certificate_ip_address(cert, str(ip))
    except (VerificationError, CertificateError):
        names = dns_names(cert)
        return f"the certificate is for {', '.join(names) or common_name(cert.subject)}, not {hostname}"
    return None


def classify(
    chain: list[x509.Certificate], errors: list[VerifyError], hostname: str, now: datetime.datetime | None = None
) -> TLSFindings:
    """The problem with a presented chain, given OpenSSL's verification errors; pure."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not chain:
        return TLSFindings(HANDSHAKE, "the server presented no certificate")
    leaf = chain[0]
    found: dict[str, str] = {}
    mismatch = hostname_problem(leaf, hostname)
    if mismatch:
        found[HOSTNAME_MISMATCH] = mismatch
    for error in errors:
        cert = error.certificate or (chain[error.depth] if error.depth < len(chain) else leaf)
        who = "the server's certificate" if error.depth == 0 else f"{common_name(cert.subject)} (chain depth {error.depth})"
        if error.errno in _TIME:
            if cert.not_valid_after_utc < now:
                found.setdefault(EXPIRED, f"{who} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
            else:
                found.setdefault(EXPIRED, f"{who} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        elif error.errno in _SELF_SIGNED:
            found.setdefault(
                UNTRUSTED,
                f"the chain ends at {common_name(cert.subject)}, a self-signed certificate that is not a trusted root",
            )
        elif error.errno in _ISSUER_MISSING:
            if error.depth == 0 and not is_ca(cert):
                found.setdefault(
                    INCOMPLETE_CHAIN,
                    f"the server sent its certificate without the intermediate that signed it "
                    f"({common_name(cert.issuer)}); {len(chain)} certificate(s) presented",
                )
            else:
                found.setdefault(
                    UNTRUSTED,
                    f"the chain ends at {common_name(cert.subject)}, issued by {common_name(cert.issuer)}, "
                    "which is not a trusted root",
                )
        else:
            found.setdefault(UNTRUSTED, f"{who}: {error.text}")
    problems = [p for p in PRIORITY if p in found]
    findings = TLSFindings(
        problem=problems[0] if problems else None,
        reason=found[problems[0]] if problems else "the chain verifies and names the host",
        problems=[found[p] for p in problems],
        chain=[describe(c) for c in chain],
        names=dns_names(leaf),
        not_after=leaf.not_valid_after_utc.isoformat(),
    )
    return findings


@implementer(IOpenSSLClientConnectionCreator)
class InspectingTLS:
    """A TLS client that completes every handshake and records what verification found.

    It never refuses a certificate: besides inspecting, the probe uses it only for a server it
    was told to accept anyway (``--local``), never where trust matters.
    """

    def __init__(self, hostname: str, cafile: str | None = None):
        self.hostname = hostname
        self.errors: list[VerifyError] = []
        self.connection: SSL.Connection | None = None
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.set_verify(SSL.VERIFY_PEER, self._verify)
        if cafile:
            self._context.load_verify_locations(cafile)
        else:
            self._context.set_default_verify_paths()

    def _verify(self, connection, certificate, errno, depth, ok) -> bool:
        if not ok:
            self.errors.append(VerifyError(depth, errno, certificate.to_cryptography()))
        return True

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        try:
            ipaddress.ip_address(self.hostname)
        except ValueError:
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_connect_state()
        self.connection = connection
        return connection

    def findings(self) -> TLSFindings:
        """After the handshake: classify what the server presented."""
        chain = (self.connection.get_peer_cert_chain(as_cryptography=True) if self.connection else None) or []
        findings = classify(list(chain), self.errors, self.hostname)
        if self.connection is not None:
            findings.protocol = self.connection.get_protocol_version_name()
        return findings
