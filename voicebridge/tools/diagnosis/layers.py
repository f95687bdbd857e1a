"""The code of a failing step, from the facts it recorded."""

from __future__ import annotations

from voicebridge.tools.diagnosis.handshake import handshake_verdict
from voicebridge.tools.diagnosis.steps import Step
from voicebridge.twilio.urls import URLProblem

# What a proxy answers when the app behind it does not (voicebridge's own 503s say why in a header).
UPSTREAM_STATUSES = (502, 503, 504)


def url_code(problems) -> str | None:
    kinds = [p.kind for p in problems if p.fatal]
    for kind, code in (("query", "stream-url-query-string"), ("scheme", "stream-url-not-wss"), ("host", "url-not-public")):
        if kind in kinds:
            return code
    return "stream-url-port" if "port" in kinds else None


def code_for(step: Step) -> str:
    """The code of a failing step, from its facts."""
    layer, data = step.layer, step.data
    if layer == "resolve":
        return "dns-failure"
    if layer == "connect":
        return {"refused": "connection-refused", "timeout": "connect-timeout"}.get(data.get("error"), "connection-failed")
    if layer == "tls":
        problem = data.get("problem") or "handshake-failed"
        return "no-tls" if problem == "no-tls" else f"tls-{problem}"
    if layer in ("url", "stream-url"):
        return url_code([URLProblem(**p) for p in data.get("problems", [])]) or "url-not-public"
    if layer == "webhook":
        status = data.get("status")
        if status in (404, 410):
            return "webhook-not-found"
        if status in UPSTREAM_STATUSES and not data.get("diagnosis_header"):
            return "upstream-unreachable"
        if status == 403 or (status == 401 and not data.get("www_authenticate")):
            return "webhook-error" if data.get("diagnosis_header") == "development-mode" else "signature-rejected"
        return "webhook-error"
    if layer == "twiml":
        return data.get("problem") or "not-twiml"
    if layer == "handshake":
        if data.get("connect_error"):
            return {"refused": "connection-refused", "timeout": "connect-timeout"}.get(data["connect_error"], "connection-failed")
        upgrade = (data.get("answers") or {}).get("upgrade") or {}
        if upgrade.get("status") in UPSTREAM_STATUSES and not (upgrade.get("headers") or {}).get("x-voicebridge-diagnosis"):
            return "upstream-unreachable"
        return handshake_verdict(data).code
    if layer == "media":
        return "stream-closed-early" if data.get("closed_early") else "no-media-back"
    raise ValueError(f"no diagnosis for a failing {layer} step")
