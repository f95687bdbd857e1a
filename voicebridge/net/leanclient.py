"""A lean frame path for voicebridge's own WebSocket clients (the AI provider link), in front of Autobahn's.

Autobahn's client runs every frame through its general machinery both ways: a frame-header
object, a masker object and per-frame ``os.urandom`` in, five callbacks and traffic counters
out. Measured on the relay, the nearest path (a client WebSocket per call), that made a relayed
call cost about 4.5 times an echoed one. Nearly every frame on a provider link is the simple
case: one complete unfragmented text frame of a few hundred bytes, unmasked from the server,
masked from us.

``LeanClientFrames`` takes that case, and only that case, while the connection is OPEN and
Autobahn holds no partial frame or message; everything else (control frames, fragments, RSV bits,
masked or oversize frames, non-minimal lengths, text that is not ASCII and fails UTF-8) goes to
Autobahn untouched, with every byte after it, in order. The handshake, pings, close and errors
stay Autobahn's. It is the client's mirror of ``voicebridge.fastpath.wsfast`` and shares its
codec (``voicebridge.fastpath.frames``).

Masks: RFC 6455 wants an unpredictable key per frame. They are cut from ``os.urandom`` drawn 4 KiB
at a time (1024 frames per system call), not one call per frame (0.5 us each, measured).
"""

from __future__ import annotations

import os
import time

from autobahn.websocket.protocol import WebSocketProtocol

from voicebridge.fastpath.frames import FIN_TEXT, LEN16, MASK_BIT, MAX_16BIT, MAX_SHORT, unmask
from voicebridge.fastpath.leanloop import write_now

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_GROUND = WebSocketProtocol.SEND_STATE_GROUND

_POOL_BYTES = 4096


class MaskPool:
    """Four unpredictable bytes per frame, from the kernel's generator in blocks."""

    def __init__(self, urandom=os.urandom):
        self._urandom = urandom
        self._pool = b""
        self._pos = 0

    def take(self) -> bytes:
        pos = self._pos
        if pos + 4 > len(self._pool):
            self._pool = self._urandom(_POOL_BYTES)
            pos = 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


def client_frame(payload: bytes, mask: bytes) -> bytes:
    """One masked FIN text frame (what a client sends), header and payload in one bytes."""
    n = len(payload)
    if n <= MAX_SHORT:
        head = bytes((FIN_TEXT, MASK_BIT | n))
    elif n <= MAX_16BIT:
        head = LEN16.pack(FIN_TEXT, MASK_BIT | 126, n)
    else:
        raise ValueError("client_frame: use Autobahn for payloads over 65535 bytes")
    return head + mask + unmask(payload, mask)


class LeanClientFrames:
    """Mix in before an Autobahn ``WebSocketClientProtocol``: ``class P(LeanClientFrames, WebSocketClientProtocol)``.

    ``text_sink(payload)`` takes each text message (fast or not, so a subclass needs no
    ``onMessage`` for text); ``received_at`` is ``time.perf_counter()`` when the read that carried
    the current message began, for latency figures.
    """

    text_sink = None
    received_at = 0.0
    #: Whether the lean path may be taken at all: ``voicebridge.fastpath.switch.engage`` sets it to its
    #: decision, so ``--no-fast-path``, ``VOICEBRIDGE_FAST_PATH=off`` or a failed self-check (which
    #: looks at every private Autobahn name used here) leave the provider link on Autobahn's own path.
    lean = True
    _fast_in = False
    _fast_limit_in = 0
    _fast_limit_out = -1
    _masks: MaskPool | None = None

    def _onOpen(self):
        plain = (
            self.lean
            and getattr(self, "_perMessageCompress", None) is None
            and not self.logOctets
            and not self.logFrames
            and not self.trackedTimings
            and self.websocket_version != 0
            and not self.factory.isServer
        )
        self._fast_in = plain
        self._fast_limit_in = min([MAX_16BIT, *(x for x in (self.maxMessagePayloadSize, self.maxFramePayloadSize) if x > 0)])
        fast_out = plain and self.maskClientFrames and self.applyMask
        limit_out = min([MAX_16BIT, *(x for x in (self.maxMessagePayloadSize, self.autoFragmentSize) if x > 0)])
        self._fast_limit_out = limit_out if fast_out else -1
        self._masks = MaskPool()
        super()._onOpen()

    # Frames in.

    def dataReceived(self, data: bytes) -> None:
        self.received_at = time.perf_counter()
        if not self._fast_in or self.state != _OPEN or self.current_frame is not None or self.inside_message:
            super().dataReceived(data)
            return
        if self.data:  # the start of a frame kept from the last read
            data = self.data + data
        pos, hand_off = self._take_frames(data)
        self.data = data[pos:] if pos else data
        if hand_off and self.state != _CLOSED:
            self.consumeData()

    def _take_frames(self, data: bytes) -> tuple[int, bool]:
        """Deliver the fast frames at the start of ``data``: (bytes consumed, whether Autobahn takes the rest)."""
        end = len(data)
        pos = 0
        limit = self._fast_limit_in
        validate = self.utf8validateIncoming
        sink = self.text_sink
        hand_off = False
        while True:
            avail = end - pos
            if avail < 2:
                break
            b1 = data[pos + 1]
            if data[pos] != FIN_TEXT or b1 & MASK_BIT:  # a server's frames are never masked: Autobahn fails it
                hand_off = True
                break
            length = b1
            if length < 126:
                start = pos + 2
            elif length == 126:
                if avail < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    hand_off = True
                    break
                start = pos + 4
            else:
                hand_off = True
                break
            if length > limit:
                hand_off = True
                break
            stop = start + length
            if stop > end:  # part of the payload: Autobahn streams it (and fails bad UTF-8 as it arrives)
                hand_off = True
                break
            payload = data[start:stop]
            if validate and not payload.isascii() and not self._valid_utf8(payload):
                hand_off = True
                break
            pos = stop
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
            if sink is None:
                self._onMessage(payload, False)
            else:
                sink(payload)
            if self.state != _OPEN:
                hand_off = True
                break
        return pos, hand_off

    def _valid_utf8(self, payload: bytes) -> bool:
        validator = self.utf8validator
        validator.reset()
        valid, ended, _, _ = validator.validate(payload)
        return valid and ended

    def onMessage(self, payload, isBinary):
        """Autobahn's path (fragmented, large or binary messages)."""
        if isBinary:
            self.binary_received(payload)
        elif self.text_sink is not None:
            self.text_sink(payload)

    def binary_received(self, payload: bytes) -> None:
        """A binary message: a subclass decides; by default ignored."""

    # Frames out.

    def send_text(self, payload: bytes) -> None:
        """A text message as one masked frame, built and written here when it can be; dropped unless OPEN."""
        n = len(payload)
        if n <= self._fast_limit_out and self.state == _OPEN and self.send_state == _GROUND and not self.send_queue:
            write_now(self.transport, client_frame(payload, self._masks.take()))
        elif self.state == _OPEN:
            self.sendMessage(payload, False)
