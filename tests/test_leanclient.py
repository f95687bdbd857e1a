"""RFC 6455 behaviour of voicebridge's own client links is Autobahn's, lean frame path or not.

Every byte stream a server could send goes, in the same chunks, to a plain Autobahn client
protocol and to the same protocol with ``LeanClientFrames`` mixed in. Both echo what they receive
(the lean one through its ``send_text``). The test asserts they deliver the same messages, write
the same frames back (unmasked and compared: masks are random), close with the same code and
reason, and drop the connection alike, each at the same point of the stream. Streams are fed
whole, split at every byte boundary, and byte by byte.
"""

from __future__ import annotations

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.test_wsconformance import MEDIA, Transport, close, frame, splits
from voicebridge.fastpath import frames as wsframes
from voicebridge.net.leanclient import LeanClientFrames

DELTA = b'{"type":"response.output_audio.delta","item_id":"item_1","delta":"' + b"A" * 216 + b'"}'


class Recorder:
    def onOpen(self):
        self.events = []

    def onMessage(self, payload, isBinary):
        self.events.append(("message", payload, isBinary))
        if payload == b"close-me":
            self.sendClose(1000, "asked to")
        elif payload == b"drop-me":
            self.dropConnection(abort=True)
        elif self.state == self.STATE_OPEN:
            self.echo(payload, isBinary)

    def onPing(self, payload):
        self.events.append(("ping", payload))
        super().onPing(payload)

    def onPong(self, payload):
        self.events.append(("pong", payload))

    def onClose(self, wasClean, code, reason):
        self.events.append(("close", wasClean, code, reason))


class PlainClient(Recorder, WebSocketClientProtocol):
    def echo(self, payload, is_binary):
        self.sendMessage(payload, is_binary)


class LeanClient(Recorder, LeanClientFrames, WebSocketClientProtocol):
    def echo(self, payload, is_binary):
        if is_binary:
            self.sendMessage(payload, True)
        else:
            self.send_text(payload)


DEFAULTS = dict(maxMessagePayloadSize=65536, maxFramePayloadSize=65536, failByDrop=False)


def connect(protocol_class, **options):
    factory = WebSocketClientFactory("ws://127.0.0.1:8080/v1/realtime")
    factory.protocol = protocol_class
    factory.setProtocolOptions(**{"openHandshakeTimeout": 0, "closeHandshakeTimeout": 0, "autoPingInterval": 0, **options})
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    proto.makeConnection(transport)
    accept = wsframes.accept_key(proto.websocket_key)
    proto.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept.encode()
    )
    assert proto.state == proto.STATE_OPEN
    transport.clear()
    return proto, transport


def client_frames(written: bytes) -> list[tuple[int, bytes]]:
    """(first byte, unmasked payload) of every frame the client wrote: every one must be masked."""
    out, pos = [], 0
    while (head := wsframes.read_header(written, pos)) is not None:
        b0, length, size, mask = head
        assert mask, "a client masks every frame"
        out.append((b0, wsframes.unmask(written[pos + size : pos + size + length], mask)))
        pos += size + length
    assert pos == len(written)
    return out


def run(protocol_class, chunks, **options):
    proto, transport = connect(protocol_class, **options)
    steps = []
    for chunk in chunks:
        if chunk:
            proto.dataReceived(chunk)
            steps.append((len(proto.events), len(client_frames(transport.value())), transport.disconnecting, proto.state))
    dropped = transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    return {"events": proto.events, "written": client_frames(transport.value()), "dropped": dropped, "steps": steps}


def assert_same(chunks, **options):
    options = {**DEFAULTS, **options}
    plain = run(PlainClient, chunks, **options)
    lean = run(LeanClient, chunks, **options)
    assert lean == plain, f"chunks {[len(c) for c in chunks]}"
    return plain


def server(opcode=1, payload=b"", **kw):
    return frame(opcode, payload, mask=None, **kw)


STREAMS = {
    "short text": server(1, b"hello"),
    "empty text": server(1, b""),
    "a delta": server(1, DELTA),
    "126 bytes, smallest 16-bit": server(1, b"x" * 126),
    "65535 bytes, largest 16-bit": server(1, b"y" * 65535),
    "64-bit length over the limit": server(1, b"z" * 70000),
    "several in a row": server(1, DELTA) + server(1, b"two") + server(1, MEDIA),
    "binary frame": server(2, b"\x00\x01\x02") + server(1, b"after"),
    "fragmented text": server(1, b"hel", fin=False) + server(0, b"lo") + server(1, b"next"),
    "ping between fragments": server(1, b"hel", fin=False) + server(9, b"p") + server(0, b"lo") + server(1, b"after"),
    "ping alone": server(9, b"are you there") + server(1, b"then text"),
    "close 1000 with reason": server(1, b"before") + close(1000, b"bye", mask=None) + server(1, b"after close"),
    "close 1011": close(1011, b"server error", mask=None),
    "masked frame from a server": frame(1, b"masked") + server(1, b"next"),
    "rsv1 set": server(1, b"rsv", rsv=4) + server(1, b"next"),
    "non-minimal 16-bit length": server(1, b"short", length_bytes=2) + server(1, b"next"),
    "invalid utf-8": server(1, b"ok") + server(1, b"bad \xff here") + server(1, b"never"),
    "utf-8 valid, not ascii": server(1, "caf\u00e9 \u20ac".encode()) + server(1, DELTA),
    "oversize frame": server(1, b"x" * 70000) + server(1, b"next"),
    "handler closes mid-buffer": server(1, b"one") + server(1, b"close-me") + server(1, b"after") + close(1000, mask=None),
    "handler drops mid-buffer": server(1, b"one") + server(1, b"drop-me") + server(1, b"after"),
    "garbage": b"\x81\x7e\x00",
}


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("fail_by_drop", [False, True], ids=["close-handshake", "fail-by-drop"])
def test_same_behaviour_whole_and_split_at_every_byte(name, fail_by_drop):
    data = STREAMS[name]
    assert_same([data], failByDrop=fail_by_drop)
    for chunks in splits(data, budget=200):
        assert_same(chunks, failByDrop=fail_by_drop)


@pytest.mark.parametrize("name", [n for n in sorted(STREAMS) if len(STREAMS[n]) < 1000])
def test_same_behaviour_byte_by_byte(name):
    data = STREAMS[name]
    assert_same([data[i : i + 1] for i in range(len(data))])


def test_the_lean_path_is_taken_both_ways_for_the_common_frame():
    calls = []

    class Counting(LeanClient):
        def consumeData(self):
            if self.state == self.STATE_OPEN:
                calls.append(len(self.data))
            return super().consumeData()

        def sendMessage(self, *args, **kwargs):
            calls.append("sendMessage")
            return super().sendMessage(*args, **kwargs)

    one = server(1, DELTA)
    data = one * 5
    cut = 2 * len(one) + 3
    result = run(Counting, [data[:cut], data[cut:]], **DEFAULTS)
    assert [e for e in result["events"] if e[0] == "message"] == [("message", DELTA, False)] * 5
    assert calls == [], "Autobahn's frame parser and sender never ran"
    assert result["written"] == [(wsframes.FIN_TEXT, DELTA)] * 5
