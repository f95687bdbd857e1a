"""``relay``: voicebridge in front of an existing Twilio Media Streams application, which needs no change.

For each call the relay opens a WebSocket to the application (``url``) and passes Twilio's frames
to it byte for byte (``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``), and the
application's ``media``, ``mark`` and ``clear`` back to Twilio byte for byte. To the application
it looks as if Twilio had connected; with an auth token configured the handshake even carries an
``X-Twilio-Signature`` for the application's URL, so an application that checks them keeps working.

- ``wss://`` is verified (``service_identity``), against the system's roots or ``ca_file``.
- ``connect_timeout`` bounds the TCP connection, ``handshake_timeout`` the TLS and WebSocket
  handshakes after it (a refused or stalled handshake would otherwise never end).
- Frames from Twilio that arrive while the connection opens, or while the application does not
  read (its socket's buffers are full: Twisted pauses us as a producer), wait in a queue of at most
  ``max_pending`` frames (default 600, 12 s of audio, about 200 KB: more than the default connect
  and handshake timeouts together, so those name a slow start first). An application that lets the
  queue fill has stalled: the relay gives up on it, as on any failure.
- Failure (no connection, refused handshake, timeouts, the application's socket closing with
  anything but a normal 1000 close, a stall) ends the stream and applies ``fallback``: ``hangup``,
  or ``say``: Twilio is told to say ``message`` and hang up, through ``<Connect action>``. The
  reason is logged (``relay.failed``). An application that closes with 1000 ended the call on
  purpose: the stream ends, as it would with Twilio.
- What the application sends is checked the way Twilio would: only text ``media``, ``mark`` and
  ``clear`` for this call's streamSid pass; anything else is dropped, counted, and logged once per
  reason (``call.protocol_error`` with an ``upstream-`` reason).
"""

from __future__ import annotations

from collections import deque
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from voicebridge.handlers.api import USER_AGENT, Handler, Logger, endpoint_for, load_trust_root, printable, redact_url
from voicebridge.twilio import messages

log = Logger(namespace="voicebridge.relay")

DEFAULT_MESSAGE = "Sorry, this call cannot be connected right now. Please try again later."
FALLBACKS = ("hangup", "say")
OPTIONS = {"url", "connect_timeout", "handshake_timeout", "fallback", "message", "ca_file", "max_pending"}
DEFAULTS = {"connect_timeout": 5.0, "handshake_timeout": 5.0, "max_pending": 600}
MAX_MESSAGE_SIZE = 1024 * 1024  # from the application; Twilio takes media "of any size"
CLOSE_GRACE = 5.0  # after Twilio's stop: time for queued frames and the close handshake

CONNECTING, OPEN, CLOSING, DONE, FAILED = "connecting", "open", "closing", "done", "failed"


def _seconds(options: dict, key: str) -> float:
    value = options.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        raise ValueError(f"{key}: expected seconds between 0 and 300, got {value!r}")
    return float(value)


def check_url(url) -> str:
    if not url:
        raise ValueError("url: required: the application's media stream URL, ws:// or wss:// (--relay-url)")
    if not isinstance(url, str):
        raise ValueError(f"url: expected a ws:// or wss:// URL, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"url: {url!r} is not a ws:// or wss:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("url: must not carry credentials (user:password@)")
    if parts.fragment:
        raise ValueError(f"url: {url!r} has a fragment")
    try:
        parts.port  # noqa: B018  (raises for a port out of range)
    except ValueError as e:
        raise ValueError(f"url: {e}") from None
    return url


@implementer(IPushProducer)
class RelayHandler(Handler):
    wants_frames = True

    @classmethod
    def check_options(cls, options: dict) -> dict:
        unknown = set(options) - OPTIONS
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(OPTIONS))})")
        fallback = options.get("fallback", "say" if options.get("message") else "hangup")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback: {fallback!r} is not one of {', '.join(FALLBACKS)}")
        message = options.get("message", DEFAULT_MESSAGE)
        if not isinstance(message, str) or not message.strip() or len(message) > 1000:
            raise ValueError("message: expected the text to say, 1 to 1000 characters")
        max_pending = options.get("max_pending", DEFAULTS["max_pending"])
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or not 1 <= max_pending <= 100_000:
            raise ValueError(f"max_pending: expected a number of frames from 1 to 100000, got {max_pending!r}")
        checked = {
            "url": check_url(options.get("url")),
            "connect_timeout": _seconds(options, "connect_timeout"),
            "handshake_timeout": _seconds(options, "handshake_timeout"),
            "fallback": fallback,
            "message": message.strip(),
            "max_pending": max_pending,
        }
        ca_file = options.get("ca_file")
        if ca_file is not None:
            if not isinstance(ca_file, str):
                raise ValueError("ca_file: expected the path of a PEM file")
            checked["ca_file"] = ca_file
            checked["trust_root"] = load_trust_root(ca_file)
        return checked

    @classmethod
    def uses_connect_action(cls, options: dict) -> bool:
        return options["fallback"] == "say"

    @classmethod
    def close_grace(cls, options: dict) -> float:
        return CLOSE_GRACE

    def __init__(self, call, options: dict):
        super().__init__(call, options)
        self.reactor = call.clock
        self.url = options["url"]
        self.state: str | None = None
        self.upstream: UpstreamProtocol | None = None
        self.pending: deque[bytes] = deque()
        self.paused = False
        self.frames_up = self.frames_down = 0
        self.opened_after: float | None = None
        self._connecting: defer.Deferred | None = None
        self._handshake_timer = None
        self._close_timer = None
        self._gone = defer.Deferred()  # fires once no connection to the application is left
        self.started_connecting: float | None = None

    # Twilio -> the application.

    def on_start(self, start) -> None:
        self.state = CONNECTING
        for frame in self.call.opening_frames:
            self._up(frame)
        self._connect()

    def on_media(self, audio: bytes, timestamp: int) -> None:
        self._up(self.call.frame)

    def on_dtmf(self, digit: str) -> None:
        self._up(self.call.frame)

    def on_mark(self, name: str) -> None:
        self._up(self.call.frame)

    def on_stop(self, reason: str):
        if reason == "stop":
            self._up(self.call.frame)  # Twilio's stop, for the application
        if self.state == OPEN:
            self.state = CLOSING
            self._close_timer = self.reactor.callLater(CLOSE_GRACE, self._abort)
            self._close_when_flushed()
        elif self.state == CONNECTING:
            self.state = DONE
            self.pending.clear()
            self._abort()
        if self._gone.called or self.state is None:
            return None
        waiting = defer.Deferred()
        self._gone.addBoth(lambda result: waiting.callback(None) or result)
        return waiting

    def _up(self, frame: bytes | None) -> None:
        if frame is None:
            return
        if self.state == OPEN and not self.paused and not self.pending:
            self.upstream.sendMessage(frame, isBinary=False)
            self.frames_up += 1
        elif self.state in (CONNECTING, OPEN, CLOSING):
            if len(self.pending) >= self.options["max_pending"]:
                waited = "to open" if self.state == CONNECTING else "to read"
                self._fail("upstream-stalled", f"{len(self.pending)} frames waited for the application {waited}")
                return
            self.pending.append(frame)

    def _flush(self) -> None:
        while self.pending and not self.paused and self.state in (OPEN, CLOSING):
            self.upstream.sendMessage(self.pending.popleft(), isBinary=False)
            self.frames_up += 1
        if self.state == CLOSING:
            self._close_when_flushed()

    def _close_when_flushed(self) -> None:
        if not self.pending and self.upstream is not None:
            self.upstream.sendClose(1000, "twilio stream ended")

    # The connection.

    def _connect(self) -> None:
        options = self.options
        headers = {}
        signature = self.call.twilio_signature(self.url)
        if signature:
            headers["X-Twilio-Signature"] = signature
        factory = UpstreamFactory(self.url, headers=headers, useragent=f"{USER_AGENT} relay", reactor=self.reactor)
        factory.relay = self
        factory.setProtocolOptions(
            openHandshakeTimeout=0,  # ours, below, also covers TLS
            closeHandshakeTimeout=CLOSE_GRACE,
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            autoPingInterval=20,
            autoPingTimeout=20,
        )
        self.started_connecting = self.reactor.seconds()
        log.info(
            "relay callSid={callSid} connecting to {url}",
            event_name="relay.connecting",
            url=redact_url(self.url),
            **self.call.ids,
        )
        endpoint = endpoint_for(self.reactor, self.url, options.get("trust_root"), timeout=options["connect_timeout"])
        self._connecting = endpoint.connect(factory)
        self._connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, protocol) -> None:
        self._connecting = None
        if self.state != CONNECTING:
            protocol.dropConnection(abort=True)
            return
        self.upstream = protocol
        self._handshake_timer = self.reactor.callLater(self.options["handshake_timeout"], self._handshake_timed_out)

    def _connect_failed(self, failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError) or self.state != CONNECTING:
            self._gone_now()
            return
        detail = str(failure.value)
        if failure.check(error.ConnectionRefusedError):
            reason = "connect-refused"
        elif failure.check(error.TimeoutError, defer.TimeoutError):
            reason = "connect-timeout"
            # Twisted says only "User timeout caused connection failure."
            detail = f"no TCP connection within {self.options['connect_timeout']:g}s (connect_timeout)"
        elif failure.check(error.DNSLookupError):
            reason = "dns-failed"
        else:
            reason = "connect-failed"
        self._fail(reason, detail)
        self._gone_now()

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self._fail("handshake-timeout", f"no TLS and WebSocket handshake within {self.options['handshake_timeout']:g}s")

    def opened(self, protocol) -> None:
        self._cancel_timer("_handshake_timer")
        if self.state != CONNECTING:
            protocol.dropConnection(abort=True)
            return
        self.state = OPEN
        self.opened_after = self.reactor.seconds() - self.started_connecting
        protocol.registerProducer(self, True)
        log.info(
            "relay callSid={callSid} connected to {url} in {ms:.0f} ms; {pending} frame(s) were waiting",
            event_name="relay.open",
            url=redact_url(self.url),
            ms=self.opened_after * 1000,
            pending=len(self.pending),
            **self.call.ids,
        )
        self._flush()

    def closed(self, protocol, was_clean: bool, code: int | None, reason: str | None) -> None:
        for timer in ("_handshake_timer", "_close_timer"):
            self._cancel_timer(timer)
        state, self.upstream = self.state, None
        if state == CONNECTING:
            self._fail(*classify_handshake_failure(protocol.lost_reason, reason or ""))
        elif state == OPEN:
            if was_clean and code == 1000:
                self.state = DONE
                self._log_closed("the application closed the stream (1000)", code, reason)
                self.call.hangup("upstream-closed")
            else:
                self._fail("upstream-closed", f"the application's socket closed with {code}: {reason}")
        elif state == CLOSING:
            self.state = DONE
            self._log_closed("twilio's stream ended", code, reason)
        self._gone_now()

    # Backpressure: Twisted pauses us while the application's socket buffers are full.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.paused = True

    # The application -> Twilio.

    def from_upstream(self, payload: bytes, is_binary: bool) -> None:
        if self.state not in (OPEN, CLOSING):
            return
        call = self.call
        if is_binary:
            call.protocol_error("upstream-binary-frame", f"the application sent a binary frame of {len(payload)} bytes")
            return
        try:
            message = messages.parse_outbound(payload)
        except messages.MessageError as e:
            call.protocol_error(f"upstream-{e.reason}", e.detail)
            return
        if type(message) is messages.Unknown:
            call.protocol_error(
                "upstream-unknown-event", f"the application sent event {message.event!r}; Twilio takes media, mark, clear"
            )
            return
        if message.stream_sid != call.stream_sid:
            call.protocol_error(
                "upstream-foreign-stream-sid",
                f"the application sent {type(message).__name__.lower()} for streamSid {message.stream_sid!r:.40}, "
                f"this stream is {call.stream_sid}; dropped, as Twilio would refuse it",
            )
            return
        self.frames_down += 1
        call.forward(message, payload)

    # Failure and the end.

    def _fail(self, reason: str, detail: str) -> None:
        if self.state in (FAILED, DONE):
            return
        self.state = FAILED
        self.pending.clear()
        fallback = self.options["fallback"]
        call = self.call
        log.warn(
            "relay callSid={callSid} to {url} failed: {reason} ({detail}); fallback: {fallback}",
            event_name="relay.failed",
            url=redact_url(self.url),
            reason=reason,
            detail=printable(detail, 300),
            fallback=fallback,
            frames_up=self.frames_up,
            frames_down=self.frames_down,
            **call.ids,
        )
        self._abort()
        if call.live:
            if fallback == "say":
                call.say_and_hang_up(self.options["message"], reason, "relay-failed")
            else:
                call.hangup("relay-failed")

    def _abort(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.upstream is not None:
            self.upstream.dropConnection(abort=True)

    def _gone_now(self) -> None:
        if not self._gone.called:
            self._gone.callback(None)

    def _cancel_timer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _log_closed(self, why: str, code, reason) -> None:
        log.info(
            "relay callSid={callSid} closed: {why}; {frames_up} frame(s) up, {frames_down} down",
            event_name="relay.closed",
            why=why,
            code=code,
            close_reason=printable(reason),
            frames_up=self.frames_up,
            frames_down=self.frames_down,
            **self.call.ids,
        )


def classify_handshake_failure(lost, text: str) -> tuple[str, str]:
    """(reason, detail) for a connection that closed before the WebSocket opened.

    ``lost`` is the transport's own reason: a certificate the TLS layer refused (untrusted chain,
    or service_identity's host name check) shows there, while Autobahn's text says only "dropped".
    """
    if lost is not None and lost.check(VerificationError, SSL.Error):
        return "tls-failed", f"{text}: {lost.value!r}"
    if "upgrade failed" in text:
        return "handshake-refused", text
    if "SSL" in text or "TLS" in text or "certificate" in text:
        return "tls-failed", text
    return "handshake-failed", text


class UpstreamProtocol(WebSocketClientProtocol):
    """The relay's connection to the application: frames in and out, nothing else."""

    lost_reason = None

    def connectionLost(self, reason):
        self.lost_reason = reason
        super().connectionLost(reason)

    def onOpen(self):
        self.factory.relay.opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.relay.from_upstream(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.factory.relay.closed(self, wasClean, code, reason)


class UpstreamFactory(WebSocketClientFactory):
    protocol = UpstreamProtocol
    relay: RelayHandler | None = None
