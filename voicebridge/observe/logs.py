"""Conventions for what voicebridge writes to its log.

Every call-scoped event carries ``callSid`` (or, before Twilio's ``start``, ``conn``), so one grep
follows a call through webhook, upgrade, handshake, start, media and stop. Phone numbers are
personal data: they are masked unless the operator asks to see them.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_DIGITS = re.compile(r"\d")


def mask_number(number: str | None, show: bool = False) -> str:
    """``+15551234567`` -> ``+1555*****67``; anything shorter keeps only its last two characters."""
    if not number:
        return ""
    if show:
        return number
    digits = [i for i, c in enumerate(number) if c.isdigit()]
    if len(digits) <= 6:
        return "*" * max(len(number) - 2, 0) + number[-2:]
    keep = set(digits[:4]) | set(digits[-2:])
    return "".join(c if (i in keep or not c.isdigit()) else "*" for i, c in enumerate(number))


# Context parameters that carry phone numbers; masked in logs like the webhook's From/To.
NUMBER_PARAMETERS = frozenset({"to", "from", "To", "From", "Caller", "Called"})


def mask_parameters(parameters: dict, show: bool = False) -> dict:
    if show:
        return dict(parameters)
    return {k: (mask_number(v) if k in NUMBER_PARAMETERS else v) for k, v in parameters.items()}


def redact_url(url: str) -> str:
    """A URL fit for a log or a listing: no credentials, and no query string, which may carry a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))


def mask_url(url: str, show: bool = False) -> str:
    """A URL for the log: the values of number parameters in its query string masked (GET webhooks carry From/To)."""
    if show or "?" not in url:
        return url
    base, query = url.split("?", 1)
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k in NUMBER_PARAMETERS for k, _ in pairs):
        return url
    return base + "?" + urlencode([(k, mask_number(v) if k in NUMBER_PARAMETERS else v) for k, v in pairs], safe="+*:")


def printable(value, limit: int = 120) -> str:
    """A client-supplied header or field, safe to put in one log line."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."
