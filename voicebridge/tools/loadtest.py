"""``voicebridge loadtest WS_URL``: how many calls a box carries, measured the way Twilio loads it.

Each simulated call opens the stream as Twilio does (signed handshake, ``connected``, ``start``),
sends a 160-byte mu-law frame every 20 ms, and times the echo of each frame, matched by an id
carried in the audio itself. The report: echo round trip (p50, p99, max), frames lost,
handshake failures, calls the server dropped, and the generator's own CPU and lateness, because
a saturated load generator measures itself, not the server.

The client is lean so that one core drives more calls than the server under test carries: a raw
Twisted protocol with the little of RFC 6455 a client needs (``voicebridge.fastpath.frames``), frames
filled into a bytes template, and one shared timer ticking every call.
"""

from __future__ import annotations

import base64
import binascii
import os
import random
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol

from voicebridge.fastpath import frames as wsframes
from voicebridge.fastpath import leanloop
from voicebridge.fastpath.leanloop import write_now
from voicebridge.tools.twiliosim import FRAME_BYTES, FRAME_MS, endpoint_for, new_sid
from voicebridge.twilio import messages

FRAME_S = FRAME_MS / 1000
SLOTS = 10  # calls are spread over 10 phases 2 ms apart, as independent calls would be
ID_BYTES = 6  # the frame id leads the audio; 6 bytes are exactly 8 base64 characters
ID_B64 = 8
# The rest of every frame's audio: a fixed tone, so an echo is checked byte for byte.
TAIL = bytes((0xFF - (i * 37) % 0x7F) for i in range(FRAME_BYTES - ID_BYTES))
TAIL_B64 = base64.b64encode(TAIL)
PAYLOAD_B64_LEN = ID_B64 + len(TAIL_B64)
MAX_HANDSHAKE_RESPONSE = 16384


def frame_audio(frame_id: int) -> bytes:
    """The 160 bytes of audio the load tester sends as frame ``frame_id`` of a call."""
    return frame_id.to_bytes(ID_BYTES, "big") + TAIL


@dataclass
class LoadOptions:
    url: str
    calls: int = 10
    duration: float = 10.0
    ramp: float | None = None  # seconds over which the calls open; default calls/200
    grace: float = 2.0  # how long to wait for the last echoes after sending stops
    timeout: float = 10.0  # per handshake
    signature: str | None = None  # X-Twilio-Signature for every handshake
    progress: object = None  # callable(str) for progress lines (stderr in the CLI)

    def ramp_seconds(self) -> float:
        return self.ramp if self.ramp is not None else self.calls / 200


@dataclass
class LoadResult:
    url: str
    calls: int
    duration: float
    opened: int = 0
    handshake_failures: Counter = field(default_factory=Counter)
    handshake_ms: array = field(default_factory=lambda: array("d"))
    dropped: int = 0  # calls the server closed before the end
    close_codes: Counter = field(default_factory=Counter)
    frames_sent: int = 0
    frames_echoed: int = 0
    frames_unexpected: int = 0  # echoes of no outstanding frame (duplicates)
    frames_corrupt: int = 0  # echoes whose audio differs from what was sent
    other_messages: Counter = field(default_factory=Counter)
    rtt_ms: array = field(default_factory=lambda: array("d"))  # frames sent after every call was open
    send_lag_ms: array = field(default_factory=lambda: array("d"))
    generator_cpu: float = 0.0  # fraction of one core over the steady window
    steady_seconds: float = 0.0

    @property
    def frames_lost(self) -> int:
        return self.frames_sent - self.frames_echoed

    @property
    def ok(self) -> bool:
        return self.opened == self.calls and not self.dropped and not self.frames_lost and not self.frames_corrupt

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "calls": self.calls,
            "duration_s": self.duration,
            "opened": self.opened,
            "handshake_failures": sum(self.handshake_failures.values()),
            "handshake_failure_reasons": dict(self.handshake_failures),
            "handshake_ms": summary(self.handshake_ms),
            "dropped": self.dropped,
            "close_codes": {str(k): v for k, v in self.close_codes.items()},
            "frames_sent": self.frames_sent,
            "frames_echoed": self.frames_echoed,
            "frames_lost": self.frames_lost,
            "frames_unexpected": self.frames_unexpected,
            "frames_corrupt": self.frames_corrupt,
            "other_messages": dict(self.other_messages),
            "rtt_ms": summary(self.rtt_ms),
            "generator": {
                "cpu": round(self.generator_cpu, 3),
                "send_lag_ms": summary(self.send_lag_ms),
                "steady_s": round(self.steady_seconds, 2),
            },
            "ok": self.ok,
        }

    def text(self) -> str:
        d = self.as_dict()
        rtt, lag = d["rtt_ms"], d["generator"]["send_lag_ms"]
        failures = ", ".join(f"{k} x{v}" for k, v in sorted(self.handshake_failures.items())) or "none"
        lines = [
            f"voicebridge loadtest {self.url}",
            f"  calls        {self.opened}/{self.calls} opened; handshake failures: {failures}; "
            f"dropped by the server: {self.dropped}",
            f"  frames       sent {self.frames_sent}, echoed {self.frames_echoed}, lost {self.frames_lost}"
            + (f", corrupt {self.frames_corrupt}" if self.frames_corrupt else "")
            + (f", unexpected {self.frames_unexpected}" if self.frames_unexpected else ""),
            f"  round trip   {_ms(rtt)} ({rtt['samples']} frames sent after every call was open)",
            f"  handshake    {_ms(d['handshake_ms'], worst=False)}",
            f"  generator    {self.generator_cpu:.0%} of one core; sends late by {_ms(lag, median=False)}",
        ]
        if self.other_messages:
            lines.append(f"  other        {dict(self.other_messages)}")
        lines += [f"  hint         {hint}" for hint in failure_hints(self.handshake_failures)]
        lines += [f"  WARNING      {warning}" for warning in generator_warnings(self.generator_cpu, lag["p99"])]
        lines.append("  result       " + ("OK" if self.ok else "FAILED (calls not opened or dropped, or frames lost)"))
        return "\n".join(lines)


def _ms(figures: dict, median: bool = True, worst: bool = True) -> str:
    """``p50 1.2 ms, p99 3.4 ms, max 5.6 ms``, or ``no samples`` (not ``p50 None ms``)."""
    if not figures.get("samples"):
        return "no samples"
    keys = (["p50"] if median else []) + ["p99"] + (["max"] if worst else [])
    return ", ".join(f"{key} {figures[key]} ms" for key in keys)


def failure_hints(failures) -> list[str]:
    """What to do about the handshake failures seen, by reason."""
    hints = []
    if failures.get("http-403"):
        hints.append(
            "http-403: the daemon checks X-Twilio-Signature. Give the load test the daemon's token "
            "(--auth-token-file FILE or TWILIO_AUTH_TOKEN) and, behind a proxy, its --public-url"
        )
    if failures.get("http-503"):
        hints.append("http-503: the daemon is full (--max-calls) or draining; its log says which (handshake.refused)")
    return hints


# The generator is the limit when it burns a core; sends running late on a mostly idle generator
# mean other processes took the CPU (a busy machine), not the generator.
GENERATOR_CPU_LIMIT = 0.85
LATE_MS = 5


def generator_warnings(cpu: float, late_p99: float | None) -> list[str]:
    if cpu > GENERATOR_CPU_LIMIT:
        return [
            f"the load generator used {cpu:.0%} of a core, near its limit: round trips include its own delay. "
            "Run it on another core or machine, or with fewer calls."
        ]
    if (late_p99 or 0) > LATE_MS:
        return [
            f"sends ran late (p99 {late_p99} ms) while the generator used only {cpu:.0%} of a core: the machine is "
            "busy (other processes took the CPU), and round trips include that delay."
        ]
    return []


def summary(values) -> dict:
    """p50, p99 and max (ms, nearest rank) of a sample."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q):
        return round(ordered[min(n - 1, max(0, -(-int(q * n * 1000) // 1000) - 1))], 3)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ordered[-1], 3), "samples": n}


class CallClient(Protocol):
    """One simulated call: Twilio's handshake, then a frame out per tick and each echo timed."""

    def __init__(self, test: LoadTest, index: int):
        self.test = test
        self.index = index
        self.stream_sid = new_sid("MZ")
        self.call_sid = new_sid("CA")
        self.template = messages.twilio_media_template(self.stream_sid)
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.buf = b""
        self.is_open = False
        self.ending = False
        self.sent_close = False
        self.outstanding: dict[int, float] = {}
        self.sequence = 0
        self.frame = 0
        self.fragments: list[bytes] | None = None
        self.done = defer.Deferred()  # fires once the handshake succeeded or failed
        self.gone = defer.Deferred()  # fires when the connection is closed
        self._timer = None
        self._began = 0.0

    # Opening handshake.

    def connectionMade(self):
        self._began = time.perf_counter()
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        self.transport.write(self.test.handshake_request(self.key))
        self._timer = self.test.reactor.callLater(self.test.options.timeout, self._handshake_timeout)

    def _handshake_timeout(self):
        self._timer = None
        self._fail("timeout")

    def _fail(self, reason: str):
        if not self.is_open and not self.done.called:
            self.test.result.handshake_failures[reason] += 1
            self.done.callback(self)
        self.transport.abortConnection()

    def _handshake(self, data: bytes):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HANDSHAKE_RESPONSE:
                self._fail("response-too-long")
            return
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        status = parts[1] if len(parts) > 1 else "?"
        if status != "101":
            self._fail(f"http-{status}")
            return
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            self._fail("no-upgrade")
            return
        if headers.get("sec-websocket-accept") != wsframes.accept_key(self.key):
            self._fail("bad-accept")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.is_open = True
        self.test.result.handshake_ms.append((time.perf_counter() - self._began) * 1000)
        self.send_text(messages.twilio_connected())
        self.send_text(messages.twilio_start(self.stream_sid, self.call_sid, "AC" + "0" * 32, {"loadtest": str(self.index)}))
        self.sequence = 1
        self.test.opened(self)
        if self.buf:
            data, self.buf = self.buf, b""
            self._frames(data)

    # Frames.

    def send_text(self, payload: bytes):
        write_now(self.transport, wsframes.masked_frame(wsframes.FIN_TEXT, payload, _mask()))

    def send_media(self, now: float):
        frame = self.frame
        self.frame = frame + 1
        self.sequence += 1
        b64 = binascii.b2a_base64(frame.to_bytes(ID_BYTES, "big"), newline=False) + TAIL_B64
        payload = self.template % (self.sequence, frame + 1, frame * FRAME_MS, b64)
        write_now(self.transport, wsframes.masked_frame(wsframes.FIN_TEXT, payload, _mask()))
        self.outstanding[frame] = now

    def dataReceived(self, data: bytes):
        if self.is_open:
            self._frames(data)
        else:
            self._handshake(data)

    def _frames(self, data: bytes):
        now = time.perf_counter()
        buf = self.buf + data if self.buf else data
        pos = 0
        for b0, payload, pos in wsframes.split_frames(buf):  # noqa: B007 (pos: where the next read resumes)
            self._frame(b0, payload, now)
            if self.transport is None:
                return
        self.buf = buf[pos:]

    def _frame(self, b0: int, payload: bytes, now: float):
        opcode, fin = b0 & wsframes.OPCODE, b0 & wsframes.FIN
        if opcode == wsframes.OP_TEXT and fin:
            self._text(payload, now)
        elif opcode in (wsframes.OP_TEXT, wsframes.OP_BINARY):
            self.fragments = [payload]
        elif opcode == wsframes.OP_CONTINUATION and self.fragments is not None:
            self.fragments.append(payload)
            if fin:
                whole, self.fragments = b"".join(self.fragments), None
                self._text(whole, now)
        elif opcode == wsframes.OP_PING:
            self.transport.write(wsframes.masked_frame(wsframes.FIN | wsframes.OP_PONG, payload, _mask()))
        elif opcode == wsframes.OP_CLOSE:
            code = wsframes.close_code(payload)
            self.test.result.close_codes[code] += 1
            if not self.ending:
                self.test.result.dropped += 1
            self.test.closed(self)
            if not self.sent_close:
                self.sent_close = True
                self.transport.write(wsframes.masked_frame(wsframes.FIN | wsframes.OP_CLOSE, payload[:2], _mask()))
            self.transport.loseConnection()

    def _text(self, data: bytes, now: float):
        result = self.test.result
        b64 = messages.outbound_media_payload(data)
        if b64 is None:
            try:
                message = messages.parse_outbound(data)
            except messages.MessageError as e:
                result.other_messages[e.reason] += 1
                return
            if not isinstance(message, messages.Media):
                result.other_messages[type(message).__name__.lower()] += 1
                return
            b64 = base64.b64encode(message.payload)
        if len(b64) != PAYLOAD_B64_LEN or b64[ID_B64:] != TAIL_B64:
            result.frames_corrupt += 1
            return
        frame = int.from_bytes(binascii.a2b_base64(b64[:ID_B64]), "big")
        sent = self.outstanding.pop(frame, None)
        if sent is None:
            result.frames_unexpected += 1
            return
        result.frames_echoed += 1
        if sent >= self.test.steady_at:
            result.rtt_ms.append((now - sent) * 1000)

    # The end.

    def end(self):
        """Twilio's ``stop``, then a close handshake; the server may close first (voicebridge does)."""
        self.ending = True
        if self.transport is None or not self.is_open:
            return
        self.sequence += 1
        self.send_text(messages.twilio_stop(self.stream_sid, self.call_sid, "AC" + "0" * 32, self.sequence))
        self._timer = self.test.reactor.callLater(1.0, self._close)

    def _close(self):
        self._timer = None
        if not self.sent_close:
            self.sent_close = True
            self.transport.write(wsframes.masked_frame(wsframes.FIN | wsframes.OP_CLOSE, wsframes.close_payload(1000), _mask()))
        self._timer = self.test.reactor.callLater(2.0, self.transport.abortConnection)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.is_open:
            if not self.done.called:
                self.test.result.handshake_failures["closed-before-response"] += 1
        elif not self.ending and not self.sent_close:
            self.test.result.dropped += 1  # the TCP connection went without a close frame
            self.test.result.close_codes[1006] += 1
        self.test.closed(self)
        if not self.done.called:
            self.done.callback(self)
        self.gone.callback(self)


def _mask() -> bytes:
    # RFC 6455 wants an unpredictable key per frame; random's generator is enough for a load test.
    return random.getrandbits(32).to_bytes(4, "big")


class LoadTest:
    """N calls against one URL: opens them over the ramp, ticks them, ends them, counts."""

    def __init__(self, reactor, options: LoadOptions):
        parts = urlsplit(options.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"{options.url!r} is not a ws:// or wss:// URL")
        if options.calls < 1 or options.duration <= 0:
            raise ValueError("--calls must be at least 1 and --duration positive")
        self.reactor = reactor
        self.options = options
        self.parts = parts
        self.result = LoadResult(url=options.url, calls=options.calls, duration=options.duration)
        self.calls: list[CallClient] = []
        self.slots: list[list[CallClient]] = [[] for _ in range(SLOTS)]
        self.due = [0.0] * SLOTS
        self.steady_at = float("inf")
        self.sending = False
        self._settled = 0
        self._tick_call = None
        self._finished = defer.Deferred()

    def handshake_request(self, key: str) -> bytes:
        path = self.parts.path or "/"
        if self.parts.query:
            path += "?" + self.parts.query
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {self.parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: voicebridge-loadtest",
        ]
        if self.options.signature:
            lines.append(f"X-Twilio-Signature: {self.options.signature}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _say(self, text: str):
        if self.options.progress is not None:
            self.options.progress(text)

    def run(self) -> defer.Deferred:
        """Fires with the LoadResult when every call has ended."""
        ramp = self.options.ramp_seconds()
        self._say(f"opening {self.options.calls} calls over {ramp:.1f} s")
        self._started = time.perf_counter()
        base = time.perf_counter()
        for s in range(SLOTS):
            self.due[s] = base + FRAME_S + s * FRAME_S / SLOTS
        self.sending = True
        for i in range(self.options.calls):
            self.reactor.callLater(ramp * i / self.options.calls, self._connect, i)
        self._schedule_tick()
        return self._finished

    def _connect(self, index: int):
        call = CallClient(self, index)
        self.calls.append(call)
        call.done.addCallback(self._settle)
        endpoint = endpoint_for(self.reactor, self.options.url, timeout=self.options.timeout)
        connecting = connectProtocol(endpoint, call)

        def failed(failure):
            reason = "refused" if failure.check(error.ConnectionRefusedError) else "connect-" + type(failure.value).__name__
            if not call.done.called:
                self.result.handshake_failures[reason] += 1
                call.done.callback(call)

        connecting.addErrback(failed)

    def opened(self, call: CallClient):
        self.result.opened += 1
        self.slots[call.index % SLOTS].append(call)
        call.done.callback(call)

    def closed(self, call: CallClient):
        slot = self.slots[call.index % SLOTS]
        if call in slot:
            slot.remove(call)

    def _settle(self, call):
        self._settled += 1
        if self._settled == self.options.calls:
            self._steady()
        return call

    def _steady(self):
        if self.result.opened == 0:
            self._say("no call opened")
            self.sending = False
            self._finish()
            return
        self.steady_at = time.perf_counter()
        self._cpu_at = _cpu()
        self._say(
            f"all {self.result.opened} calls open after {self.steady_at - self._started:.1f} s "
            f"({sum(self.result.handshake_failures.values())} failed); sending for {self.options.duration:g} s"
        )
        self.reactor.callLater(self.options.duration, self._stop_sending)

    def _schedule_tick(self):
        delay = max(0.0, min(self.due) - time.perf_counter())
        self._tick_call = self.reactor.callLater(delay, self._tick)

    def _tick(self):
        self._tick_call = None
        if not self.sending:
            return
        now = time.perf_counter()
        lags = self.result.send_lag_ms
        steady = now >= self.steady_at
        for s in range(SLOTS):
            due = self.due[s]
            while due <= now:
                calls = self.slots[s]
                if calls:
                    for call in calls:
                        call.send_media(now)
                    self.result.frames_sent += len(calls)
                    if steady:
                        lags.append((now - due) * 1000)
                due += FRAME_S
            self.due[s] = due
        self._schedule_tick()

    def _stop_sending(self):
        self.sending = False
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        elapsed = time.perf_counter() - self.steady_at
        self.result.steady_seconds = elapsed
        self.result.generator_cpu = (_cpu() - self._cpu_at) / elapsed if elapsed > 0 else 0.0
        self._say(f"sending done; waiting up to {self.options.grace:g} s for the last echoes")
        self._grace_until = time.perf_counter() + self.options.grace
        self._await_echoes()

    def _await_echoes(self):
        pending = any(call.outstanding for call in self.calls if call.is_open and call.transport is not None)
        if pending and time.perf_counter() < self._grace_until:
            self.reactor.callLater(0.05, self._await_echoes)
            return
        for call in self.calls:
            call.end()
        ends = [call.gone for call in self.calls if call.transport is not None and not call.gone.called]
        defer.DeferredList(ends).addBoth(lambda _: self._finish())

    def _finish(self):
        if not self._finished.called:
            self._finished.callback(self.result)


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


# The command.


def add_arguments(parser) -> None:
    parser.add_argument("url", metavar="WS_URL", help="the stream URL to load, e.g. ws://127.0.0.1:8080/twilio-media")
    parser.add_argument("--calls", type=int, default=10, help="concurrent simulated calls (default 10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of media once every call is open (default 10)")
    parser.add_argument("--ramp", type=float, default=None, help="seconds over which the calls open (default calls/200)")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to wait for the last echoes (default 2)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds allowed for each handshake (default 10)")
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="the daemon's --public-url: handshakes are signed for its stream URL (default: WS_URL itself)",
    )
    parser.add_argument(
        "--auth-token-file", metavar="FILE", help="sign handshakes with the token in FILE (else TWILIO_AUTH_TOKEN, if set)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def signed_url(url: str, public_url: str | None) -> str:
    """The URL Twilio would have signed: the stream URL the daemon derives from its --public-url."""
    if not public_url:
        return url
    from voicebridge.web.publicurl import PublicURLs, TrustedProxies

    return PublicURLs(public_url, TrustedProxies()).stream_url(None)


def run(args) -> int:
    import orjson
    from twisted.internet import reactor

    from voicebridge.twilio.signatures import SignatureChecker
    from voicebridge.web.publicurl import PublicURLError

    token = os.environ.get("TWILIO_AUTH_TOKEN", "").strip()
    if args.auth_token_file:
        try:
            with open(args.auth_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            print(f"voicebridge loadtest: cannot read --auth-token-file: {e.strerror}", file=sys.stderr)
            return 2
    try:
        signature = SignatureChecker(token).sign(signed_url(args.url, args.public_url)) if token else None
        test = LoadTest(
            reactor,
            LoadOptions(
                url=args.url,
                calls=args.calls,
                duration=args.duration,
                ramp=args.ramp,
                grace=args.grace,
                timeout=args.timeout,
                signature=signature,
                progress=lambda line: print(f"loadtest: {line}", file=sys.stderr, flush=True),
            ),
        )
    except (ValueError, PublicURLError) as e:
        print(f"voicebridge loadtest: {e}", file=sys.stderr)
        return 2
    outcome = {}

    def done(result):
        outcome["result"] = result
        reactor.stop()

    def failed(failure):
        outcome["error"] = failure
        reactor.stop()

    leanloop.install(reactor)
    reactor.callWhenRunning(lambda: test.run().addCallbacks(done, failed))
    reactor.run()
    if "result" not in outcome:
        print(f"voicebridge loadtest: {outcome.get('error')}", file=sys.stderr)
        return 1
    result = outcome["result"]
    if args.json:
        print(orjson.dumps(result.as_dict()).decode())
    else:
        print(result.text())
    return 0 if result.ok else 1
