"""A call: one ``Call`` per media stream, its state from handshake to stop, and what it logs.

The WebSocket protocol only parses frames and hands them here; everything a call *means*
(state, context, handler, counters, what gets logged) lives in this plain object, which
tests with a fake link and a fake clock. The registry of calls is ``voicebridge.call.registry``;
which handler a call gets is decided in ``voicebridge.call.resolve``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from voicebridge.call.closecodes import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED_DATA,
    WEBSOCKET_FAILURES,
)
from voicebridge.call.guards import CallGuards
from voicebridge.call.stats import CALL_OBJECTS
from voicebridge.config.file import NoTenant
from voicebridge.handlers.api import HandlerCall
from voicebridge.observe.logs import loggable_parameters, printable
from voicebridge.twilio import messages

if TYPE_CHECKING:
    from voicebridge.call.registry import CallRegistry

HANDSHAKE = "handshake"
STARTED = "started"
STOPPED = "stopped"

log = Logger(namespace="voicebridge.call")


class Call:
    """One media stream from Twilio: handshake -> started -> stopped.

    ``link`` is the transport side (the WebSocket protocol): ``send_text(bytes)`` and
    ``close(code, reason)``.
    """

    def __init__(self, registry: CallRegistry, link, client: str, query: dict[str, str], conn: int):
        self.registry = registry
        self.link = link
        self.client = client
        self.conn = conn
        self.query = query
        self.state = HANDSHAKE
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.account_sid: str | None = None
        self.parameters: dict[str, str] = {}
        self.tenant = None
        self.handler = None
        self.handler_name: str | None = None
        clock = registry.clock
        self.opened_at = clock.seconds()
        self.start_received = False  # Twilio's start arrived (the call may still have been refused)
        self.started_at: float | None = None  # ... and was accepted: the call is STARTED
        self.ended_at: float | None = None
        self.frames_in = self.frames_out = 0
        self.bytes_in = self.bytes_out = 0
        self.dtmf_in = self.marks_in = self.marks_out = 0
        self.errors: Counter = Counter()
        self.end_reason: str | None = None
        self.close_code: int | None = None
        self.finished = defer.Deferred()
        self._stop_done: defer.Deferred | None = None
        # The raw frame being dispatched, while it is dispatched: always before ``start`` (so
        # ``connected`` and ``start`` are kept as received, in ``opening_frames``), and after it
        # only for a handler with ``wants_frames`` (a relay forwards Twilio's frames byte for byte).
        self.frame: bytes | None = None
        self.opening_frames: list[bytes] = []
        self.keeps_frames = False
        self.guards = CallGuards(self, registry.limits, clock)
        self._seconds = clock.seconds
        CALL_OBJECTS.add(self)
        self._dispatch = {  # plain functions, not bound methods: no cycle back to this call
            messages.Media: Call._on_media,
            messages.Connected: Call._on_connected,
            messages.Start: Call._on_start,
            messages.Dtmf: Call._on_dtmf,
            messages.Mark: Call._on_mark,
            messages.Stop: Call._on_stop,
            messages.Unknown: Call._on_unknown,
        }

    @property
    def live(self) -> bool:
        """Started and not yet stopped: what a handler sends now reaches Twilio."""
        return self.state == STARTED

    # What log lines about this call carry.
    @property
    def ids(self) -> dict:
        """The SID is the peer's text: escaped, so a newline in it cannot forge a log line."""
        return {"callSid": printable(self.call_sid, 64), "conn": self.conn}

    def __repr__(self):
        return f"<Call conn={self.conn} callSid={self.call_sid} state={self.state}>"

    # Events from the link.

    def opened(self) -> None:
        self.guards.opened()
        log.info(
            "stream handshake accepted conn={conn} client={client}",
            event_name="handshake.accepted",
            client=self.client,
            **self.ids,
        )
        if self.query:
            log.warn(
                "stream url carried a query string {query}: Twilio refuses stream urls with one "
                "(error 31920); its values are merged into the call's parameters, use <Parameter>s instead",
                event_name="stream.query_string",
                query=printable(str(sorted(self.query))),
                **self.ids,
            )

    def text_received(self, data: bytes) -> None:
        if self.state == STARTED and not self.keeps_frames:
            # The hot path: this call's media frame in Twilio's shape. Everything else, and
            # every mistake, goes the full way below.
            fields = messages.media_fields(data, self.stream_sid)
            if fields is not None:
                self._media(fields[1], fields[2])
                return
        self.frame = data
        try:
            try:
                message = messages.parse(data)
            except messages.MessageError as e:
                self.protocol_error(e.reason, e.detail)
                return
            self._dispatch[type(message)](self, message)
        finally:
            self.frame = None

    def binary_received(self, size: int) -> None:
        """Twilio sends only text frames (a binary frame is its warning 31950)."""
        self.protocol_error("binary-frame", f"a binary frame of {size} bytes; Media Streams use text frames only")
        self.end_reason = self.end_reason or "binary-frame"
        self.link.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not part of Media Streams")

    def connection_lost(self, code: int | None, reason: str | None, failed: bool = False) -> None:
        """``failed``: the WebSocket layer closed because the peer broke WebSocket itself (1002, 1007, 1009)."""
        self.close_code = code
        if failed and code in WEBSOCKET_FAILURES:
            self.protocol_error(WEBSOCKET_FAILURES[code], printable(reason, 200))
            self.end_reason = self.end_reason or WEBSOCKET_FAILURES[code]
        if self.state != STOPPED:
            self._end(self.end_reason or "closed")
        self.ended_at = self.registry.clock.seconds()
        self.registry.closed(self)
        duration = self.ended_at - (self.started_at or self.opened_at)
        log.info(
            "call ended callSid={callSid} conn={conn} reason={reason} duration={duration:.1f}s "
            "frames_in={frames_in} frames_out={frames_out} close_code={close_code} errors={error_summary}",
            event_name="call.ended",
            reason=self.end_reason,
            duration=duration,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            close_code=code,
            close_reason=printable(reason),
            error_summary=dict(self.errors) or "none",
            **self.ids,
        )
        done = self._stop_done or defer.succeed(None)
        done.addBoth(self._finish)

    def _finish(self, _) -> None:
        self.finished.callback(None)
        self._release()

    def _release(self) -> None:
        """Break the cycles a call is made of (its handler, guards and watchers point
        back at it), once it has ended and its handler has stopped: the call, its handler and what
        they hold are then freed at once by reference counting, not whenever the cycle collector
        runs (measured: RSS flat under churn, docs/benchmarks.md#soak)."""
        self.handler = None
        self.guards.call = None
        for name in ("send_audio", "send_mark", "clear", "forward", "_watchers"):
            self.__dict__.pop(name, None)

    def protocol_error(self, reason: str, detail: str) -> None:
        """Counted always, logged once per call and reason: a misbehaving peer cannot flood the log."""
        self.errors[reason] += 1
        if self.errors[reason] == 1:
            log.warn(
                "protocol error callSid={callSid} conn={conn} reason={reason}: {detail}",
                event_name="call.protocol_error",
                reason=reason,
                detail=printable(detail, 200),
                **self.ids,
            )

    # Messages from Twilio.

    def _on_connected(self, message: messages.Connected) -> None:
        if self.frame is not None and self.state == HANDSHAKE and not self.opening_frames:
            self.opening_frames.append(self.frame)
        log.debug(
            "connected protocol={protocol} version={version}",
            event_name="call.connected",
            protocol=printable(message.protocol, 40),
            version=printable(message.version, 40),
            **self.ids,
        )

    def _on_start(self, message: messages.Start) -> None:
        if self.state != HANDSHAKE:
            self.protocol_error("duplicate-start", f"start for {message.stream_sid} while {self.state}")
            return
        self.stream_sid = message.stream_sid
        self.call_sid = message.call_sid
        self.account_sid = message.account_sid
        self.parameters = {**self.query, **message.custom_parameters}
        if self.frame is not None:
            self.opening_frames.append(self.frame)
        self.start_received = True
        try:
            tenant, handler_name, handler_cls, options = self.registry.route(self.parameters)
        except NoTenant as e:
            log.warn(
                "call refused callSid={callSid}: {reason}",
                event_name="call.no_tenant",
                reason=e.describe(self.registry.show_numbers),
                parameters=loggable_parameters(self.parameters, self.registry.show_numbers),
                **self.ids,
            )
            self._end("refused")  # frames still in flight are the ended call's, not protocol errors
            self.link.close(CLOSE_POLICY, "no tenant for this call")
            return
        self.tenant = tenant
        over = self.registry.capacity.admit_start(self.call_sid, tenant)
        if over is not None:
            self.exceeded("tenant-limit", over, event_name="call.over_limit")
            return
        self.state = STARTED
        self.registry.census_changed()
        self.started_at = self.registry.clock.seconds()
        self.guards.started()
        self.handler_name = handler_name
        try:
            registry = self.registry
            surface = HandlerCall(self, registry.clock, registry.connect_actions, registry.settings.auth_token)
            self.handler = handler_cls(surface, options)
        except Exception:
            self.handler = None
            self.errors["handler-error"] += 1
            log.failure(
                "handler {handler} could not be created for callSid={callSid}; hanging up",
                event_name="call.handler_error",
                handler=handler_name,
                method="__init__",
                **self.ids,
                level=LogLevel.error,
            )
            self._end("error")  # ended before the frames in flight arrive: they are dropped quietly
            self.link.close(CLOSE_INTERNAL_ERROR, "no handler for this call")
            return
        self.keeps_frames = bool(self.handler.wants_frames)
        log.info(
            "call started callSid={callSid} streamSid={streamSid} tenant={tenant} handler={handler} "
            "tracks={tracks} format={media_format} parameters={parameters}",
            event_name="call.started",
            streamSid=printable(self.stream_sid, 64),
            tenant=self.tenant.id if self.tenant else "-",
            handler=self.handler_name,
            tracks=printable(",".join(message.tracks), 80),
            media_format=message.media_format,
            parameters=loggable_parameters(self.parameters, self.registry.show_numbers),
            **self.ids,
        )
        self._handler("on_start", message)
        self.opening_frames = []  # a handler that wants them took them in on_start

    def _check_stream(self, message, event: str) -> bool:
        if self.state == STOPPED and self.end_reason != "stop":
            return False  # in flight when this side ended the call: expected, not the peer's fault
        if self.state != STARTED:
            self.protocol_error(
                f"{event}-{'before-start' if self.state == HANDSHAKE else 'after-stop'}", f"{event} while {self.state}"
            )
            return False
        if message.stream_sid != self.stream_sid:
            self.protocol_error(
                "foreign-stream-sid", f"{event} for streamSid {message.stream_sid!r:.40}, this stream is {self.stream_sid}"
            )
            return False
        return True

    def _on_media(self, message: messages.Media) -> None:
        if self.state != STARTED or message.stream_sid != self.stream_sid:
            self._check_stream(message, "media")
            return
        self._media(message.payload, message.timestamp)

    def _media(self, audio: bytes, timestamp: int) -> None:
        self.frames_in += 1
        self.bytes_in += len(audio)
        self.guards.last_media = self._seconds()
        try:
            self.handler.on_media(audio, timestamp)
        except Exception:
            self._handler_failed("on_media")

    def _on_dtmf(self, message: messages.Dtmf) -> None:
        if self._check_stream(message, "dtmf"):
            self.dtmf_in += 1
            log.info(
                "dtmf callSid={callSid} digit={digit}", event_name="call.dtmf", digit=printable(message.digit, 4), **self.ids
            )
            self._handler("on_dtmf", message.digit)

    def _on_mark(self, message: messages.Mark) -> None:
        if self._check_stream(message, "mark"):
            self.marks_in += 1
            self._handler("on_mark", message.name)

    def _on_stop(self, message: messages.Stop) -> None:
        if self._check_stream(message, "stop"):
            self._end("stop")
            self._stop_done.addBoth(lambda _: self.link.close(CLOSE_NORMAL, "stream stopped"))

    def _on_unknown(self, message: messages.Unknown) -> None:
        # Twilio adds events over time: note it, ignore it.
        self.protocol_error("unknown-event", f"event {message.event!r} is not known to this version; ignored")

    # What handlers call.

    def send_audio(self, audio: bytes) -> None:
        if self.state != STARTED:
            return
        self.frames_out += 1
        self.bytes_out += len(audio)
        self._send(messages.media(self.stream_sid, audio))

    def send_mark(self, name: str) -> None:
        if self.state == STARTED:
            self.marks_out += 1
            self._send(messages.mark(self.stream_sid, name))

    def clear(self) -> None:
        if self.state == STARTED:
            self._send(messages.clear(self.stream_sid))

    def forward(self, message, data: bytes) -> None:
        """Send Twilio a frame an application built, byte for byte (a relay does); ``message`` is
        ``messages.parse_outbound(data)``, for the counters. The caller checks the streamSid."""
        if self.state != STARTED:
            return
        kind = type(message)
        if kind is messages.Media:
            self.frames_out += 1
            self.bytes_out += len(message.payload)
        elif kind is messages.Mark:
            self.marks_out += 1
        self._send(data)

    def watch_outbound(self, watcher) -> None:
        """Let ``watcher`` hear what this call sends Twilio: ``sent_audio(audio)``, ``sent_mark(name)``, ``sent_clear()``.

        A recorder uses it. The watching variants replace the plain methods on this call only, so
        calls nobody watches pay nothing on their hot path.
        """
        self._watchers = (*self.__dict__.get("_watchers", ()), watcher)
        self.send_audio = self._send_audio_watched
        self.send_mark = self._send_mark_watched
        self.clear = self._clear_watched
        self.forward = self._forward_watched

    # Each checks the state again after sending: the send may have ended the call (a slow reader),
    # and a watcher must not hear what was never sent once it began stopping.

    def _send_audio_watched(self, audio: bytes) -> None:
        if self.state == STARTED:
            Call.send_audio(self, audio)
            if self.state != STARTED:
                return
            for watcher in self._watchers:
                watcher.sent_audio(audio)

    def _send_mark_watched(self, name: str) -> None:
        if self.state == STARTED:
            Call.send_mark(self, name)
            if self.state != STARTED:
                return
            for watcher in self._watchers:
                watcher.sent_mark(name)

    def _clear_watched(self) -> None:
        if self.state == STARTED:
            Call.clear(self)
            if self.state != STARTED:
                return
            for watcher in self._watchers:
                watcher.sent_clear()

    def _forward_watched(self, message, data: bytes) -> None:
        if self.state == STARTED:
            Call.forward(self, message, data)
            if self.state != STARTED:
                return
            kind = type(message)
            for watcher in self._watchers:
                if kind is messages.Media:
                    watcher.sent_audio(message.payload)
                elif kind is messages.Mark:
                    watcher.sent_mark(message.name)
                elif kind is messages.Clear:
                    watcher.sent_clear()

    def hangup(self, reason: str = "hangup", code: int = CLOSE_NORMAL) -> None:
        """End the call: closing the stream makes Twilio leave <Connect> and, with nothing after it, hang up."""
        if self.end_reason is None:
            self.end_reason = reason
        self.link.close(code, reason)

    def exceeded(self, reason: str, detail: str, event_name: str = "call.timeout") -> None:
        """A bound was crossed (a timeout, the send buffer, a tenant's limit): end the call now, close with 1008."""
        if self.state == STOPPED:
            return
        log.warn(
            "closing callSid={callSid} conn={conn} reason={reason}: {detail}",
            event_name=event_name,
            reason=reason,
            detail=detail,
            **self.ids,
        )
        self._end(reason)
        self.link.close(CLOSE_POLICY, f"{reason}: {detail}")

    # Internals.

    def _send(self, data: bytes) -> None:
        if self.guards.paused and not self.guards.queue(len(data)):
            return
        self.link.send_text(data)

    def _end(self, reason: str) -> None:
        self.guards.ended()
        if self.end_reason is None:
            self.end_reason = reason
        was_started = self.state == STARTED
        self.state = STOPPED
        self.registry.census_changed()
        if was_started and self.handler is not None:
            self._stop_done = defer.maybeDeferred(self.handler.on_stop, self.end_reason)
            self._stop_done.addErrback(
                lambda f: log.failure(
                    "handler {handler} failed to stop callSid={callSid}",
                    f,
                    event_name="call.handler_error",
                    handler=self.handler_name,
                    method="on_stop",
                    **self.ids,
                    level=LogLevel.error,
                )
            )
        else:
            self._stop_done = defer.succeed(None)

    def _handler(self, method: str, *args) -> None:
        try:
            getattr(self.handler, method)(*args)
        except Exception:
            self._handler_failed(method)

    def _handler_failed(self, method: str) -> None:
        self.errors["handler-error"] += 1
        log.failure(
            "handler {handler}.{method} failed callSid={callSid}; hanging up",
            event_name="call.handler_error",
            handler=self.handler_name,
            method=method,
            **self.ids,
            level=LogLevel.error,
        )
        if self.end_reason is None:
            self.end_reason = "error"
        self.link.close(CLOSE_INTERNAL_ERROR, "handler error")
