"""A Twilio Media Streams application, run by the tests in their own reactor: the app behind a relay.

It speaks the documented protocol (it gets ``connected``, ``start``, ``media``... and answers with
``media``, ``mark``, ``clear``), records every frame as received, and misbehaves on request:
refuse the handshake, stop reading, drop dead mid-call, close, send junk.
"""

from __future__ import annotations

import base64
import socket

import orjson
from autobahn.twisted.websocket import ConnectionDeny, WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory, Protocol


def app_media(stream_sid: str, audio: bytes) -> bytes:
    """A media message as some other library would write it: spaces, its own key order, an extra field."""
    payload = base64.b64encode(audio).decode()
    return b'{ "streamSid": "%s", "event": "media", "media": { "payload": "%s" }, "x-app": 1 }' % (
        stream_sid.encode(),
        payload.encode(),
    )


class AppProtocol(WebSocketServerProtocol):
    def onConnect(self, request):
        app = self.factory.app
        app.requests.append(request)
        if app.refuse:
            raise ConnectionDeny(app.refuse, "this application refuses you")

    def onOpen(self):
        app = self.factory.app
        app.connections.append(self)
        if app.stall:
            self.transport.pauseProducing()  # read nothing more: the relay's writes back up

    def onMessage(self, payload, isBinary):
        app = self.factory.app
        app.frames.append(payload)
        message = orjson.loads(payload)
        if message.get("event") == "start":
            self.stream_sid = message["start"]["streamSid"]
        app.behaviour(app, self, message)

    def send(self, data: bytes) -> None:
        if self.state != self.STATE_OPEN:
            return  # it has closed (close_after) and frames still arrive: a real application sends no more
        self.factory.app.sent.append(data)
        self.sendMessage(data, isBinary=False)

    def onClose(self, wasClean, code, reason):
        app = self.factory.app
        if self in app.connections:
            app.connections.remove(self)
        app.closes.append((wasClean, code, reason))
        if not app.closed.called:
            app.closed.callback(None)


def echo(app, proto, message):
    """Answer each caller frame with the same audio; a mark after the first; a clear on a key press."""
    event = message.get("event")
    if event == "media":
        proto.send(app_media(proto.stream_sid, base64.b64decode(message["media"]["payload"])))
        app.media += 1
        if app.media == 1:
            proto.send(b'{"event":"mark","streamSid":"%s","mark":{"name":"first"}}' % proto.stream_sid.encode())
        if app.die_after and app.media == app.die_after:
            proto.transport.abortConnection()
        if app.close_after and app.media == app.close_after:
            proto.sendClose(1000, "goodbye")
    elif event == "dtmf":
        proto.send(b'{"event":"clear","streamSid":"%s"}' % proto.stream_sid.encode())


class MediaApp:
    def __init__(self, behaviour=echo, refuse: int | None = None, stall=False, die_after=0, close_after=0):
        self.behaviour = behaviour
        self.refuse = refuse
        self.stall = stall
        self.die_after = die_after
        self.close_after = close_after
        self.requests, self.frames, self.sent, self.closes = [], [], [], []
        self.connections = []  # open ones
        self.media = 0
        self.closed = defer.Deferred()
        self.port = None
        self.url = None

    @defer.inlineCallbacks
    def listen(self, reactor, tls=None, path="/media"):
        """Serve on a free loopback port; ``tls`` is a pki Leaf for wss://."""
        scheme = "wss" if tls else "ws"
        host = "localhost" if tls else "127.0.0.1"
        factory = WebSocketServerFactory(f"{scheme}://{host}{path}")
        factory.protocol = AppProtocol
        factory.app = self
        if tls:
            description = f"ssl:0:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}:extraCertChain={tls.chain}"
        else:
            description = "tcp:0:interface=127.0.0.1"
        self.port = yield endpoints.serverFromString(reactor, description).listen(factory)
        self.url = f"{scheme}://{host}:{self.port.getHost().port}{path}"
        return self

    def stop(self):
        for proto in list(self.connections):
            proto.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening) if self.port else defer.succeed(None)


class Silent(Protocol):
    """Accepts the TCP connection and never answers: a handshake that never ends."""

    def connectionMade(self):
        self.factory.connections.append(self)


@defer.inlineCallbacks
def listen_silent(reactor):
    factory = Factory.forProtocol(Silent)
    factory.connections = []
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port, factory


def listen_full():
    """A listening socket whose accept queue is full: the kernel drops every further SYN, so a
    connection to it neither completes nor is refused (a host that never answers, on loopback).

    Returns (listening socket, the connections that fill its queue); close them all when done.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # Linux queues backlog + 1 connections
    fillers = []
    for _ in range(8):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(listener.getsockname())
        except (TimeoutError, socket.timeout):
            probe.close()
            return listener, fillers
        fillers.append(probe)
    raise RuntimeError("the accept queue never filled: cannot make a listener that does not answer")
