"""Twilio request signatures: which URL was signed, and whether the signature matches.

Pure: callers pass the URL and parameters they reconstructed; this module only computes and
compares, with Twilio's own RequestValidator (port variants, constant-time compare).
"""

from __future__ import annotations

from twilio.request_validator import HMAC_SHA1, HMAC_SHA256, RequestValidator, get_signature_algorithm

ALGORITHMS = (HMAC_SHA1, HMAC_SHA256)


class _MultiParams:
    """Repeated form fields, in the shape RequestValidator understands (``getall``)."""

    def __init__(self, pairs):
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name, []).append(value)

    def __iter__(self):
        return iter(self._values)

    def __bool__(self):
        return bool(self._values)

    def __getitem__(self, name):
        return self._values[name][0]

    def getall(self, name):
        return self._values[name]


class SignatureChecker:
    """Checks X-Twilio-Signature against the auth token, never revealing the token."""

    def __init__(self, auth_token: str):
        if not auth_token:
            raise ValueError("an empty auth token cannot check signatures")
        self._validator = RequestValidator(auth_token)

    def __repr__(self):
        return "<SignatureChecker token=***>"

    def sign(self, url: str, params=None) -> str:
        """The signature Twilio would send (the probe, the load tester and tests play Twilio)."""
        return self._validator.compute_signature(url, _MultiParams(params or ()))

    def valid_webhook(
        self, url: str, form_pairs: list[tuple[str, str]], signature: str | None, settings_header: str | None = None
    ) -> bool:
        """Webhook: the full public URL with its query string, plus every POST parameter."""
        if not signature:
            return False
        algorithm = get_signature_algorithm(settings_header)
        if algorithm.upper() not in ALGORITHMS:
            return False  # asked of RequestValidator, it would also write a warning to stderr per request
        return self._validate(url, _MultiParams(form_pairs), signature, algorithm)

    def valid_stream(self, candidates: list[str], signature: str | None) -> str | None:
        """Stream handshake: Twilio signs the wss:// URL as written in the TwiML, with no params.

        Returns the candidate URL that matched, or None.
        """
        if not signature:
            return None
        for url in candidates:
            if self._validate(url, {}, signature) or self._validate(_with_tls_port(url), {}, signature):
                return url
        return None

    def _validate(self, url: str, params, signature: str, algorithm=None) -> bool:
        """Never raises: a URL urllib cannot parse (a port out of range, a broken IPv6 host) matches nothing."""
        try:
            return self._validator.validate(url, params, signature, algorithm)
        except ValueError:
            return False


def _with_tls_port(url: str) -> str:
    """``wss://host/x`` -> ``wss://host:443/x``. RequestValidator tries the port variants with :443 only for
    https (for wss it adds :80), so the TLS port is tried here, as for an https webhook."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if scheme != "wss" or ":" in host.rsplit("]", 1)[-1]:
        return url
    return f"{scheme}{sep}{host}:443{slash}{path}"


def stream_candidates(stream_url: str, query: str = "") -> list[str]:
    """The URLs a stream handshake signature may cover, as Twilio documents them."""
    base = stream_url.rstrip("/")
    candidates = [base, base + "/"]
    if query:
        # A stream url written with a query string in someone else's TwiML (Twilio refuses those,
        # but other clients may sign them that way).
        candidates += [f"{base}?{query}", f"{base}/?{query}"]
    return candidates
