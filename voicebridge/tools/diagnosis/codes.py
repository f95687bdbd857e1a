"""The diagnosis codes: stable names (scripts match on them), help text, and the Twilio error a real call shows."""

from __future__ import annotations

from dataclasses import dataclass

from voicebridge.twilio.urls import WEBHOOK


@dataclass(frozen=True)
class Code:
    name: str
    twilio_webhook: str
    twilio_stream: str
    help: str


def _code(name, webhook, stream, help_text):
    return Code(name, webhook, stream, help_text)


CODES: dict[str, Code] = {
    c.name: c
    for c in (
        _code("ok", "none", "none", "Every layer a real call needs works."),
        _code(
            "dns-failure",
            "11210 HTTP bad host name",
            "31904 (host unreachable)",
            "The host name does not resolve; Twilio cannot find the server.",
        ),
        _code(
            "connection-refused",
            "11205 HTTP connection failure",
            "31902 connection refused",
            "The address answers, but nothing listens on the port (or a firewall rejects the connection).",
        ),
        _code(
            "connect-timeout",
            "11205 HTTP connection failure",
            "31901 connection timeout",
            "No answer to the TCP connection: a firewall drops it, or the host is down.",
        ),
        _code(
            "connection-failed",
            "11205 HTTP connection failure",
            "31904 host unreachable / 31903 broken pipe",
            "The TCP connection failed otherwise (no route to the host, reset).",
        ),
        _code(
            "tls-untrusted",
            "11237 certificate invalid: could not find path to certificate",
            "31910 TLS error",
            "The certificate chain ends at a root Twilio does not trust (self-signed or private CA).",
        ),
        _code(
            "tls-incomplete-chain",
            "11237 certificate invalid: could not find path to certificate",
            "31910 TLS error",
            "The server sends its certificate without the intermediate that signed it.",
        ),
        _code(
            "tls-hostname-mismatch",
            "11235 certificate invalid: domain mismatch",
            "31910 TLS error",
            "The certificate does not name the host in the URL.",
        ),
        _code(
            "tls-expired",
            "11236 certificate invalid: certificate expired",
            "31910 TLS error",
            "A certificate in the chain has expired (or is not valid yet).",
        ),
        _code(
            "tls-handshake-failed",
            "11220 SSL/TLS handshake error",
            "31910 TLS error",
            "No TLS handshake at all: no shared protocol or cipher, an alert, a closed connection.",
        ),
        _code(
            "no-tls",
            "11220 SSL/TLS handshake error",
            "31910 TLS error",
            "An https:// or wss:// URL points at a port that answers plain HTTP: no TLS there.",
        ),
        _code(
            "upstream-unreachable",
            "11200 HTTP retrieval failure (502/503/504 from the proxy)",
            "31920 WebSocket handshake error",
            "A proxy or platform edge answers 502/503/504: the app behind it is down, or listens elsewhere.",
        ),
        _code(
            "url-not-public",
            "11200 HTTP retrieval failure",
            "31901 connection timeout",
            "The URL's host is loopback, private or a local name: Twilio, on the internet, cannot reach it.",
        ),
        _code(
            "webhook-not-found",
            "11200 HTTP retrieval failure",
            "-",
            "The voice webhook URL answers 404: nothing serves that path.",
        ),
        _code(
            "webhook-error",
            "11200 HTTP retrieval failure (11205 on a timeout)",
            "-",
            "The voice webhook answers an error status, a redirect loop, or nothing within 15 s.",
        ),
        _code(
            "signature-rejected",
            "11200 HTTP retrieval failure",
            "-",
            "The webhook refuses the signed request (401/403): a different auth token, or the app "
            "checks the signature against another URL.",
        ),
        _code(
            "not-twiml",
            "12100 document parse failure / 12300 invalid Content-Type",
            "-",
            "The webhook answers 2xx, but not a TwiML document Twilio can read.",
        ),
        _code(
            "no-stream-in-twiml",
            "none: the call runs the TwiML and never streams",
            "-",
            "The TwiML has no <Connect><Stream url=...>, so no media stream is opened.",
        ),
        _code(
            "stream-url-not-wss",
            "-",
            "31922 stream url scheme is not wss",
            "The <Stream> url is not wss://; Twilio connects to nothing else.",
        ),
        _code(
            "stream-url-query-string",
            "-",
            "31920 WebSocket handshake error",
            "The <Stream> url has a query string, which Twilio refuses; use <Parameter>s.",
        ),
        _code(
            "stream-url-port",
            "-",
            "31910 TLS error / 31901 connection timeout",
            "The <Stream> url names a port other than 443; Twilio connects to Media Streams on 443 only.",
        ),
        _code(
            "stream-path-not-found",
            "-",
            "31920 WebSocket handshake error",
            "Nothing accepts WebSockets at the <Stream> url's path (the app or the proxy answers it like a missing page).",
        ),
        _code(
            "upgrade-stripped",
            "-",
            "31920 WebSocket handshake error",
            "A proxy in front of the app drops the Upgrade/Connection headers, so the WebSocket never opens.",
        ),
        _code(
            "handshake-rejected",
            "-",
            "31920 WebSocket handshake error",
            "The app received the WebSocket upgrade and refused it (most often a signature check against the wrong URL).",
        ),
        _code(
            "stream-closed-early",
            "-",
            "31921 WebSocket close error",
            "The app accepted the stream, then closed it before Twilio's stop.",
        ),
        _code(
            "no-media-back",
            "-",
            "none: the caller hears silence",
            "The stream works, but the app sends no audio back (or, with --expect echo, not the caller's own).",
        ),
    )
}


@dataclass(frozen=True)
class Diagnosis:
    code: str
    message: str
    fix: str
    twilio_error: str
    step: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"


def twilio_error(code: str, role: str = WEBHOOK) -> str:
    spec = CODES[code]
    primary, other = (spec.twilio_webhook, spec.twilio_stream) if role == WEBHOOK else (spec.twilio_stream, spec.twilio_webhook)
    return primary if primary != "-" else other
