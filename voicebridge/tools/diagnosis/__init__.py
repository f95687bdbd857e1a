"""From what the probe saw to what is wrong: one stable code, a message, the fix, the Twilio error.

Pure: the probe (``voicebridge/tools/probe/``) does the I/O and records one ``Step`` per layer
with the facts it observed; ``diagnose(steps)`` names the layer that fails. One job a module:
``steps`` (the checklist line), ``codes`` (names, help, Twilio errors), ``twimlread`` (the
webhook's answer), ``handshake`` (a refused upgrade), ``layers`` (a failing step's code),
``texts`` (messages and fixes); the url rules are ``voicebridge.twilio.urls``, the webhook's too.
Every rule is tested without a network.

Codes are stable: scripts match on them. The README lists them with their help text.
"""

from __future__ import annotations

from voicebridge.tools.diagnosis.codes import CODES, Code, Diagnosis, twilio_error
from voicebridge.tools.diagnosis.handshake import HandshakeVerdict, HTTPAnswer, classify_handshake, handshake_verdict, same_page
from voicebridge.tools.diagnosis.layers import code_for, url_code
from voicebridge.tools.diagnosis.steps import FAIL, OK, SKIP, STREAM, WARN, WEBHOOK, Step, find_step, role_of
from voicebridge.tools.diagnosis.texts import EDGE_HEADERS, NGINX_UPGRADE, TEXTS, platform_of
from voicebridge.tools.diagnosis.twimlread import TWIML_TYPES, TwiML, read_twiml
from voicebridge.twilio.urls import URLProblem, check_url, not_public

__all__ = [
    "CODES",
    "EDGE_HEADERS",
    "FAIL",
    "NGINX_UPGRADE",
    "OK",
    "SKIP",
    "STREAM",
    "TEXTS",
    "TWIML_TYPES",
    "WARN",
    "WEBHOOK",
    "Code",
    "Diagnosis",
    "HTTPAnswer",
    "HandshakeVerdict",
    "Step",
    "TwiML",
    "URLProblem",
    "check_url",
    "classify_handshake",
    "code_for",
    "diagnose",
    "find_step",
    "handshake_verdict",
    "not_public",
    "platform_of",
    "read_twiml",
    "role_of",
    "same_page",
    "twilio_error",
    "url_code",
]


def diagnose(steps: list[Step], local: bool = False) -> Diagnosis:
    """The one diagnosis for a run: a stream url query string first (Twilio refuses it before
    anything else happens), else the first layer that fails, else ok."""
    stream_url = find_step(steps, "stream-url")
    if stream_url is not None and any(p["kind"] == "query" for p in stream_url.data.get("problems", [])):
        return explain("stream-url-query-string", stream_url, steps, local)
    for step in steps:
        if step.status == FAIL:
            return explain(code_for(step), step, steps, local)
    return explain("ok", None, steps, local)


def explain(code: str, step: Step | None, steps: list[Step], local: bool) -> Diagnosis:
    role = role_of(step) if step is not None else WEBHOOK
    message, fix = TEXTS[code](step, steps, local)
    return Diagnosis(code, message, fix, twilio_error(code, role), step.name if step else None)
