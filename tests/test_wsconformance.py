"""RFC 6455 behaviour is Autobahn's, fast path or not.

Every byte stream here goes, in the same chunks, to a plain Autobahn server protocol and to the
same protocol with ``FastTextFrames`` mixed in. Both echo what they receive. The test asserts
they deliver the same messages, write the same bytes back (handshake, echoes, pongs, close
frames), close with the same code and reason, and drop the connection alike, each at the same
point of the stream. Streams are fed whole, split at every byte boundary, byte by byte, and in
random chunks.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from voicebridge.fastpath import frames as wsframes
from voicebridge.fastpath.wsfast import FastTextFrames

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (
    "GET /twilio-media HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
MASK = b"\x37\xfa\x21\x3d"


class Recorder:
    """Echoes every message; ``close-me`` and ``drop-me`` make the server end the connection mid-stream."""

    def onOpen(self):
        self.events = []

    def onMessage(self, payload, isBinary):
        self.events.append(("message", payload, isBinary))
        if payload == b"close-me":
            self.sendClose(1000, "asked to")
        elif payload == b"drop-me":
            self.dropConnection(abort=True)
        elif self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary)

    def onPing(self, payload):
        self.events.append(("ping", payload))
        super().onPing(payload)

    def onPong(self, payload):
        self.events.append(("pong", payload))

    def onClose(self, wasClean, code, reason):
        self.events.append(("close", wasClean, code, reason))


class PlainEcho(Recorder, WebSocketServerProtocol):
    pass


class FastEcho(Recorder, FastTextFrames, WebSocketServerProtocol):
    pass


class Transport(StringTransport):
    """A StringTransport that, like a TCP transport, lets an absent producer be unregistered."""

    def unregisterProducer(self):
        self.producer = None


DEFAULTS = dict(maxMessagePayloadSize=65536, maxFramePayloadSize=65536, failByDrop=False)


# Debugging switches of Autobahn's factory; each keeps every frame on Autobahn's own path.
FACTORY_ATTRIBUTES = {"logFrames", "logOctets"}


def connect(protocol_class, track_timings=False, **options):
    """An open server protocol over a StringTransport. No timers unless asked: nothing may outlive a test."""
    factory = WebSocketServerFactory("ws://127.0.0.1:8080")
    factory.protocol = protocol_class
    for attribute in FACTORY_ATTRIBUTES & options.keys():  # not protocol options: set on the factory
        setattr(factory, attribute, options.pop(attribute))
    factory.setProtocolOptions(**{"openHandshakeTimeout": 0, "closeHandshakeTimeout": 0, "autoPingInterval": 0, **options})
    factory.serverConnectionDropTimeout = 0
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    if track_timings:
        # Set on the factory, trackTimings tracks nothing (Autobahn's setTrackTimings sees the
        # value already set and never makes its Timings); turned on here, before the handshake, it does.
        proto.setTrackTimings(True)
    proto.dataReceived(HANDSHAKE)
    assert proto.state == proto.STATE_OPEN
    return proto, transport


def server_frames(written: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every frame the server wrote after its handshake response."""
    data = written.split(b"\r\n\r\n", 1)[1]
    frames, pos = [], 0
    while (head := wsframes.read_header(data, pos)) is not None:
        b0, length, size, _ = head
        frames.append((b0 & 0x0F, data[pos + size : pos + size + length]))
        pos += size + length
    return frames


def run(protocol_class, chunks, **options):
    """What the protocol did, after every chunk: not only the end result but when it happened."""
    proto, transport = connect(protocol_class, **options)
    steps = []
    for chunk in chunks:
        if chunk:
            proto.dataReceived(chunk)
            steps.append((len(proto.events), len(transport.value()), transport.disconnecting, proto.state))
    dropped = transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    return {"events": proto.events, "written": transport.value(), "dropped": dropped, "steps": steps}


def assert_same(chunks, **options):
    options = {**DEFAULTS, **options}
    plain = run(PlainEcho, chunks, **options)
    fast = run(FastEcho, chunks, **options)
    assert fast == plain, f"chunks {[len(c) for c in chunks]}"
    return plain


def frame(opcode=1, payload=b"", fin=True, rsv=0, mask=MASK, length=None, length_bytes=None):
    """A client frame, possibly malformed: ``length``/``length_bytes`` force the header's length field."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    bit = 0x80 if mask is not None else 0
    if length_bytes is None:
        length_bytes = 0 if n <= 125 else 2 if n <= 0xFFFF else 8
    if length_bytes == 0:
        head = bytes((b0, bit | n))
    elif length_bytes == 2:
        head = struct.pack("!BBH", b0, bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + wsframes.unmask(payload, mask)


def close(code=None, reason=b"", **kw):
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(8, payload, **kw)


MEDIA = b'{"event":"media","streamSid":"MZ1","media":{"payload":"' + b"A" * 216 + b'"}}'

STREAMS = {
    "short text": frame(1, b"hello"),
    "empty text": frame(1, b""),
    "16-bit length": frame(1, MEDIA),
    "126 bytes, smallest 16-bit": frame(1, b"x" * 126),
    "65535 bytes, largest 16-bit": frame(1, b"y" * 65535),
    "64-bit length over the limit": frame(1, b"z" * 70000),
    "several frames in a row": frame(1, MEDIA) + frame(1, b"two") + frame(1, MEDIA),
    "binary frame": frame(2, b"\x00\x01\x02"),
    "fragmented text": frame(1, b"hel", fin=False) + frame(0, b"lo"),
    "fragmented, three parts": frame(1, b"a", fin=False) + frame(0, b"b", fin=False) + frame(0, b"c"),
    "ping between fragments": frame(1, b"hel", fin=False) + frame(9, b"p") + frame(0, b"lo") + frame(1, b"after"),
    "ping alone": frame(9, b"are you there") + frame(1, b"then text"),
    "unsolicited pong": frame(10, b"pong") + frame(1, b"then text"),
    "close 1000 with reason": frame(1, b"before") + close(1000, b"bye") + frame(1, b"after close"),
    "close without code": close(),
    "close 1001": close(1001, b"going"),
    "close with bad code": close(999),
    "close with payload of 1 byte": frame(8, b"\x03"),
    "close reason not utf-8": close(1000, b"\xff\xfe"),
    "unmasked text frame": frame(1, b"unmasked", mask=None) + frame(1, b"next"),
    "rsv1 set": frame(1, b"rsv", rsv=4) + frame(1, b"next"),
    "rsv3 set": frame(1, b"rsv", rsv=1),
    "reserved data opcode": frame(3, b"op3"),
    "reserved control opcode": frame(11, b"op11"),
    "non-minimal 16-bit length": frame(1, b"short", length_bytes=2) + frame(1, b"next"),
    "non-minimal 64-bit length": frame(1, b"short", length_bytes=8),
    "continuation without start": frame(0, b"orphan") + frame(1, b"next"),
    "text while inside a message": frame(1, b"a", fin=False) + frame(1, b"b"),
    "fragmented ping": frame(9, b"p", fin=False),
    "control frame over 125 bytes": frame(9, b"p" * 126),
    "invalid utf-8": frame(1, b"ok") + frame(1, b"bad \xff here") + frame(1, b"never"),
    "utf-8 surrogate": frame(1, b"\xed\xa0\x80"),
    "utf-8 overlong": frame(1, b"\xc0\xaf"),
    "utf-8 truncated at the end": frame(1, "é".encode()[:1]),
    "utf-8 valid, not ascii": frame(1, "caf\u00e9 \u20ac \U0001f600".encode()) + frame(1, MEDIA),
    "utf-8 split across fragments": frame(1, "€".encode()[:1], fin=False) + frame(0, "€".encode()[1:]),
    "invalid utf-8 across fragments": frame(1, b"\xe2\x82", fin=False) + frame(0, b"A"),
    "oversize frame": frame(1, b"x" * 70000) + frame(1, b"next"),
    "oversize by fragments": frame(1, b"x" * 40000, fin=False) + frame(0, b"x" * 40000),
    "mask of zeros": frame(1, MEDIA, mask=b"\x00\x00\x00\x00"),
    "mask of ones": frame(1, MEDIA, mask=b"\xff\xff\xff\xff") + frame(1, b"tail", mask=b"\x01\x02\x03\x04"),
    "handler closes mid-buffer": frame(1, b"one") + frame(1, b"close-me") + frame(1, b"after") + close(1000),
    "handler drops mid-buffer": frame(1, b"one") + frame(1, b"drop-me") + frame(1, b"after"),
    "garbage": b"\x81\xfe\x00",
}


def splits(data: bytes, budget: int = 400):
    """Every two-chunk split of ``data`` (or, for long streams, those near frame edges and a sample)."""
    points = range(1, len(data))
    if len(data) > budget:
        rng = random.Random(len(data))
        points = sorted({*range(1, 40), *range(len(data) - 40, len(data)), *rng.sample(range(1, len(data)), 100)})
    for i in points:
        yield [data[:i], data[i:]]


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("fail_by_drop", [False, True], ids=["close-handshake", "fail-by-drop"])
def test_same_behaviour_whole_and_split_at_every_byte(name, fail_by_drop):
    data = STREAMS[name]
    assert_same([data], failByDrop=fail_by_drop)
    for chunks in splits(data):
        assert_same(chunks, failByDrop=fail_by_drop)


@pytest.mark.parametrize("name", [n for n in sorted(STREAMS) if len(STREAMS[n]) < 2000])
def test_same_behaviour_byte_by_byte(name):
    data = STREAMS[name]
    assert_same([data[i : i + 1] for i in range(len(data))])


def test_the_fast_path_is_taken_for_the_common_frame():
    """The comparison above means something only if the fast path really carries these frames."""
    calls = []

    class Counting(FastEcho):
        def consumeData(self):
            if self.state == self.STATE_OPEN:
                calls.append(len(self.data))
            return super().consumeData()

    one = frame(1, MEDIA)
    data = one * 5
    # Reads that end inside a frame header are common enough to keep on the fast path.
    cut = 2 * len(one) + 3
    result = run(Counting, [data[:cut], data[cut:]], **DEFAULTS)
    assert [e for e in result["events"] if e[0] == "message"] == [("message", MEDIA, False)] * 5
    assert calls == [], "Autobahn's frame parser never ran"
    assert result["written"].endswith(wsframes.text_frame(MEDIA) * 5)


def test_every_frame_after_a_rare_one_still_arrives_in_order():
    data = frame(1, b"1") + frame(9, b"ping") + frame(1, b"2") + frame(1, b"x", fin=False) + frame(0, b"3") + frame(1, b"4")
    result = assert_same([data])
    assert [e[1] for e in result["events"] if e[0] == "message"] == [b"1", b"2", b"x3", b"4"]


@pytest.mark.parametrize(
    "options",
    [
        dict(maxMessagePayloadSize=100, maxFramePayloadSize=0),
        dict(maxMessagePayloadSize=0, maxFramePayloadSize=100),
        dict(maxMessagePayloadSize=0, maxFramePayloadSize=0),
        dict(utf8validateIncoming=False),
        dict(applyMask=False),
        dict(requireMaskedClientFrames=False),
        dict(autoFragmentSize=64),
        dict(logFrames=True),  # FACTORY_ATTRIBUTES: every frame on Autobahn's path
        dict(logOctets=True),
        dict(track_timings=True),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_same_behaviour_under_other_options(options):
    for name in ("16-bit length", "several frames in a row", "invalid utf-8", "unmasked text frame", "oversize frame"):
        data = STREAMS[name]
        assert_same([data], **options)
        for chunks in list(splits(data, budget=120))[::7]:
            assert_same(chunks, **options)


def test_debugging_switches_keep_frames_off_the_fast_path():
    """So the two tests above compare Autobahn with Autobahn there, as they should."""
    proto, _ = connect(FastEcho, **DEFAULTS)
    assert proto._fast_in and proto._fast_limit_out == 65535
    proto.connectionLost(Failure(ConnectionDone()))
    for attribute in ("logFrames", "logOctets", "track_timings"):
        proto, _ = connect(FastEcho, **DEFAULTS, **{attribute: True})
        assert not proto._fast_in and proto._fast_limit_out == -1, attribute
        proto.connectionLost(Failure(ConnectionDone()))


_frames = st.builds(
    lambda opcode, fin, rsv, masked, payload, mask: frame(opcode, payload, fin=fin, rsv=rsv, mask=mask if masked else None),
    opcode=st.sampled_from([0, 1, 1, 1, 1, 2, 8, 9, 10, 3]),
    fin=st.booleans() | st.just(True),
    rsv=st.just(0) | st.integers(0, 7),
    masked=st.just(True) | st.booleans(),
    payload=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=120).map(lambda t: t.encode("utf-8")),
        st.just(MEDIA),
    ),
    mask=st.binary(min_size=4, max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frames, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_random_frame_streams_in_random_chunks(frames, cuts):
    data = b"".join(frames)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert_same(chunks)
    assert_same(chunks, failByDrop=True)


def test_random_utf8_agrees_with_autobahn():
    """Random bytes, mostly not UTF-8: the fast path must accept exactly what Autobahn accepts."""
    rng = random.Random(7)
    for _ in range(300):
        payload = bytes(
            rng.choice([rng.randrange(256), rng.randrange(0x80, 0xC0), 0xE2, 0xF0]) for _ in range(rng.randrange(1, 12))
        )
        assert_same([frame(1, payload) + frame(1, b"next")])


@pytest.mark.parametrize("unmask", [wsframes.unmask, wsframes.unmask_python], ids=["in-use", "python"])
def test_unmask_matches_autobahn_masker(unmask):
    from autobahn.websocket.xormasker import create_xor_masker

    for n in (0, 1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 125, 126, 127, 380, 1024, 1025, 4096):
        data, mask = os.urandom(n), os.urandom(4)
        expected = create_xor_masker(mask, n).process(data) if n else b""
        assert unmask(data, mask) == expected
        assert unmask(unmask(data, mask), mask) == data


def test_the_c_masker_is_the_one_in_use():
    """websockets is a dependency for its C masker; a build without it would quietly cost ~1 us a frame."""
    from websockets.speedups import apply_mask

    assert wsframes.unmask is apply_mask


@pytest.mark.parametrize("traffic", [True, False], ids=["media-frame-before-timeout", "silence"])
def test_data_frames_hold_off_the_ping_timeout_alike(monkeypatch, traffic):
    """autoPingRestartOnAnyTraffic: a data frame counts as a pong, on the fast path too."""
    import txaio
    from twisted.internet import task

    outcomes = []
    for cls in (PlainEcho, FastEcho):
        clock = task.Clock()
        monkeypatch.setattr(txaio.config, "loop", clock)
        proto, transport = connect(cls, autoPingInterval=1, autoPingTimeout=1, **DEFAULTS)
        clock.pump([0.1] * 12)  # the first ping goes out and its timeout is armed
        assert proto.autoPingTimeoutCall is not None
        if traffic:
            proto.dataReceived(frame(1, MEDIA))
        clock.pump([0.1] * 15)
        kinds = [opcode for opcode, _ in server_frames(transport.value())]
        outcomes.append((transport.disconnecting, kinds))
        proto.connectionLost(Failure(ConnectionDone()))
    assert outcomes[0] == outcomes[1]
    dropped, kinds = outcomes[0]
    assert dropped is (not traffic)
    assert kinds.count(wsframes.OP_PING) == (2 if traffic else 1)


SEND_OPTIONS = [{}, {"autoFragmentSize": 100}, {"maxMessagePayloadSize": 0}, {"logFrames": True}]
PAYLOADS = [b"", b"a", b"b" * 125, b"c" * 126, MEDIA, b"d" * 65535, b"e" * 65536, "\u20ac".encode()]


@pytest.mark.parametrize("options", SEND_OPTIONS, ids=str)
def test_messages_sent_are_the_same_bytes(options):
    """Text messages take ``send_text``, what a Call sends through; it is dropped once the close began."""
    written = []
    for cls in (PlainEcho, FastEcho):
        proto, transport = connect(cls, **{**DEFAULTS, "maxMessagePayloadSize": 70000, **options})
        transport.clear()
        for payload in PAYLOADS:
            proto.sendMessage(payload)
            proto.sendMessage(payload, isBinary=True)
            proto.sendMessage(payload, fragmentSize=50)
        written.append(transport.value())
        if cls is FastEcho:
            proto.sendClose(1000)
            transport.clear()
            proto.send_text(MEDIA)  # after the close began: no frame, no exception
            assert transport.value() == b""
        proto.connectionLost(Failure(ConnectionDone()))
    assert written[0] == written[1]


def test_oversize_send_fails_alike():
    from autobahn.exception import PayloadExceededError

    for cls in (PlainEcho, FastEcho):
        proto, transport = connect(cls, **DEFAULTS)
        with pytest.raises(PayloadExceededError):
            proto.sendMessage(b"x" * 65537)
        proto.connectionLost(Failure(ConnectionDone()))


def test_message_observers_still_hear_fast_frames():
    heard = []
    for cls in (PlainEcho, FastEcho):
        proto, transport = connect(cls, **DEFAULTS)
        proto.on("message", lambda payload, is_binary, cls=cls: heard.append((cls.__name__, payload, is_binary)))
        proto.dataReceived(frame(1, MEDIA) + frame(1, b"two"))
        proto.connectionLost(Failure(ConnectionDone()))
    assert [h[1:] for h in heard if h[0] == "PlainEcho"] == [h[1:] for h in heard if h[0] == "FastEcho"]
    assert len(heard) == 4
