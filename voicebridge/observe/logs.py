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


# Fields that carry a phone number, by name (compared without case): Twilio's From, To, Caller,
# Called, ForwardedFrom and CalledVia (voice webhooks, <Connect action>, status callbacks), and the
# stream context's to/from. Their values are masked whole.
NUMBER_FIELDS = frozenset({"to", "from", "caller", "called", "forwardedfrom", "calledvia", "callerid", "dialcallto"})
NUMBER_PARAMETERS = NUMBER_FIELDS  # the old name

# Whatever the field's name, a run of 7 or more digits (with + and the usual separators) looks like a
# number: a SIP URI's user part, a field Twilio adds, an operator's own query parameter. Masked too.
_NUMBER_RUN = re.compile(r"(?<![A-Za-z0-9])\+?\d(?:[\d ().-]*\d){6,}(?![A-Za-z0-9])")  # not inside a SID

# What a log line shows of a parameter set a peer chose: bounded however many it sent.
LOG_PARAMETERS = 32
LOG_PARAMETER_TEXT = 120


def is_number_field(name) -> bool:
    return isinstance(name, str) and name.lower() in NUMBER_FIELDS


def mask_text(value: str, show: bool = False) -> str:
    """``value`` with every number-like run of digits masked as ``mask_number`` does."""
    if show or not value:
        return value
    return _NUMBER_RUN.sub(lambda m: mask_number(m.group(0)), value)


def mask_field(name, value, show: bool = False):
    """One field for a log: a number field masked whole, any other string's number-like runs masked."""
    if show or not isinstance(value, str):
        return value
    return mask_number(value) if is_number_field(name) else mask_text(value)


def mask_parameters(parameters: dict, show: bool = False) -> dict:
    if show:
        return dict(parameters)
    return {k: mask_field(k, v) for k, v in parameters.items()}


def loggable_parameters(parameters: dict, show: bool = False) -> dict:
    """``parameters`` fit for one log line: numbers masked, names and values escaped and cut to
    LOG_PARAMETER_TEXT characters, at most LOG_PARAMETERS of them (then ``"...": "N more"``).

    A stream URL's query string can carry hundreds of parameters; the line stays a few kilobytes.
    """
    shown = {}
    for i, (name, value) in enumerate(parameters.items()):
        if i == LOG_PARAMETERS:
            shown["..."] = f"{len(parameters) - LOG_PARAMETERS} more"
            break
        shown[printable(name, 64)] = printable(mask_field(name, value, show), LOG_PARAMETER_TEXT)
    return shown


def redact_url(url: str) -> str:
    """A URL fit for a log or a listing: no credentials, and no query string, which may carry a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))


def mask_url(url: str, show: bool = False) -> str:
    """A URL for the log: number fields in its query string masked (GET webhooks carry From, To,
    ForwardedFrom, ...), and any number-like run of digits in any other query value."""
    if show or "?" not in url:
        return url
    base, query = url.split("?", 1)
    pairs = parse_qsl(query, keep_blank_values=True)
    masked = [(k, mask_field(k, v)) for k, v in pairs]
    if masked == pairs:
        return url
    return base + "?" + urlencode(masked, safe="+*:")


def printable(value, limit: int = 120) -> str:
    """A client-supplied header or field, safe to put in one log line."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."
