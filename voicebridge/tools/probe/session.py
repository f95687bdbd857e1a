"""One probe run, the I/O: do what Twilio does on an incoming call, layer by layer.

Resolve and connect, verify TLS as Twilio would, POST the signed webhook, read the TwiML, check
the ``<Stream>`` url, open the stream with a signed handshake, send ``connected``, ``start`` and a
few seconds of media, watch what comes back, send ``stop``. Each layer is one ``Step``; what an
observation means is ``judge.py``'s, what the run means ``voicebridge/tools/diagnosis``'s (both pure).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
from dataclasses import dataclass
from io import BytesIO
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from twisted.internet import defer, error, protocol, threads
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from voicebridge.net.wsclient import endpoint_for, load_trust_root
from voicebridge.tls.inspect import InspectingTLS
from voicebridge.tools import diagnosis as dx
from voicebridge.tools.diagnosis import FAIL, OK, SKIP, STREAM, WARN, WEBHOOK, HTTPAnswer, Step
from voicebridge.tools.probe import judge
from voicebridge.tools.probe.options import ProbeOptions, redacted, sibling_path, twilio_form, without_userinfo
from voicebridge.tools.probe.report import Report
from voicebridge.tools.twiliosim import FRAME_MS, CallScript, new_sid, play_call
from voicebridge.twilio.signatures import SignatureChecker

WEBHOOK_TIMEOUT = 15  # Twilio waits this long for the voice webhook
MAX_REDIRECTS = 10
MAX_BODY = 1024 * 1024
USER_AGENT = "TwilioProxy/1.1 (voicebridge probe)"
REDIRECTS = (301, 302, 303, 307, 308)
PLAIN_HTTP_AFTER = 1.0  # a TLS handshake not done by then: ask the port in plain HTTP (a TLS port answers in ms)
PLAIN_HTTP_WAIT = 3.0


# I/O helpers.


class _Capped(protocol.Protocol):
    """Reads a response body, keeping at most ``limit`` bytes."""

    def __init__(self, done: defer.Deferred, limit: int):
        self.done, self.limit, self.chunks, self.size = done, limit, [], 0

    def dataReceived(self, data):
        if self.size < self.limit:
            self.chunks.append(data[: self.limit - self.size])
        self.size += len(data)

    def connectionLost(self, reason):
        if reason.check(ResponseDone, PotentialDataLoss) or self.size >= self.limit:
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def read_body(response, limit: int = MAX_BODY) -> defer.Deferred:
    done = defer.Deferred()
    response.deliverBody(_Capped(done, limit))
    return done


def headers_of(response) -> dict:
    return {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1") for k, v in response.headers.getAllRawHeaders()}


@implementer(IHandshakeListener)
class _Handshake(protocol.Protocol):
    """Completes a TLS handshake (or a bare TCP connection) and hangs up."""

    def __init__(self, done):
        self.done = done

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        if not self.factory.tls:
            self._finish(None)

    def handshakeCompleted(self):
        self._finish(None)

    def _finish(self, failure):
        done, self.done = self.done, None
        if done is not None:
            done.errback(failure) if failure is not None else done.callback(self)
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.done is not None:
            done, self.done = self.done, None
            done.errback(reason)


def connect_error(failure) -> tuple[str, str]:
    """(kind, reason) of a failed TCP connection."""
    if failure.check(error.ConnectionRefusedError):
        return "refused", "connection refused"
    if failure.check(error.TimeoutError, defer.TimeoutError):
        return "timeout", "no answer (timed out)"
    if failure.check(error.DNSLookupError):
        return "dns", str(failure.value)
    if failure.check(error.NoRouteError):
        return "unreachable", "no route to host"
    return "failed", failure.getErrorMessage()


def tls_error_text(failure, timeout: float) -> str:
    if failure.check(defer.TimeoutError, error.TimeoutError):
        return f"no TLS handshake within {timeout:g} s: the port does not seem to speak TLS"
    value = failure.value
    errors = (getattr(value, "args", None) or [None])[0]
    if isinstance(errors, list) and errors and isinstance(errors[0], tuple):
        return "; ".join(str(e[-1]) for e in errors if e and e[-1]) or str(value)
    if failure.check(error.ConnectionDone, error.ConnectionLost):
        return "the server closed the connection during the TLS handshake"
    return failure.getErrorMessage() or type(value).__name__


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Origin:
    secure: bool
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        return cls(secure, (parts.hostname or "").lower(), parts.port or (443 if secure else 80))

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Stop(Exception):
    """A layer failed in a way that leaves nothing further to try."""


# The probe.


class Probe:
    """One run against one webhook URL. ``run()`` fires with a Report; it never raises for a failing layer."""

    def __init__(self, reactor, options: ProbeOptions):
        self.reactor = reactor
        self.options = options
        self.signer = SignatureChecker(options.auth_token) if options.auth_token else None
        # The roots the probe trusts: the system's (as Twilio trusts the public CAs), or --cafile's.
        self.trust = load_trust_root(options.cafile) if options.cafile else None
        self.steps: list[Step] = []
        self._tls: dict[Origin, object] = {}
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent.usingEndpointFactory(reactor, self, pool=self._pool)
        self.call_sid = dict(options.params).get("CallSid") or new_sid("CA")
        self.account_sid = dict(options.params).get("AccountSid") or new_sid("AC")
        self._token = os.urandom(4).hex()

    # Steps.

    def _add(self, name: str, layer: str, **data) -> Step:
        step = Step(name, layer, data=dict(data))
        self.steps.append(step)
        return step

    def _done(self, step: Step, status: str, summary: str, started: float | None = None) -> Step:
        step.status, step.summary = status, summary
        if started is not None:
            step.seconds = self.reactor.seconds() - started
        return step

    def run(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._run())

    async def _run(self) -> Report:
        planned = ["url", "resolve", "connect", "tls", "webhook", "twiml", "stream-url", "handshake", "media", "stop"]
        try:
            await self._probe()
        except Stop:
            pass
        names = {s.name for s in self.steps}
        for name in planned:
            if name not in names:
                self.steps.append(Step(name, name))
        order = {name: i for i, name in enumerate(planned)}
        # Steps of another host (redirect-*, stream-*) stay after the step that led to them.
        self.steps.sort(key=lambda s: order.get(s.name, order.get(s.data.get("after", ""), 0) + 0.5))
        diagnosis = dx.diagnose(self.steps, self.options.local)
        return Report(redacted(self.options.url), self.steps, diagnosis, self.options.local)

    async def _probe(self) -> None:
        url = self.options.url
        step = self._add("url", "url", role=WEBHOOK, url=redacted(url))
        self._judge_url(step, url, WEBHOOK)
        response, body = await self._webhook(url)
        parameters, stream_url, expect = self._twiml(response, body)
        step = self._add("stream-url", "stream-url", role=STREAM, url=stream_url)
        self._judge_url(step, stream_url, STREAM)
        parts = urlsplit(stream_url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise Stop
        origin = Origin.of(stream_url)
        if origin not in self._tls:
            await self._origin(origin, "stream-", STREAM, after="stream-url")
        await self._stream(stream_url, parameters, expect)

    def _judge_url(self, step: Step, url: str, role: str) -> None:
        self._record(step, judge.judge_url(url, role, self.options.local))

    def _record(self, step: Step, verdict: judge.Verdict, started: float | None = None) -> Step:
        step.data.update(verdict.data)
        step.warnings.extend(w for w in verdict.warnings if w not in step.warnings)
        return self._done(step, verdict.status, verdict.summary, started)

    # One host: resolve, connect, TLS.

    async def _origin(self, origin: Origin, prefix: str, role: str, after: str = "") -> None:
        """Check the layers below HTTP for one host; remember how to talk TLS to it."""
        target = self.options.route(origin.host, origin.port)
        host, port = target or (origin.host, origin.port)
        common = {"role": role, "after": after} if prefix else {"role": role}
        note = f" (--connect-to {origin} -> {host}:{port})" if target else ""

        step = self._add(f"{prefix}resolve", "resolve", host=host, **common)
        started = self.reactor.seconds()
        if _is_address(host):
            self._done(step, OK, f"{host} is an address{note}", started)
        else:
            try:
                infos = await threads.deferToThread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
            except (OSError, UnicodeError) as e:
                step.data["reason"] = getattr(e, "strerror", None) or str(e)
                self._done(step, FAIL, f"{host}: {step.data['reason']}", started)
                raise Stop from None
            addresses = sorted({info[4][0] for info in infos})
            step.data["addresses"] = addresses
            step.warnings += judge.resolve_warnings(host, addresses, target is not None, self.options.local)
            self._done(step, WARN if step.warnings else OK, f"{host} -> {', '.join(addresses)}{note}", started)

        step = self._add(f"{prefix}connect", "connect", address=f"{host}:{port}", timeout=self.options.timeout, **common)
        started = self.reactor.seconds()
        try:
            connected = await self._handshake(origin, host, port, None)
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            kind, reason = connect_error(Failure(e))
            step.data.update(error=kind, reason=reason)
            self._done(step, FAIL, f"{host}:{port}: {reason}", started)
            raise Stop from None
        peer = connected.peer
        self._done(step, OK, f"{getattr(peer, 'host', host)}:{getattr(peer, 'port', port)}", started)

        if not origin.secure:
            self._tls[origin] = None
            self._done(self._add(f"{prefix}tls", "tls", **common), SKIP, "none: plain http:// (ws://)")
            return
        step = self._add(f"{prefix}tls", "tls", hostname=origin.host, **common)
        started = self.reactor.seconds()
        inspector = InspectingTLS(origin.host, self.options.cafile)
        handshake = self._handshake(origin, host, port, inspector)
        outcome: list = []
        settled = defer.Deferred()
        handshake.addBoth(lambda result: (outcome.append(result), settled.called or settled.callback(None)))
        # A port without TLS may sit on a ClientHello until its own timeout: after a moment, ask it in plain HTTP.
        plain = await self._plain_http_meanwhile(settled, host, port, origin)
        if plain is not None and not judge.conclusive_while_waiting(plain):
            plain = None  # let the TLS handshake decide; its failure asks again
        if plain is not None:
            handshake.cancel()
            reason = f"a plain HTTP request got {plain!r}"
            step.data.update(problem="no-tls", reason=reason, problems=[reason])
            return self._tls_failed(step, origin, reason, started)
        await settled
        if isinstance(outcome[0], Failure):
            failure = outcome[0]
            if inspector.connection is not None and inspector.connection.get_peer_certificate() is not None:
                findings = inspector.findings()
            else:
                findings = None
            reason = tls_error_text(failure, self.options.timeout)
            plain = await self._plain_http(host, port, origin)
            problem = "no-tls" if plain is not None else "handshake-failed"
            if plain is not None:
                reason = f"a plain HTTP request got {plain!r} ({reason})"
            step.data.update(problem=problem, reason=reason, problems=[reason])
            if findings is not None:
                step.data["chain"] = findings.chain
            return self._tls_failed(step, origin, reason, started)
        findings = inspector.findings()
        step.data.update(findings.as_dict())
        if findings.problem:
            return self._tls_failed(step, origin, findings.reason, started)
        leaf = findings.chain[0]
        self._tls[origin] = self._verified(origin)
        if self.options.cafile:
            public = InspectingTLS(origin.host)
            try:
                await self._handshake(origin, host, port, public)
                step.warnings += judge.tls_warnings(self.options.cafile, bool(public.findings().problem))
            except Exception:  # noqa: BLE001 - the verdict stands on the first handshake
                pass
        self._done(
            step,
            WARN if step.warnings else OK,
            f"{findings.protocol}; certificate for {', '.join(findings.names[:3]) or leaf['subject']} issued by "
            f"{leaf['issuer']}, expires {leaf['not_after'][:10]}; {len(findings.chain)} certificate(s) sent",
            started,
        )

    async def _plain_http_meanwhile(self, settled, host: str, port: int, origin: Origin) -> str | None:
        waited = defer.Deferred()
        timer = self.reactor.callLater(PLAIN_HTTP_AFTER, lambda: waited.called or waited.callback(None))
        settled.addBoth(lambda result: (waited.called or waited.callback(None), result)[1])
        await waited
        if settled.called:
            if timer.active():
                timer.cancel()
            return None
        return await self._plain_http(host, port, origin)

    async def _plain_http(self, host: str, port: int, origin: Origin) -> str | None:
        """The status line if ``host:port`` answers a plain HTTP request as an HTTP server would."""
        endpoint = endpoint_for(self.reactor, f"http://{origin}/", connect_to=(host, port), timeout=PLAIN_HTTP_WAIT)
        head = defer.Deferred()
        request = f"HEAD / HTTP/1.0\r\nHost: {origin.host}\r\nUser-Agent: {USER_AGENT}\r\n\r\n".encode("latin-1")

        class Sniff(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(request)

            def dataReceived(self, data):
                if not head.called:
                    head.callback(data)
                self.transport.loseConnection()

            def connectionLost(self, reason):
                if not head.called:
                    head.callback(b"")

        try:
            await endpoint.connect(protocol.Factory.forProtocol(Sniff)).addTimeout(PLAIN_HTTP_WAIT, self.reactor)
            data = await head.addTimeout(PLAIN_HTTP_WAIT, self.reactor)
        except Exception:  # noqa: BLE001 - no answer: nothing to conclude
            return None
        return judge.plain_http_answer(data)

    def _tls_failed(self, step: Step, origin: Origin, reason: str, started: float) -> None:
        if judge.tls_failure_status(step.data.get("problem", ""), self.options.local) == WARN:
            step.warnings.append(f"{reason} (accepted because of --local; Twilio would refuse it)")
            self._tls[origin] = InspectingTLS(origin.host, self.options.cafile)
            self._done(step, WARN, f"{dx.code_for(step)}: {reason}", started)
            return
        self._done(step, FAIL, reason, started)
        raise Stop

    def _verified(self, origin: Origin):
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(origin.host, trustRoot=self.trust)

    def _handshake(self, origin: Origin, host: str, port: int, tls) -> defer.Deferred:
        url = f"{'https' if tls else 'http'}://{origin}/"
        endpoint = endpoint_for(self.reactor, url, connect_to=(host, port), timeout=self.options.timeout, tls_options=tls)
        done = defer.Deferred()
        factory = protocol.Factory.forProtocol(lambda: _Handshake(done))
        factory.tls = tls is not None
        connecting = endpoint.connect(factory)
        connecting.addErrback(lambda f: done.called or done.errback(f))
        return done.addTimeout(self.options.timeout, self.reactor)

    # The agent's endpoints: --connect-to, and the TLS each host earned.

    def endpointForURI(self, uri):
        url = uri.toBytes().decode("latin-1")
        origin = Origin.of(url)
        return endpoint_for(
            self.reactor,
            url,
            connect_to=self.options.route(origin.host, origin.port),
            timeout=self.options.timeout,
            tls_options=self._tls.get(origin) or (self._verified(origin) if origin.secure else None),
        )

    async def _request(self, method: str, url: str, headers: dict, body: bytes | None, limit: int, timeout: float):
        parts = urlsplit(url)
        plain_url = without_userinfo(url)
        all_headers = {"User-Agent": USER_AGENT, "Accept": "*/*", **headers}
        if parts.username is not None:
            credentials = f"{parts.username}:{parts.password or ''}".encode()
            all_headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        raw = Headers({k.encode(): [v.encode("latin-1")] for k, v in all_headers.items()})
        d = self._agent.request(method.encode(), plain_url.encode("ascii"), raw, producer)
        d.addTimeout(timeout, self.reactor)
        response = await d
        content = await read_body(response, limit).addTimeout(timeout, self.reactor)
        return response, content

    # The webhook.

    async def _webhook(self, url: str):
        origin = Origin.of(url)
        await self._origin(origin, "", WEBHOOK)
        form = twilio_form(self.call_sid, self.account_sid, self.options.params)
        method, body = "POST", urlencode(form).encode()
        redirects, hop = [], 0
        step = self._add(
            "webhook", "webhook", role=WEBHOOK, signed=self.signer is not None, credentials=urlsplit(url).username is not None
        )
        started = self.reactor.seconds()
        while True:
            signed_url = without_userinfo(url)
            headers = {}
            if method == "POST":
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            if self.signer is not None:
                headers["X-Twilio-Signature"] = self.signer.sign(signed_url, form if method == "POST" else None)
            step.data.update(url=signed_url, method=method)
            try:
                response, content = await self._request(
                    method, url, headers, body if method == "POST" else None, MAX_BODY, WEBHOOK_TIMEOUT
                )
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                if timed_out(e):
                    step.data.update(error="timeout", reason=f"no answer within {WEBHOOK_TIMEOUT} s")
                    self._done(step, FAIL, f"{method} {signed_url}: {step.data['reason']}", started)
                    raise Stop from None
                reason = _request_error(e)
                step.data.update(error="connection", reason=reason)
                self._done(step, FAIL, f"{method} {signed_url}: {reason}", started)
                raise Stop from None
            headers_in = headers_of(response)
            location = headers_in.get("location")
            if response.code in REDIRECTS and location:
                hop += 1
                target = urljoin(url, location)
                redirects.append({"status": response.code, "from": signed_url, "to": target})
                warning = f"{response.code} redirect to {target}: configure Twilio with the final URL"
                if warning not in step.warnings:
                    step.warnings.append(warning)
                if hop > MAX_REDIRECTS or urlsplit(target).scheme not in ("http", "https"):
                    step.data.update(error="redirects", reason=f"{hop} redirects, the last to {target}", redirects=redirects)
                    self._done(step, FAIL, step.data["reason"], started)
                    raise Stop
                if response.code not in (307, 308):
                    method = "GET"
                url = target
                new = Origin.of(url)
                if new not in self._tls:
                    await self._origin(new, f"redirect{hop}-", WEBHOOK, after="webhook")
                continue
            break
        content_type = headers_in.get("content-type")
        step.data.update(
            status=response.code,
            content_type=content_type,
            diagnosis_header=headers_in.get("x-voicebridge-diagnosis"),
            www_authenticate=headers_in.get("www-authenticate"),
            server=headers_in.get("server"),
            edge={k: v for k, v in headers_in.items() if k in dx.EDGE_HEADERS},
            checked_url=judge.checked_url(content) if headers_in.get("x-voicebridge-diagnosis") else None,
            redirects=redirects,
            final_url=signed_url,
        )
        summary = judge.webhook_summary(method, self.signer is not None, response.code, content_type)
        if not self.signer:
            step.warnings.append("no --auth-token: the request was not signed, as Twilio's always is")
        if not 200 <= response.code < 300:
            step.data["excerpt"] = content[:200].decode("utf-8", "replace").strip()
            self._done(step, FAIL, summary, started)
            raise Stop
        self._done(step, WARN if step.warnings else OK, summary, started)
        return response, content

    def _twiml(self, response, body: bytes):
        step = self._add("twiml", "twiml")
        twiml = dx.read_twiml(headers_of(response).get("content-type"), body)
        step.data.update(twiml.as_dict())
        verdict, expect = judge.judge_twiml(twiml, self.options.expect)
        if twiml.problem:
            step.data["excerpt"] = body[:200].decode("utf-8", "replace").strip()
        self._record(step, verdict)
        if verdict.status == FAIL:
            raise Stop
        return twiml.parameters, twiml.stream_url, expect

    # The stream.

    async def _stream(self, stream_url: str, parameters: dict, expect: str) -> None:
        origin = Origin.of(stream_url)
        route = self.options.route(origin.host, origin.port)
        tls = self._tls.get(origin)
        signature = self.signer.sign(stream_url) if self.signer else None
        step = self._add("handshake", "handshake", role=STREAM, url=stream_url, signed=signature is not None)
        frames = max(1, round(self.options.seconds * 1000 / FRAME_MS))
        script = CallScript(
            frames=frames,
            custom_parameters=parameters,
            linger=1.0,
            close_after=0.5,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
        )
        started = self.reactor.seconds()
        call = play_call(
            self.reactor, stream_url, script, signature, connect_to=route, timeout=self.options.timeout, tls_options=tls
        )
        try:
            outcome = await call.addTimeout(self.options.timeout + self.options.seconds + 15, self.reactor)
        except Exception as e:  # noqa: BLE001
            kind, reason = connect_error(Failure(e))
            step.data.update(connect_error=kind, reason=reason, address=str(origin))
            self._done(step, FAIL, f"{origin}: {reason}", started)
            raise Stop from None
        if not outcome.opened:
            upgrade = HTTPAnswer(
                outcome.handshake_status,
                {k.lower(): v for k, v in outcome.handshake_headers.items()},
                outcome.handshake_body,
                outcome.handshake_error or outcome.close_reason,
                complete=False,
            )
            path = urlsplit(stream_url).path or "/"
            sibling = sibling_path(path, self._token)
            answers = await self._compare(stream_url, path, sibling, tls, route)
            step.data.update(path=path, sibling=sibling, answers={"upgrade": upgrade.as_dict(), **answers})
            step.data["upstream"] = judge.upstream_of(outcome.handshake_body or b"")
            verdict = dx.handshake_verdict(step.data)
            shown = upgrade.status if upgrade.status is not None else "no answer"
            self._done(step, FAIL, f"GET {path} with Upgrade -> {shown}: {verdict.reason}", started)
            raise Stop
        self._done(step, OK, f"101 Switching Protocols ({'signed' if signature else 'UNSIGNED'})")
        step.seconds = (outcome.opened_at or started) - started
        self._media(outcome, expect)

    async def _compare(self, stream_url: str, path: str, sibling: str, tls, route) -> dict:
        """The answers that tell a stripped upgrade from a missing path (see diagnosis.classify_handshake)."""
        parts = urlsplit(stream_url)
        http = "https" if parts.scheme == "wss" else "http"
        sibling_ws = urlunsplit(parts._replace(path=sibling, query=""))

        async def plain(p):
            url = urlunsplit(parts._replace(scheme=http, path=p, query=""))
            ws_url = urlunsplit(parts._replace(path=p, query=""))
            headers = {"X-Twilio-Signature": self.signer.sign(ws_url)} if self.signer else {}
            try:
                response, content = await self._request("GET", url, headers, None, 64 * 1024, self.options.timeout)
            except Exception as e:  # noqa: BLE001
                return HTTPAnswer(None, error=_request_error(e)).as_dict()
            return HTTPAnswer(response.code, headers_of(response), content).as_dict()

        async def upgrade(url):
            script = CallScript(frames=0, announce=False, send_stop=False, close_after=0)
            signature = self.signer.sign(url) if self.signer else None
            try:
                outcome = await play_call(
                    self.reactor, url, script, signature, connect_to=route, timeout=self.options.timeout, tls_options=tls
                ).addTimeout(self.options.timeout + 5, self.reactor)
            except Exception as e:  # noqa: BLE001
                return HTTPAnswer(None, error=str(e)).as_dict()
            headers = {k.lower(): v for k, v in outcome.handshake_headers.items()}
            return HTTPAnswer(outcome.handshake_status, headers, outcome.handshake_body, outcome.handshake_error).as_dict()

        results = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(plain(path)),
                defer.Deferred.fromCoroutine(upgrade(sibling_ws)),
                defer.Deferred.fromCoroutine(plain(sibling)),
            ]
        )
        return dict(zip(("plain", "sibling_upgrade", "sibling_plain"), results, strict=True))

    def _media(self, outcome, expect: str) -> None:
        sent, received = outcome.sent, outcome.received
        echoed = sum(1 for a, b in zip(sent, received, strict=False) if a == b)
        closed_early = bool(outcome.closed_by_server) and not outcome.stop_sent
        end = outcome.closed_at or self.reactor.seconds()
        data = {
            "role": STREAM,
            "expect": expect,
            "sent": len(sent),
            "received": len(received),
            "echoed": echoed,
            "marks": list(outcome.marks),
            "clears": outcome.clears,
            "unexpected": list(outcome.foreign),
            "closed_early": closed_early,
            "close_code": outcome.close_code,
            "close_reason": outcome.close_reason,
            "open_seconds": end - (outcome.opened_at or end),
            "listen_seconds": min(end - (outcome.opened_at or end), len(sent) * FRAME_MS / 1000 + 1.0),
        }
        media = self._add("media", "media", **data)
        self._record(media, judge.judge_media(data, list(outcome.foreign), list(outcome.marks)))
        media.seconds = data["open_seconds"]
        stop = self._add("stop", "stop", close_code=outcome.close_code, closed_by_app=outcome.closed_by_server)
        self._record(stop, judge.judge_stop(outcome.stop_sent, outcome.closed_by_server, outcome.close_code))


def timed_out(e: Exception) -> bool:
    if isinstance(e, (defer.TimeoutError, error.TimeoutError)):
        return True
    if isinstance(e, (ResponseNeverReceived, ResponseFailed)):
        return any(r.check(defer.CancelledError, defer.TimeoutError) for r in e.reasons)
    return False


def _request_error(e: Exception) -> str:
    if timed_out(e):
        return "no answer (timed out)"
    if isinstance(e, (ResponseNeverReceived, ResponseFailed)):
        reasons = [r.getErrorMessage() for r in e.reasons]
        return "the connection broke before a full answer: " + "; ".join(reasons)
    return str(e) or type(e).__name__
