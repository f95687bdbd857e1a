"""Twilio's side of a call, simulated: what the probe, the tests and operators use to play Twilio.

It opens the stream the way Twilio does (signed handshake, ``connected``, ``start`` with the
custom parameters, 20 ms ``media`` frames, ``stop``) and records what the application sends back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task

from voicebridge.net.wsclient import endpoint_for
from voicebridge.twilio import messages

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_MS = 20


def tone_frame(index: int) -> bytes:
    """A distinct, recognisable 160-byte frame per index, so echoes can be matched one by one."""
    head = index.to_bytes(4, "big")
    return head + bytes((index * 7 + i) & 0xFF for i in range(FRAME_BYTES - 4))


def new_sid(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


@dataclass
class CallScript:
    """What the simulated Twilio does on one stream."""

    frames: int = 50
    interval: float = FRAME_MS / 1000
    custom_parameters: dict = field(default_factory=dict)
    dtmf: str = ""
    marks: tuple = ()
    send_stop: bool = True
    linger: float = 0.5  # how long to wait for the last echoes before ``stop``
    announce: bool = True  # send ``connected`` and ``start`` once open
    close_after: float | None = None  # once done (after ``stop``), close from Twilio's side if the app has not
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    frame: object = tone_frame
    lost: frozenset = frozenset()  # frame numbers never sent, as if lost: Twilio skips their timestamps
    # Marks are returned at once (as if played instantly); with mark_limit only the first N are, the
    # rest are held as if still playing, until a ``clear`` returns them all at once, as Twilio does.
    mark_limit: int | None = None


@dataclass
class CallOutcome:
    opened: bool = False
    sent: list = field(default_factory=list)
    received: list = field(default_factory=list)
    received_at: list = field(default_factory=list)
    sent_at: list = field(default_factory=list)
    sent_frames: list = field(default_factory=list)  # every text frame sent, as sent
    received_frames: list = field(default_factory=list)  # every text frame received, as received
    marks: list = field(default_factory=list)
    # (mark name, caller frames sent when it was returned, whether a clear returned it)
    marks_returned: list = field(default_factory=list)
    held_marks: list = field(default_factory=list)
    clears: int = 0
    foreign: list = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    was_clean: bool | None = None
    closed_by_server: bool | None = None
    # The opening handshake as the application answered it (status 101 when it opened).
    handshake_status: int | None = None
    handshake_headers: dict = field(default_factory=dict)
    handshake_body: bytes = b""  # what came with the head of a refusal (maybe not all of it)
    handshake_error: str | None = None
    stop_sent: bool = False
    opened_at: float | None = None
    closed_at: float | None = None


class SimulatedTwilio(WebSocketClientProtocol):
    """One call, played as Twilio plays it. The factory carries the script; ``done`` gets the outcome."""

    def onConnect(self, response):
        self.outcome.handshake_status = 101
        self.outcome.handshake_headers = dict(response.headers)

    def failHandshake(self, reason):
        """The application answered the upgrade with something else than 101: keep what it said."""
        status_line = getattr(self, "http_status_line", None) or ""
        parts = status_line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            self.outcome.handshake_status = int(parts[1])
        self.outcome.handshake_headers = dict(getattr(self, "http_headers", None) or {})
        head_end = self.data.find(b"\r\n\r\n")
        if head_end >= 0:
            self.outcome.handshake_body = bytes(self.data[head_end + 4 : head_end + 4 + 4096])
        self.outcome.handshake_error = reason
        return super().failHandshake(reason)

    def onOpen(self):
        script: CallScript = self.factory.script
        self.outcome.opened = True
        self.outcome.opened_at = self.factory.reactor.seconds()
        self.sequence = 0
        if script.announce:
            self._send(messages.twilio_connected())
            self._send(
                messages.twilio_start(
                    script.stream_sid, script.call_sid, script.account_sid, script.custom_parameters, self._seq()
                )
            )
        self._frame = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.factory.reactor
        self._loop.start(script.interval, now=True).addErrback(lambda _: None)

    def _seq(self) -> int:
        """Twilio numbers every message it sends on a stream."""
        self.sequence += 1
        return self.sequence

    def _send(self, data: bytes):
        self.outcome.sent_frames.append(data)
        self.sendMessage(data, isBinary=False)

    def _tick(self):
        script: CallScript = self.factory.script
        if self.state != self.STATE_OPEN:
            self._loop.stop()
            return
        while self._frame in script.lost:
            self._frame += 1
        if self._frame < script.frames:
            audio = script.frame(self._frame)
            self.outcome.sent.append(audio)
            self.outcome.sent_at.append(self.factory.reactor.seconds())
            ts = self._frame * FRAME_MS
            chunk = self._frame + 1
            self._send(messages.twilio_media(script.stream_sid, audio, chunk, ts, self._seq()))
            self._frame += 1
            return
        self._loop.stop()
        for digit in script.dtmf:
            self._send(messages.twilio_dtmf(script.stream_sid, digit, self._seq()))
        for name in script.marks:
            self._send(messages.twilio_mark(script.stream_sid, name, self._seq()))
        if script.send_stop:
            self._stop_call = self.factory.reactor.callLater(script.linger, self._stop)
        elif script.close_after is not None:
            self._stop_call = self.factory.reactor.callLater(script.close_after, self._hang_up)

    def _stop(self):
        script: CallScript = self.factory.script
        if self.state == self.STATE_OPEN:
            self._send(messages.twilio_stop(script.stream_sid, script.call_sid, script.account_sid, self._seq()))
            self.outcome.stop_sent = True
            if script.close_after is not None:
                self._stop_call = self.factory.reactor.callLater(script.close_after, self._hang_up)

    def _hang_up(self):
        """Twilio closes the socket itself after ``stop`` when the application does not."""
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)

    def onMessage(self, payload, isBinary):
        self.outcome.received_frames.append(payload)
        try:
            message = messages.parse_outbound(payload)
        except messages.MessageError as e:
            self.outcome.foreign.append(e.reason)
            return
        kind = type(message)
        if kind is messages.Media:
            self.outcome.received.append(message.payload)
            self.outcome.received_at.append(self.factory.reactor.seconds())
        elif kind is messages.Mark:
            self.outcome.marks.append(message.name)
            limit = self.factory.script.mark_limit
            if limit is not None and (len(self.outcome.marks_returned) >= limit or self.outcome.held_marks):
                self.outcome.held_marks.append(message.name)  # still "playing"
            else:
                # Twilio answers a mark once the audio before it has played; here, at once.
                self._return_mark(message.name, False)
        elif kind is messages.Clear:
            self.outcome.clears += 1
            held, self.outcome.held_marks = self.outcome.held_marks, []
            for name in held:  # a clear drops the queued audio and returns its marks at once
                self._return_mark(name, True)
        else:
            self.outcome.foreign.append(getattr(message, "event", kind.__name__))

    def _return_mark(self, name: str, cleared: bool) -> None:
        self.outcome.marks_returned.append((name, len(self.outcome.sent), cleared))
        self._send(messages.twilio_mark(self.factory.script.stream_sid, name, self._seq()))

    def onClose(self, wasClean, code, reason):
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.running:
            loop.stop()
        stop_call = getattr(self, "_stop_call", None)
        if stop_call is not None and stop_call.active():
            stop_call.cancel()
        self.outcome.was_clean = wasClean
        self.outcome.closed_at = self.factory.reactor.seconds()
        if self.outcome.handshake_error is None and not self.outcome.opened:
            self.outcome.handshake_error = self.wasNotCleanReason or reason
        self.outcome.close_code = self.remoteCloseCode if self.remoteCloseCode is not None else code
        self.outcome.close_reason = reason
        self.outcome.closed_by_server = not self.closedByMe
        done, self.factory.done = self.factory.done, None
        if done is not None:
            done.callback(self.outcome)


class _Factory(WebSocketClientFactory):
    protocol = SimulatedTwilio

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        proto.outcome = self.outcome
        return proto


def play_call(
    reactor,
    stream_url: str,
    script: CallScript,
    signature: str | None = None,
    headers: dict | None = None,
    trust_root=None,
    connect_to=None,
    timeout: float = 10,
    tls_options=None,
    outcome: CallOutcome | None = None,
) -> defer.Deferred:
    """Play one call against ``stream_url``; fires with a CallOutcome (or fails if no TCP/TLS connection).

    ``outcome``: the CallOutcome to fill, for a test that watches the call as it goes.
    """
    all_headers = dict(headers or {})
    if signature is not None:
        all_headers["X-Twilio-Signature"] = signature
    factory = _Factory(stream_url, headers=all_headers)
    factory.setProtocolOptions(openHandshakeTimeout=timeout, closeHandshakeTimeout=5)
    factory.reactor = reactor
    factory.script = script
    factory.outcome = outcome if outcome is not None else CallOutcome()
    factory.done = defer.Deferred()
    connecting = endpoint_for(reactor, stream_url, trust_root, connect_to, timeout, tls_options).connect(factory)

    def failed_to_connect(failure):
        done, factory.done = factory.done, None
        if done is not None:
            done.errback(failure)

    connecting.addErrback(failed_to_connect)
    return factory.done
