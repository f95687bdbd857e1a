"""From what the probe saw to what is wrong: one stable code, a message, the fix, the Twilio error.

Pure: the probe (``voicebridge/tools/probe.py``) does the I/O and records one ``Step`` per layer with
the facts it observed; ``diagnose(steps)`` names the layer that fails. The helpers that judge a
single observation (``read_twiml``, ``check_url``, ``classify_handshake``) live here too, so
every rule is tested without a network.

Codes are stable: scripts match on them. The README lists them with their help text.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

# Roles of a connection: which Twilio error a failure shows depends on what Twilio was doing.
WEBHOOK, STREAM = "webhook", "stream"


@dataclass
class Step:
    """One line of the checklist: a layer, whether it works, and the facts ``diagnose`` reads.

    ``layer`` is what was checked (resolve, connect, tls, url, webhook, twiml, stream-url,
    handshake, media, stop); ``name`` is unique in a run (``stream-tls`` is the tls layer of
    the stream's host).
    """

    name: str
    layer: str
    status: str = SKIP
    summary: str = "not reached"
    data: dict = field(default_factory=dict)
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        out = {"name": self.name, "layer": self.layer, "status": self.status, "summary": self.summary}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 4)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        out["data"] = self.data
        return out


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
            "No TLS handshake at all: plain HTTP on a TLS port, no shared protocol or cipher, an alert.",
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


# Judging single observations.


@dataclass
class TwiML:
    """What the webhook's answer tells Twilio to do, as far as streaming goes."""

    problem: str | None  # None, "not-twiml" or "no-stream-in-twiml"
    reason: str
    verb: str | None = None  # "Connect" (bidirectional) or "Start" (listen only)
    stream_url: str | None = None
    parameters: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "problem": self.problem,
            "reason": self.reason,
            "verb": self.verb,
            "stream_url": self.stream_url,
            "parameters": self.parameters,
            "notes": self.notes,
        }


TWIML_TYPES = ("text/xml", "application/xml", "text/html")


def read_twiml(content_type: str | None, body: bytes) -> TwiML:
    """Read the webhook's answer the way Twilio does: by its Content-Type, then as TwiML."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type.startswith("audio/"):
        return TwiML("no-stream-in-twiml", f"the answer is audio ({media_type}): Twilio plays it and hangs up")
    if media_type == "text/plain":
        return TwiML("no-stream-in-twiml", "the answer is text/plain: Twilio reads it aloud and hangs up")
    if media_type not in TWIML_TYPES:
        shown = media_type or "missing"
        return TwiML("not-twiml", f"Content-Type is {shown}; Twilio reads TwiML only from text/xml or application/xml (12300)")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        return TwiML("not-twiml", f"the body is not well-formed XML ({e}); Twilio cannot parse it (12100)")
    if root.tag != "Response":
        return TwiML("not-twiml", f"the root element is <{root.tag}>, not <Response> (12100)")
    unidirectional = None
    notes = []
    for verb in root:
        if verb.tag == "Connect":
            stream = verb.find("Stream")
            if stream is None:
                inner = ", ".join(f"<{c.tag}>" for c in verb) or "nothing"
                return TwiML("no-stream-in-twiml", f"<Connect> holds {inner}, not <Stream>", notes=notes)
            return _stream(stream, "Connect", notes)
        if verb.tag == "Start" and verb.find("Stream") is not None and unidirectional is None:
            unidirectional = verb.find("Stream")
        elif verb.tag in ("Reject", "Hangup") and unidirectional is None:
            return TwiML("no-stream-in-twiml", f"the TwiML ends the call with <{verb.tag}/> before any stream", notes=notes)
        elif verb.tag == "Redirect" and unidirectional is None:
            target = (verb.text or "").strip()
            return TwiML(
                "no-stream-in-twiml", f"the TwiML redirects to {target!r} before any stream; probe that URL", notes=notes
            )
        elif verb.tag not in ("Start",):
            notes.append(f"<{verb.tag}> runs before the stream")
    if unidirectional is not None:
        found = _stream(unidirectional, "Start", notes)
        found.notes.append("<Start><Stream> is one-way: the app can listen but cannot send audio back")
        return found
    verbs = ", ".join(f"<{v.tag}>" for v in root) or "nothing"
    return TwiML("no-stream-in-twiml", f"the TwiML holds {verbs}: no <Connect><Stream>", notes=notes)


def _stream(stream, verb: str, notes: list[str]) -> TwiML:
    url = (stream.get("url") or "").strip()
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    if not url:
        return TwiML("no-stream-in-twiml", f"<{verb}><Stream> has no url attribute", verb=verb, notes=notes)
    return TwiML(None, f'<{verb}><Stream url="{url}">', verb, url, parameters, notes)


@dataclass(frozen=True)
class URLProblem:
    kind: str  # query, scheme, host, port
    fatal: bool
    text: str


_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".localdomain")


def not_public(host: str) -> str | None:
    """Why Twilio, on the internet, could not reach ``host``; None if it may."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            return f"{host} is this machine (loopback)"
        if "." not in host:
            return f"{host} is a single-label name (a container or LAN name) that only your network resolves"
        if host.endswith(_LOCAL_SUFFIXES):
            return f"{host} is a local-network name"
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{host} is this machine (loopback)"
    if ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_reserved or ip.is_multicast:
        return f"{host} is a private address"
    return None


def check_url(url: str, role: str, local: bool = False) -> list[URLProblem]:
    """What Twilio would refuse in the webhook url or the <Stream> url; ``local`` relaxes wss, port and host."""
    parts = urlsplit(url)
    problems = []
    if role == STREAM:
        if parts.query or url.endswith("?"):
            problems.append(
                URLProblem("query", True, f"query string ?{parts.query}: Twilio refuses stream urls with one (31920)")
            )
        if not parts.scheme or not parts.hostname:
            problems.append(URLProblem("scheme", True, f"{url!r} is not an absolute wss:// url"))
            return problems
        if parts.scheme == "ws":
            problems.append(URLProblem("scheme", not local, "ws:// is not encrypted; Twilio connects only to wss:// (31922)"))
        elif parts.scheme != "wss":
            problems.append(
                URLProblem("scheme", True, f"{parts.scheme}:// is not wss://; Twilio connects only to wss:// (31922)")
            )
        try:
            port = parts.port
        except ValueError:
            problems.append(URLProblem("port", True, f"the port in {url!r} is not a number"))
            port = None
        if parts.scheme == "wss" and port not in (None, 443):
            problems.append(URLProblem("port", not local, f"port {port}: Twilio connects to Media Streams on 443 only"))
    elif parts.scheme == "http" and not local:
        problems.append(
            URLProblem(
                "scheme", False, "http:// webhook: Twilio accepts it, but the call's data and signature travel unencrypted"
            )
        )
    reason = not_public(parts.hostname or "")
    if reason:
        problems.append(URLProblem("host", not local, f"{reason}; Twilio cannot reach it"))
    return problems


def url_code(problems) -> str | None:
    kinds = [p.kind for p in problems if p.fatal]
    for kind, code in (("query", "stream-url-query-string"), ("scheme", "stream-url-not-wss"), ("host", "url-not-public")):
        if kind in kinds:
            return code
    return "stream-url-port" if "port" in kinds else None


# The WebSocket handshake: which layer refused it.


@dataclass(frozen=True)
class HTTPAnswer:
    """An HTTP answer (status None: no answer, with ``error`` saying why)."""

    status: int | None
    headers: dict = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    error: str | None = None
    complete: bool = True  # False when only the part of the body that came with the head is known

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "headers": self.headers,
            "body": self.body[:300].decode("utf-8", "replace"),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> HTTPAnswer | None:
        if data is None:
            return None
        return cls(data.get("status"), data.get("headers") or {}, (data.get("body") or "").encode(), data.get("error"))


def _normalised(answer: HTTPAnswer, paths: tuple[str, ...]) -> str:
    """The body with the path, numbers and ids blanked, so two error pages compare as pages."""
    text = answer.body.decode("utf-8", "replace")
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, "{path}")
    return re.sub(r"[0-9a-fA-F]{8,}|\d+", "#", " ".join(text.split()))


def _same_status(a: HTTPAnswer | None, b: HTTPAnswer | None) -> bool | None:
    if a is None or b is None or a.status is None or b.status is None:
        return None
    return a.status == b.status


def _same_page(a: HTTPAnswer | None, b: HTTPAnswer | None, paths) -> bool | None:
    same = _same_status(a, b)
    if not same:
        return same
    return _normalised(a, paths) == _normalised(b, paths)


UPGRADE_HEADER_DIAGNOSES = {"upgrade-missing", "connection-upgrade-missing"}


@dataclass(frozen=True)
class HandshakeVerdict:
    code: str
    reason: str
    certain: bool = True


def classify_handshake(
    upgrade: HTTPAnswer,
    plain: HTTPAnswer | None = None,
    sibling_upgrade: HTTPAnswer | None = None,
    sibling_plain: HTTPAnswer | None = None,
    path: str = "/",
    sibling: str = "/",
) -> HandshakeVerdict:
    """Why a signed WebSocket upgrade to ``path`` did not get 101.

    ``plain`` is a GET of the same path without upgrade headers; ``sibling_*`` the same two
    requests for a path that surely does not exist. The reasoning (see the README):

    1. voicebridge names a missing upgrade itself (``X-Voicebridge-Diagnosis``): certain.
    2. The path answers a plain GET like the missing path does, and the upgrade like the missing
       path does (or like its own plain GET): nothing serves the path -> stream-path-not-found.
       Certain only when upgrades visibly reach the app elsewhere (the missing path answers an
       upgrade differently from a plain GET); otherwise a proxy that strips upgrades in front of
       an app that 404s plain GETs on its WebSocket route looks the same.
    3. The path answers plain GETs unlike the missing path (so a route exists there), but the
       upgrade gets exactly what a plain GET gets: the Upgrade header never reached the route
       -> upgrade-stripped. A 426 "Upgrade Required" to a request that carried Upgrade says the
       same.
    4. Otherwise the route saw the upgrade and refused it -> handshake-rejected.
    """
    if upgrade.status is None:
        return HandshakeVerdict("handshake-rejected", f"no HTTP answer to the upgrade: {upgrade.error or 'connection closed'}")
    told = (upgrade.headers.get("x-voicebridge-diagnosis") or "").strip()
    if told in UPGRADE_HEADER_DIAGNOSES:
        what = "Upgrade" if told == "upgrade-missing" else "Connection: upgrade"
        return HandshakeVerdict(
            "upgrade-stripped", f"voicebridge answered {upgrade.status} ({told}): the request reached it without {what}"
        )
    if told == "not-found":
        return HandshakeVerdict("stream-path-not-found", f"voicebridge answered {upgrade.status}: it does not serve {path}")
    if told:
        return HandshakeVerdict("handshake-rejected", f"voicebridge refused the handshake with {upgrade.status} ({told})")
    if upgrade.status == 101:
        return HandshakeVerdict(
            "handshake-rejected", f"the app answered 101, but not a valid WebSocket handshake: {upgrade.error}"
        )
    paths = (path, sibling)
    like_missing_upgrade = _same_status(upgrade, sibling_upgrade)
    like_missing_plain = _same_page(plain, sibling_plain, paths)
    upgrade_ignored = _same_status(upgrade, plain)
    upgrades_matter_elsewhere = _same_status(sibling_upgrade, sibling_plain) is False
    wants_upgrade = upgrade.status == 426 and "sec-websocket-version" not in upgrade.headers
    if like_missing_plain is not False and (like_missing_upgrade or upgrade_ignored) and not wants_upgrade:
        if upgrades_matter_elsewhere:
            return HandshakeVerdict(
                "stream-path-not-found", f"{path} answers {upgrade.status}, exactly like a path that does not exist"
            )
        return HandshakeVerdict(
            "stream-path-not-found",
            f"{path} answers {upgrade.status} with or without upgrade headers, exactly like a path that does not exist",
            certain=False,
        )
    if upgrade_ignored and like_missing_plain is False:
        return HandshakeVerdict(
            "upgrade-stripped",
            f"{path} exists (a plain GET gets {plain.status}, a missing path {sibling_plain.status}), but the "
            f"upgrade request got the same {upgrade.status} as a plain GET: the upgrade headers never reached it",
        )
    if wants_upgrade:
        return HandshakeVerdict(
            "upgrade-stripped", f"{path} answered 426 Upgrade Required to a request that carried Upgrade: websocket"
        )
    if like_missing_upgrade and not upgrade_ignored:
        return HandshakeVerdict(
            "stream-path-not-found",
            f"the WebSocket server refuses {path} with {upgrade.status}, as it refuses a path that does not exist",
        )
    if like_missing_upgrade is None and upgrade.status in (404, 410):
        return HandshakeVerdict("stream-path-not-found", f"{path} answered {upgrade.status}", certain=False)
    return HandshakeVerdict("handshake-rejected", f"the app saw the upgrade to {path} and answered {upgrade.status}")


# The diagnosis.

NGINX_UPGRADE = """\
In the nginx location that proxies {path} (the map goes in http {{ }}):
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    location {path} {{
        proxy_pass http://127.0.0.1:8080;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $host;
        proxy_read_timeout 3600s;
    }}
Other proxies and platforms: turn on WebSocket support for this route and make sure the proxy
speaks HTTP/1.1 to the app; then run the probe again."""


def _step(steps, name) -> Step | None:
    return next((s for s in steps if s.name == name), None)


def _role(step: Step) -> str:
    return step.data.get("role", WEBHOOK)


def twilio_error(code: str, role: str = WEBHOOK) -> str:
    spec = CODES[code]
    primary, other = (spec.twilio_webhook, spec.twilio_stream) if role == WEBHOOK else (spec.twilio_stream, spec.twilio_webhook)
    return primary if primary != "-" else other


def code_for(step: Step) -> str:
    """The code of a failing step, from its facts."""
    layer, data = step.layer, step.data
    if layer == "resolve":
        return "dns-failure"
    if layer == "connect":
        return {"refused": "connection-refused", "timeout": "connect-timeout"}.get(data.get("error"), "connection-failed")
    if layer == "tls":
        problem = data.get("problem") or "handshake-failed"
        return f"tls-{problem}"
    if layer in ("url", "stream-url"):
        return url_code([URLProblem(**p) for p in data.get("problems", [])]) or "url-not-public"
    if layer == "webhook":
        status = data.get("status")
        if status in (404, 410):
            return "webhook-not-found"
        if status == 403 or (status == 401 and not data.get("www_authenticate")):
            return "webhook-error" if data.get("diagnosis_header") == "development-mode" else "signature-rejected"
        return "webhook-error"
    if layer == "twiml":
        return data.get("problem") or "not-twiml"
    if layer == "handshake":
        if data.get("connect_error"):
            return {"refused": "connection-refused", "timeout": "connect-timeout"}.get(data["connect_error"], "connection-failed")
        return handshake_verdict(data).code
    if layer == "media":
        return "stream-closed-early" if data.get("closed_early") else "no-media-back"
    raise ValueError(f"no diagnosis for a failing {layer} step")


def handshake_verdict(data: dict) -> HandshakeVerdict:
    answers = data.get("answers", {})
    return classify_handshake(
        HTTPAnswer.from_dict(answers.get("upgrade")) or HTTPAnswer(None, error="no answer recorded"),
        HTTPAnswer.from_dict(answers.get("plain")),
        HTTPAnswer.from_dict(answers.get("sibling_upgrade")),
        HTTPAnswer.from_dict(answers.get("sibling_plain")),
        data.get("path", "/"),
        data.get("sibling", "/"),
    )


def diagnose(steps: list[Step], local: bool = False) -> Diagnosis:
    """The one diagnosis for a run: a stream url query string first (Twilio refuses it before
    anything else happens), else the first layer that fails, else ok."""
    stream_url = _step(steps, "stream-url")
    if stream_url is not None and any(p["kind"] == "query" for p in stream_url.data.get("problems", [])):
        return _explain("stream-url-query-string", stream_url, steps, local)
    for step in steps:
        if step.status == FAIL:
            return _explain(code_for(step), step, steps, local)
    return _explain("ok", None, steps, local)


def _explain(code: str, step: Step | None, steps: list[Step], local: bool) -> Diagnosis:
    role = _role(step) if step is not None else WEBHOOK
    message, fix = _TEXTS[code](step, steps, local)
    return Diagnosis(code, message, fix, twilio_error(code, role), step.name if step else None)


def _where(step: Step) -> str:
    return "the <Stream> url's host" if _role(step) == STREAM else "the webhook's host"


def _ok(step, steps, local):
    warnings = list(dict.fromkeys(w for s in steps for w in s.warnings))
    media = _step(steps, "media")
    detail = f" ({media.summary})" if media is not None and media.status == OK else ""
    if local:
        return (
            f"Every layer works for a local call{detail}. Twilio itself needs a public https:// webhook and a wss:// "
            "stream url on 443 with a trusted certificate: run the probe without --local against the public URL.",
            "Nothing to fix locally." + (" Warnings: " + "; ".join(warnings) if warnings else ""),
        )
    return (
        f"Every layer a real call needs works{detail}.",
        "Nothing to fix." + (" Warnings: " + "; ".join(warnings) if warnings else ""),
    )


def _dns(step, steps, local):
    host = step.data.get("host", "?")
    return (
        f"{host} ({_where(step)}) does not resolve: {step.data.get('reason', 'no address')}.",
        f"Create the DNS record for {host} (A/AAAA, or the CNAME your platform gives), or fix the typo in the URL. "
        "Check with: dig +short " + host,
    )


def _refused(step, steps, local):
    address = step.data.get("address", "?")
    return (
        f"{address} ({_where(step)}) refused the connection: nothing listens on that port, or a firewall rejects it.",
        "Start the server, or fix the port: the proxy's listen port, the platform's internal port "
        "(voicebridge binds $PORT, else --listen tcp:8080), the port in the URL.",
    )


def _timeout(step, steps, local):
    address = step.data.get("address", "?")
    return (
        f"No answer from {address} ({_where(step)}) within {step.data.get('timeout', '?')} s: packets are dropped "
        "(a firewall or security group) or the host is down.",
        f"Open TCP port {address.rsplit(':', 1)[-1]} to the internet (Twilio connects from its own, changing addresses) "
        "and check the server is up.",
    )


def _failed(step, steps, local):
    return (
        f"The connection to {step.data.get('address', '?')} ({_where(step)}) failed: {step.data.get('reason', 'unknown')}.",
        "Check the route to the host and that the server is up.",
    )


def _tls(kind):
    def explain(step, steps, local):
        data = step.data
        host = data.get("hostname", "?")
        others = [p for p in data.get("problems", [])[1:]]
        also = f" Also: {'; '.join(others)}." if others else ""
        message = f"TLS on {host} ({_where(step)}): {data.get('reason', kind)}.{also}"
        fixes = {
            "untrusted": "Use a certificate from a public CA (Let's Encrypt: certbot certonly -d "
            f"{host}); Twilio trusts the Mozilla and Java CA stores only. To probe a private CA on purpose, pass --cafile.",
            "incomplete-chain": "Serve the full chain. nginx: ssl_certificate /etc/letsencrypt/live/"
            f"{host}/fullchain.pem; (fullchain.pem, not cert.pem). voicebridge: --listen "
            "ssl:443:privateKey=privkey.pem:certKey=cert.pem:extraCertChain=chain.pem. Then reload.",
            "hostname-mismatch": f"Serve a certificate for {host} (certbot certonly -d {host}); if one exists, the "
            "server picked another (nginx: server_name must match, and each server block names its own ssl_certificate).",
            "expired": "Renew the certificate (certbot renew) and reload the server that terminates TLS; check the "
            "renewal timer, and that the server's clock is right.",
            "handshake-failed": "Make sure the port speaks TLS (not plain HTTP) with TLS 1.2 or newer and a certificate; "
            "a https:// URL on a port without TLS shows exactly this.",
        }
        return message, fixes[kind]

    return explain


def _url_not_public(step, steps, local):
    problems = [p["text"] for p in step.data.get("problems", []) if p["fatal"] and p["kind"] == "host"]
    what = "<Stream> url" if step.layer == "stream-url" else "webhook url"
    return (
        f"The {what} {step.data.get('url', '')} cannot work for Twilio: {'; '.join(problems)}.",
        "Use the public name Twilio reaches (voicebridge: --public-url https://PUBLIC_HOST, or --trusted-proxy so the "
        "proxy's X-Forwarded-Host counts). To probe a developer's machine on purpose, pass --local.",
    )


def _not_wss(step, steps, local):
    url = step.data.get("url", "")
    return (
        f"The <Stream> url {url} is not wss://: Twilio opens Media Streams only over TLS (31922).",
        "Serve the stream over TLS (a proxy terminating https, or voicebridge --listen ssl:443:...) and answer "
        "wss://HOST/PATH. voicebridge builds the url from --public-url https://HOST; behind a TLS proxy without it, "
        "add --trusted-proxy so X-Forwarded-Proto: https counts.",
    )


def _query(step, steps, local):
    url = step.data.get("url", "")
    after = [s for s in steps if s.status == FAIL and s.name != step.name]
    later = f" (The probe also found {code_for(after[0])} at {after[0].name}, but Twilio stops here first.)" if after else ""
    return (
        f"The <Stream> url {url} carries a query string. Twilio refuses it (31920) before anything else.{later}",
        'Drop the query string and pass each value as <Parameter name="..." value="..."/> inside <Stream>; '
        "they arrive in the start message's customParameters. voicebridge does this for the webhook's own query.",
    )


def _port(step, steps, local):
    url = step.data.get("url", "")
    return (
        f"The <Stream> url {url} names a port other than 443; Twilio connects to Media Streams on 443 only.",
        "Serve wss on 443 (a proxy in front, or voicebridge --listen ssl:443:...) and drop the port from the url "
        "(voicebridge: --public-url https://HOST without a port).",
    )


def _webhook_not_found(step, steps, local):
    return (
        f"{step.data.get('method', 'POST')} {step.data.get('url', '')} answered {step.data.get('status')}: "
        "nothing serves the voice webhook at that path.",
        "Configure the number's voice webhook with the path the app serves (voicebridge: POST /voice), or route that "
        "path to the app in the proxy.",
    )


def _webhook_error(step, steps, local):
    data = step.data
    url = data.get("url", "")
    if data.get("error") == "redirects":
        return (f"The webhook {url} redirects too often: {data.get('reason')}.", _webhook_fix(data))
    if data.get("error"):
        return (f"The webhook {url} did not answer: {data.get('reason')}.", _webhook_fix(data))
    status = data.get("status")
    said = f" It said: {data['excerpt']!r}." if data.get("excerpt") else ""
    if data.get("diagnosis_header") == "development-mode":
        return (
            f"voicebridge at {url} runs in development mode (no auth token) and serves only loopback clients.",
            "Give the daemon the Twilio auth token (TWILIO_AUTH_TOKEN or --auth-token-file).",
        )
    return (f"{data.get('method', 'POST')} {url} answered {status}.{said}", _webhook_fix(data))


def _webhook_fix(data) -> str:
    status = data.get("status")
    if data.get("error") == "timeout":
        return "Twilio waits 15 s for the webhook: answer faster (do slow work after answering), and check the app is up."
    if data.get("error") == "redirects":
        return "Configure Twilio with the final URL; the redirects loop or go on too long."
    if status == 401 and data.get("credentials"):
        return (
            "The server refused the credentials in the URL (the probe sends them with HTTP Basic; Twilio also "
            "speaks Digest): check the user and password configured in Twilio."
        )
    if status == 401:
        return "The webhook wants HTTP authentication: put the credentials in the URL configured in Twilio (https://user:pass@host/...)."
    if status == 405:
        return "The URL does not take POST: Twilio POSTs the voice webhook unless the number is set to GET."
    if status and 300 <= status < 400:
        return "A redirect without a usable Location: configure Twilio with the final URL."
    if status and status >= 500:
        return "The app failed on the request: its log has the exception (voicebridge: the webhook.* lines)."
    return "Answer 200 with TwiML; Twilio treats any other status as a failed webhook."


def _signature(step, steps, local):
    data = step.data
    url = data.get("url", "")
    if not data.get("signed"):
        return (
            f"{url} refused the probe's unsigned request with {data.get('status')}: the app checks X-Twilio-Signature.",
            "Pass the account's auth token (--auth-token or TWILIO_AUTH_TOKEN) so the probe signs like Twilio.",
        )
    return (
        f"{url} refused the signed request with {data.get('status')}: the signature Twilio would send does not match "
        "what the app computes.",
        "Either the app holds another auth token (the main account's, not a subaccount's or an API key's), or it "
        "checks the signature against another URL: behind a proxy the app sees http:// and its internal host. "
        f"voicebridge: --public-url must be exactly the base of {url}. Other apps: validate against the public URL.",
    )


def _twiml(step, steps, local):
    return (
        f"The webhook answered, but {step.data.get('reason', 'not with TwiML')}.",
        "Answer with Content-Type: text/xml and "
        '<Response><Connect><Stream url="wss://HOST/PATH"><Parameter name="..." value="..."/></Stream></Connect></Response>.',
    )


def _no_stream(step, steps, local):
    return (
        f"The TwiML opens no media stream: {step.data.get('reason', '')}.",
        'Answer <Response><Connect><Stream url="wss://HOST/PATH">...</Stream></Connect></Response> for the calls that '
        "should reach the app (voicebridge answers this unless the tenant is refused).",
    )


def _handshake(code):
    def explain(step, steps, local):
        data = step.data
        verdict = handshake_verdict(data)
        path = data.get("path", "/")
        url = data.get("url", "")
        if code == "upgrade-stripped":
            return (
                f"The WebSocket upgrade to {url} never reached the app: {verdict.reason}. A proxy in front of it "
                "(the edge, the platform's router, nginx) removed the Upgrade and Connection headers, which are "
                "hop-by-hop and dropped unless the proxy is told to pass them.",
                NGINX_UPGRADE.format(path=path),
            )
        if code == "stream-path-not-found":
            caveat = (
                " The probe cannot see whether upgrade headers pass here (every path answers the same with or without "
                "them): if the app does serve WebSockets at this path, a proxy dropping the upgrade looks just like "
                "this; check the app's log for the request."
                if not verdict.certain
                else ""
            )
            return (
                f"Nothing accepts WebSockets at {url}: {verdict.reason}.{caveat}",
                f"Point <Stream url> at the path where the app accepts WebSockets, or serve them at {path} "
                "(voicebridge: /twilio-media under --public-url). Check the proxy forwards the path unchanged "
                "(nginx: a proxy_pass with a URI part rewrites it).",
            )
        told = (HTTPAnswer.from_dict(data.get("answers", {}).get("upgrade")) or HTTPAnswer(None)).headers.get(
            "x-voicebridge-diagnosis"
        )
        status = (data.get("answers", {}).get("upgrade") or {}).get("status")
        fix = "Read the app's log for the refused handshake; the status says who refused it."
        if status in (401, 403) or told in ("signature-invalid", "signature-missing"):
            fix = (
                f"If the app checks X-Twilio-Signature on the handshake, it must check the wss:// url exactly as the "
                f"TwiML wrote it ({url}), with no parameters; behind a proxy that is not the url it sees "
                "(voicebridge: --public-url)."
            )
            if not data.get("signed"):
                fix += " The probe had no auth token: pass --auth-token so it signs like Twilio."
        elif told == "development-mode":
            fix = "Give the daemon the Twilio auth token (TWILIO_AUTH_TOKEN or --auth-token-file)."
        return (f"The app refused the WebSocket handshake at {url}: {verdict.reason}.", fix)

    return explain


def _closed_early(step, steps, local):
    data = step.data
    return (
        f"The app accepted the stream and closed it after {data.get('open_seconds', 0):.1f} s, before Twilio's stop "
        f"(close code {data.get('close_code')}, reason {data.get('close_reason') or 'none given'}; "
        f"{data.get('sent', 0)} frames sent, {data.get('received', 0)} received). Twilio then leaves <Connect> and "
        "the call moves on or hangs up.",
        "Look at the app's log at that moment: an exception on the connected/start messages, a check on "
        "start.customParameters that fails, or a timeout. Keep the socket open until Twilio sends stop.",
    )


def _no_media(step, steps, local):
    data = step.data
    if data.get("expect") == "echo" and data.get("received"):
        return (
            f"The stream works, but the echo is wrong: {data.get('echoed', 0)} of {data.get('sent', 0)} frames came back "
            f"unchanged ({data.get('received', 0)} media frames received).",
            "An echo handler must send every frame back unchanged, in order; something in between drops or alters them.",
        )
    return (
        f"The stream works, but in {data.get('listen_seconds', 0):.1f} s the app sent no audio back: the caller hears silence.",
        'The app must send {"event":"media","streamSid":...,"media":{"payload":...}} (base64 mu-law, 8 kHz) on the '
        "same socket. If it only listens (transcription), run the probe with --expect none.",
    )


_TEXTS = {
    "ok": _ok,
    "dns-failure": _dns,
    "connection-refused": _refused,
    "connect-timeout": _timeout,
    "connection-failed": _failed,
    "tls-untrusted": _tls("untrusted"),
    "tls-incomplete-chain": _tls("incomplete-chain"),
    "tls-hostname-mismatch": _tls("hostname-mismatch"),
    "tls-expired": _tls("expired"),
    "tls-handshake-failed": _tls("handshake-failed"),
    "url-not-public": _url_not_public,
    "webhook-not-found": _webhook_not_found,
    "webhook-error": _webhook_error,
    "signature-rejected": _signature,
    "not-twiml": _twiml,
    "no-stream-in-twiml": _no_stream,
    "stream-url-not-wss": _not_wss,
    "stream-url-query-string": _query,
    "stream-url-port": _port,
    "stream-path-not-found": _handshake("stream-path-not-found"),
    "upgrade-stripped": _handshake("upgrade-stripped"),
    "handshake-rejected": _handshake("handshake-rejected"),
    "stream-closed-early": _closed_early,
    "no-media-back": _no_media,
}
