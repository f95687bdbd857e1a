"""Small Twilio voice apps that are not voicebridge, served in-process for ``voicebridge probe`` tests.

They behave like apps people write with Fastify, Express or Flask: a webhook route answering
TwiML, WebSocket routes that echo, stay silent, close at once or refuse the upgrade, a plain GET
on a WebSocket route answered with 426 (or 404, as Express does), and a framework-style 404
page naming the path for everything else.
"""

from __future__ import annotations

import json

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.web.resource import Resource
from twisted.web.server import Site

from voicebridge.twilio import messages

PARAMETERS = '<Parameter name="businessId" value="business-1"/><Parameter name="plan" value="pro"/>'


def connect_stream(url: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{url}">{PARAMETERS}</Stream></Connect></Response>'
    )


# Webhook paths -> (status, content type, body template, extra headers). ``{base}`` is the ws(s)://
# origin the request came in on (wss://HOST behind the TLS proxy, ws://127.0.0.1:PORT directly).
WEBHOOKS = {
    "/voice": (200, "text/xml", connect_stream("{base}/media"), {}),
    "/voice-closing": (200, "text/xml", connect_stream("{base}/closing"), {}),
    "/voice-silent": (200, "text/xml", connect_stream("{base}/silent"), {}),
    "/voice-deny": (200, "text/xml", connect_stream("{base}/deny"), {}),
    "/voice-wrongpath": (200, "text/xml", connect_stream("{base}/twilio-media"), {}),
    "/voice-expresslike": (200, "text/xml", connect_stream("{base}/ws404"), {}),
    "/voice-query": (200, "text/xml", connect_stream("{base}/media?businessId=business-1&amp;plan=pro"), {}),
    "/voice-query-nowhere": (200, "text/xml", connect_stream("{base}/nowhere?businessId=business-1"), {}),
    "/voice-port": (200, "text/xml", connect_stream("{base}:8443/media"), {}),
    "/voice-container": (200, "text/xml", connect_stream("wss://app:8080/media"), {}),
    "/voice-500": (500, "text/html", "<h1>Internal Server Error</h1>", {}),
    "/voice-json": (200, "application/json", '{"ok": true}', {}),
    "/voice-say": (200, "text/xml", "<Response><Say>We are closed.</Say><Hangup/></Response>", {}),
    "/voice-broken": (200, "text/xml", "<Response><Connect><Stream url=", {}),
    "/voice-redirect": (307, "text/plain", "", {"Location": "/voice"}),
    "/voice-forbidden": (403, "text/plain", "Forbidden", {}),
    "/voice-loop": (302, "text/plain", "", {"Location": "/voice-loop"}),
}


class StreamProtocol(WebSocketServerProtocol):
    def onConnect(self, request):
        if self.factory.behaviour == "deny":
            raise ConnectionDeny(403, "Forbidden: bad signature")
        self.stream_sid = None

    def onOpen(self):
        if self.factory.behaviour == "close":
            self.sendClose(1000)

    def onMessage(self, payload, isBinary):
        message = messages.parse(payload)
        if isinstance(message, messages.Start):
            self.stream_sid = message.stream_sid
            self.factory.app.starts.append(message)
        elif isinstance(message, messages.Media) and self.factory.behaviour == "echo":
            self.sendMessage(messages.media(self.stream_sid, message.payload))


class WebSocketRoute(Resource):
    """A framework's WebSocket route: a GET without upgrade gets ``plain_status``."""

    isLeaf = True

    def __init__(self, app, behaviour: str, plain_status: int):
        super().__init__()
        factory = WebSocketServerFactory()
        factory.protocol = StreamProtocol
        factory.behaviour = behaviour
        factory.app = app
        self.websocket = WebSocketResource(factory)
        self.plain_status = plain_status

    def render(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        connection = (request.getHeader(b"connection") or b"").lower()
        if upgrade != b"websocket" or b"upgrade" not in connection:
            if self.plain_status == 404:
                return not_found(request)
            request.setResponseCode(self.plain_status)
            request.setHeader(b"Content-Type", b"text/plain")
            return b"Upgrade Required"
        return self.websocket.render(request)


def not_found(request) -> bytes:
    """Fastify's 404 shape: it names the method and the path."""
    request.setResponseCode(404)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    path = request.path.decode("latin-1")
    method = request.method.decode("latin-1")
    return json.dumps({"message": f"Route {method}:{path} not found", "error": "Not Found", "statusCode": 404}).encode()


class Webhook(Resource):
    isLeaf = True

    def __init__(self, app, spec):
        super().__init__()
        self.app, self.spec = app, spec

    def render(self, request):
        self.app.webhooks.append((request.method, request.path, dict(request.requestHeaders.getAllRawHeaders())))
        status, content_type, body, headers = self.spec
        proto = (request.getHeader(b"x-forwarded-proto") or b"http").decode()
        base = ("wss" if proto == "https" else "ws") + "://" + request.getHeader(b"host").decode()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type.encode())
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode())
        return body.replace("{base}", base).encode()


class AuthWebhook(Webhook):
    """The webhook behind HTTP Basic authentication (user:secret), as Twilio supports it."""

    def render(self, request):
        if (request.getUser(), request.getPassword()) != (b"user", b"secret"):
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Basic realm="voice"')
            return b"Unauthorized"
        return super().render(request)


class Root(Resource):
    def __init__(self, app):
        super().__init__()
        self.app = app
        routes = {
            "/media": ("echo", 426),
            "/closing": ("close", 426),
            "/silent": ("silent", 426),
            "/deny": ("deny", 426),
            "/ws404": ("echo", 404),
        }
        self.children_by_path = {path: WebSocketRoute(app, *spec) for path, spec in routes.items()}
        self.children_by_path.update({path: Webhook(app, spec) for path, spec in WEBHOOKS.items()})
        self.children_by_path["/voice-auth"] = AuthWebhook(app, WEBHOOKS["/voice"])

    def getChild(self, path, request):
        child = self.children_by_path.get(request.path.decode("latin-1"))
        return child if child is not None else _NotFound()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request):
        return not_found(request)


class FakeApp:
    """The app, listening on a loopback port of the test's reactor."""

    def __init__(self, reactor):
        self.starts = []
        self.webhooks = []
        self.site = Site(Root(self))
        self.site.noisy = False
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    @property
    def address(self) -> int:
        return self.port.getHost().port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.address}{path}"

    def stop(self):
        return self.port.stopListening()
