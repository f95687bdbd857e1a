"""A fast path for the frame a media stream is made of, in front of Autobahn's general one.

Profiling the echo path (docs/benchmarks.md) showed most of the daemon's CPU in Autobahn's
per-frame machinery: a frame-header object, a masker object, an incremental UTF-8 validator,
five callbacks and a debug log whose arguments are formatted even when debug is off, for each
frame both ways. Nearly every frame of a call is the same simple case: one complete,
unfragmented, masked text frame of a few hundred bytes in, one unmasked text frame out.

``FastTextFrames`` takes that case, and only that case, straight from the received bytes while
the connection is OPEN and Autobahn holds no partial frame or message. Anything else (control
frames, fragments, RSV bits, unmasked or oversize frames, non-minimal lengths, invalid UTF-8)
goes to Autobahn untouched, with every byte after it, in order, so Autobahn answers exactly as
it would have: the fast path never closes a connection itself. tests/test_wsconformance.py
feeds both the same byte streams, split at every byte, and compares what comes out.
"""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol

from voicebridge.fastpath.frames import FIN_TEXT, LEN16, MAX_16BIT, MAX_SHORT, OTHER, text_length, unmask
from voicebridge.fastpath.leanloop import write_now

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_GROUND = WebSocketProtocol.SEND_STATE_GROUND


class FastTextFrames:
    """Mix in before an Autobahn ``WebSocketServerProtocol``: ``class P(FastTextFrames, WebSocketServerProtocol)``.

    Which frames may take the fast path is decided at open from the negotiated options: no
    compression, no frame or octet logging, no timing tracking. Frames up to the smallest of
    maxMessagePayloadSize, maxFramePayloadSize and 65535 bytes qualify; larger ones are Autobahn's.

    Autobahn's ``trafficStats`` count only the frames Autobahn handles: updating ten counters
    on a second object per frame cost 6-8% of the daemon's CPU at load, for figures nothing
    reads. voicebridge counts every frame and byte on its ``Call``.
    """

    #: A callable(payload) a subclass may set to take fast text frames in place of
    #: ``_onMessage(payload, False)`` -> ``onMessage``: two calls fewer per frame.
    text_sink = None
    _fast_in = False
    _fast_limit_in = 0
    _fast_limit_out = -1

    def _onOpen(self):
        plain = (
            self._perMessageCompress is None
            and not self.logOctets
            and not self.logFrames
            and not self.trackedTimings
            and self.websocket_version != 0
        )
        self._fast_in = plain and self.factory.isServer
        self._fast_limit_in = min([MAX_16BIT, *(x for x in (self.maxMessagePayloadSize, self.maxFramePayloadSize) if x > 0)])
        # -1 where frames out must be Autobahn's: one comparison per frame decides both.
        fast_out = plain and self.factory.isServer and not self.maskServerFrames
        limit_out = min([MAX_16BIT, *(x for x in (self.maxMessagePayloadSize, self.autoFragmentSize) if x > 0)])
        self._fast_limit_out = limit_out if fast_out else -1
        super()._onOpen()

    # Frames in.

    def dataReceived(self, data: bytes) -> None:
        if not self._fast_in or self.state != _OPEN or self.current_frame is not None or self.inside_message:
            super().dataReceived(data)
            return
        if self.data:  # the start of a frame kept from the last read (never a parsed header: see above)
            data = self.data + data
        pos, hand_off = self._take_frames(data)
        self.data = data[pos:] if pos else data
        if hand_off and self.state != _CLOSED:
            self.consumeData()

    def _take_frames(self, data: bytes) -> tuple[int, bool]:
        """Deliver the fast frames at the start of ``data``: (bytes consumed, whether Autobahn takes the rest).

        Returns with hand_off False only where the rest is the incomplete header of a frame that
        may qualify, so keeping it back is invisible: Autobahn would not have acted on it yet.
        """
        end = len(data)
        pos = 0
        limit = self._fast_limit_in
        validate = self.utf8validateIncoming
        apply_mask = self.applyMask
        sink = self.text_sink
        hand_off = False
        while pos < end:
            length = text_length(data, pos, end)  # the codec the load tester uses too (voicebridge/fastpath/frames.py)
            if length < 0:
                # INCOMPLETE: wait for the rest of the header, as Autobahn would. OTHER: Autobahn's to answer
                # (control frames, fragments, RSV bits, unmasked frames, non-minimal or 64-bit lengths).
                hand_off = length == OTHER
                break
            if length > limit:
                hand_off = True
                break
            start = pos + 6 if length < 126 else pos + 8
            stop = start + length
            if stop > end:  # part of the payload: Autobahn streams it (and fails bad UTF-8 as it arrives)
                hand_off = True
                break
            payload = data[start:stop]
            if apply_mask:
                payload = unmask(payload, data[start - 4 : start])
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
            if self._listeners is not None:
                self.fire("message", payload, is_binary=False)
            if self.state != _OPEN:
                hand_off = True
                break
        return pos, hand_off

    def _valid_utf8(self, payload: bytes) -> bool:
        """Autobahn's own validator, so the fast path accepts exactly what Autobahn accepts."""
        validator = self.utf8validator
        validator.reset()
        valid, ended, _, _ = validator.validate(payload)
        return valid and ended

    # Frames out.

    def sendMessage(self, payload, isBinary=False, fragmentSize=None, sync=False, doNotCompress=False):
        if isBinary or fragmentSize is not None or sync or type(payload) is not bytes or self.state != _OPEN:
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
        else:
            self.send_text(payload)

    def send_text(self, payload: bytes) -> None:
        """A text message as one frame, built and written here when it can be; dropped unless OPEN.

        ``sendMessage(payload)`` would raise on a connection no longer open; a ``Call`` sends from
        timers and other connections' events, which may run after the close began, and has
        nothing to do about it.
        """
        n = len(payload)
        if n <= self._fast_limit_out and self.state == _OPEN and self.send_state == _GROUND and not self.send_queue:
            head = bytes((FIN_TEXT, n)) if n <= MAX_SHORT else LEN16.pack(FIN_TEXT, 126, n)
            write_now(self.transport, head + payload)
        elif self.state == _OPEN:
            super().sendMessage(payload, False)
