"""What one observation of the probe means for its checklist line: status, summary, warnings. Pure.

The probe (``session.py``) does the I/O and hands each observation here; ``diagnosis`` then
names the run's failing layer from the steps. Every rule is tested without a process.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from voicebridge.tools.diagnosis import FAIL, OK, SKIP, STREAM, WARN, TwiML
from voicebridge.twilio.urls import check_url, not_public

FRAME_MS = 20


@dataclass
class Verdict:
    """A checklist line's outcome: ``status`` (ok, warn, fail, skip), ``summary``, ``warnings``, and facts to record."""

    status: str
    summary: str
    warnings: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def judge_url(url: str, role: str, local: bool) -> Verdict:
    """The webhook url or the ``<Stream>`` url against what Twilio refuses (``local`` relaxes wss, port and host)."""
    problems = check_url(url, role, local)
    fatal = [p.text for p in problems if p.fatal]
    warnings = [p.text for p in problems if not p.fatal]
    data = {"problems": [asdict(p) for p in problems]}
    if fatal:
        return Verdict(FAIL, "; ".join(fatal), warnings, data)
    parts = urlsplit(url)
    if role == STREAM:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        summary = f"{parts.scheme}://, no query string, port {port}, host {parts.hostname}"
    else:
        summary = f"{parts.scheme}:// {parts.hostname}" + (f" port {parts.port}" if parts.port else "")
    return Verdict(WARN if warnings else OK, summary, warnings, data)


def resolve_warnings(host: str, addresses: list[str], routed: bool, local: bool) -> list[str]:
    if routed or local or not all(not_public(a) for a in addresses):
        return []
    return [f"{host} resolves only to private addresses here; Twilio needs public ones (fine if your public DNS differs)"]


def tls_failure_status(problem: str, local: bool) -> str:
    """``--local`` accepts what only Twilio would refuse; a port without TLS fails for everyone."""
    return WARN if local and problem != "no-tls" else FAIL


def tls_warnings(cafile: str | None, verified_by_cafile: bool) -> list[str]:
    """A chain that verifies only because of ``--cafile``: Twilio trusts public roots only (the exit status stays)."""
    if cafile and verified_by_cafile:
        return [
            f"the chain verifies only against --cafile {cafile}: Twilio trusts public CAs only (the Mozilla and "
            "Java stores), so a real call fails with 11237 / 31910 unless the certificate is from a public CA"
        ]
    return []


def webhook_summary(method: str, signed: bool, status: int, content_type: str | None) -> str:
    return f"{method} {'signed' if signed else 'UNSIGNED'} -> {status} {content_type or '(no Content-Type)'}"


def judge_twiml(twiml: TwiML, expect: str) -> tuple[Verdict, str]:
    """The TwiML's line, and what to expect of the stream (a one-way ``<Start>`` stream sends nothing back)."""
    if twiml.problem:
        return Verdict(FAIL, twiml.reason, list(twiml.notes)), expect
    names = ", ".join(twiml.parameters) or "none"
    verdict = Verdict(WARN if twiml.verb == "Start" else OK, f"{twiml.reason} with <Parameter>s: {names}", list(twiml.notes))
    return verdict, ("none" if twiml.verb == "Start" else expect)


def judge_media(data: dict, foreign: list, marks: list) -> Verdict:
    """``data``: the media step's facts (sent, received, echoed, expect, closed_early, close_code, open_seconds)."""
    sent, received, echoed, expect = data["sent"], data["received"], data["echoed"], data["expect"]
    summary = f"sent {sent} frame(s) ({sent * FRAME_MS / 1000:.1f} s); {received} media frame(s) came back"
    if expect == "echo" or echoed:
        summary += f", {echoed} echoed unchanged"
    if marks:
        summary += f", {len(marks)} marks"
    warnings = []
    if foreign:
        warnings.append(f"messages Twilio would not understand (31951): {sorted(set(foreign))}")
    failed = (
        data["closed_early"]
        or (expect == "media" and not received)
        or (expect == "echo" and (received != sent or echoed != sent))
    )
    if data["closed_early"]:
        summary = f"the app closed the stream after {data['open_seconds']:.1f} s (code {data['close_code']}); " + summary
    return Verdict(FAIL if failed else (WARN if warnings else OK), summary, warnings)


def judge_stop(stop_sent: bool, closed_by_app: bool, close_code) -> Verdict:
    if not stop_sent:
        return Verdict(SKIP, "not sent: the stream was already closed")
    if closed_by_app:
        return Verdict(OK, f"stop sent; the app closed the stream with {close_code}")
    return Verdict(OK, f"stop sent; the app did not close within 0.5 s, so Twilio's side closed ({close_code})")


def plain_http_answer(head: bytes) -> str | None:
    """The status line if ``head`` (what a port answered to a plain-HTTP request) is an HTTP server's own
    answer, not a TLS server telling plain HTTP off (nginx's 400 "plain HTTP request was sent to HTTPS port")."""
    if not head.startswith(b"HTTP/"):
        return None
    text = head.decode("latin-1", "replace")
    status_line = text.split("\r\n", 1)[0].strip()
    lowered = text.lower()
    # nginx: "The plain HTTP request was sent to HTTPS port" (400, or its 497); Go: "Client sent an HTTP request
    # to an HTTPS server."
    if "https port" in lowered or "https server" in lowered or status_line.split(" ")[1:2] == ["497"]:
        return None
    return status_line


def conclusive_while_waiting(status_line: str) -> bool:
    """A plain answer that settles no-tls before the TLS handshake has: not a 400, which a slow TLS server
    might also give plain HTTP in words the probe does not know."""
    return status_line.split(" ")[1:2] != ["400"]


_CHECKED = re.compile(rb"does not match url (\S+) with")
_UPSTREAM = re.compile(rb"proxy_pass (https?://[\w.:\[\]-]+);\s+# this daemon")


def checked_url(body: bytes) -> str | None:
    """The URL voicebridge checked a webhook signature against, from its 403 answer."""
    match = _CHECKED.search(body)
    return match.group(1).decode("latin-1") if match else None


def upstream_of(body: bytes) -> str | None:
    """The daemon's own address as the proxy reached it, from voicebridge's 426 answer: the nginx snippet names it."""
    match = _UPSTREAM.search(body)
    return match.group(1).decode("latin-1") if match else None
