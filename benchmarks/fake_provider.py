"""A stand-in Realtime API for benchmarks: answers every ``input_audio_buffer.append`` with a 20 ms delta.

The worst case for a bridge's per-message cost: one provider message each way per 20 ms frame.
The delta carries the appended audio itself, so ``voicebridge loadtest`` matches each answer to the
frame it sent and times the whole round trip (Twilio -> bridge -> provider -> bridge -> Twilio), as
it does for an echo. It answers ``session.update`` with ``session.updated`` and ignores the rest.

    python benchmarks/fake_provider.py --port 9100

Lean on purpose (the fast path's server frames, payload found by a byte search, no JSON parse per
append), so that on the generator's core it measures the bridge, not itself.
"""

from __future__ import annotations

import argparse
import itertools

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

from voicebridge.fastpath import leanloop
from voicebridge.fastpath.wsfast import FastTextFrames

APPEND = b'{"type":"input_audio_buffer.append","audio":"'


class Provider(FastTextFrames, WebSocketServerProtocol):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def onOpen(self):
        self.ids = itertools.count(1)
        n = next(self.factory.calls)
        self.head = (
            b'{"type":"response.output_audio.delta","event_id":"ev","response_id":"resp_%d","item_id":"item_%d",'
            b'"output_index":0,"content_index":0,"delta":"' % (n, n)
        )
        self.text_sink = self.received
        self.send_text(orjson.dumps({"type": "session.created", "session": {"type": "realtime"}}))

    def received(self, payload: bytes) -> None:
        if payload.startswith(APPEND):
            end = payload.find(b'"', len(APPEND))
            self.send_text(self.head + payload[len(APPEND) : end] + b'"}')
            return
        event = orjson.loads(payload)
        if event.get("type") == "session.update":
            self.send_text(orjson.dumps({"type": "session.updated", "session": event["session"]}))

    def onMessage(self, payload, isBinary):
        if not isBinary:
            self.received(payload)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    leanloop.install(reactor)
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{args.port}/v1/realtime")
    factory.setProtocolOptions(autoPingInterval=0, maxMessagePayloadSize=1 << 20)
    factory.protocol = Provider
    factory.calls = itertools.count(1)
    reactor.listenTCP(args.port, factory, interface="127.0.0.1", backlog=1024)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
