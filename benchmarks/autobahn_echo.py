"""A bare Autobahn echo doing voicebridge's echo job: the baseline that shows what Autobahn's general path costs.

The same job as benchmarks/fastify/server.js: parse each text message (orjson), answer every
``media`` with a ``media`` carrying the same audio, close on ``stop``. No signatures, no logs,
no fast path: plain ``WebSocketServerProtocol.onMessage`` and ``sendMessage``.

    python benchmarks/autobahn_echo.py --port 8091
"""

from __future__ import annotations

import argparse
import sys

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol, listenWS
from twisted.internet import reactor


class Echo(WebSocketServerProtocol):
    stream_sid = None

    def onMessage(self, payload, isBinary):
        if isBinary:
            return
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        event = msg.get("event")
        if event == "media":
            reply = {"event": "media", "streamSid": self.stream_sid, "media": {"payload": msg["media"]["payload"]}}
            self.sendMessage(orjson.dumps(reply), isBinary=False)
        elif event == "start":
            self.stream_sid = msg["start"]["streamSid"]
        elif event == "stop":
            self.sendClose(1000, "stream stopped")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    factory = WebSocketServerFactory(f"ws://{args.host}:{args.port}")
    factory.protocol = Echo
    factory.setProtocolOptions(maxMessagePayloadSize=65536, maxFramePayloadSize=65536)
    listenWS(factory, interface=args.host)
    print(f"autobahn echo listening on ws://{args.host}:{args.port}/twilio-media", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
