"""The Media Streams endpoint: the upgrade request, the WebSocket, and nothing else.

``StreamResource`` sees every request to ``/twilio-media`` before any WebSocket code does, so
a proxy that dropped the upgrade headers is named (426 + ``X-Voicebridge-Diagnosis``) instead
of vanishing. ``MediaStreamProtocol`` only turns frames into calls on a ``Call``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger
from twisted.web.resource import Resource

from voicebridge.call.closecodes import CLOSE_HANDSHAKE_TIMEOUT, CLOSE_NORMAL
from voicebridge.fastpath.wsfast import FastTextFrames
from voicebridge.observe.logs import mask_url, printable
from voicebridge.web.publicurl import PublicURLError, RequestView, header

log = Logger(namespace="voicebridge.stream")

DIAGNOSIS_HEADER = b"X-Voicebridge-Diagnosis"

_UPGRADE_MISSING = """\
426 Upgrade Required: this is voicebridge's Twilio Media Streams endpoint.

The request reached the daemon without the header "Upgrade: websocket"{connection_note}.
Twilio always sends it, so a proxy in front of voicebridge removed it: the Upgrade and
Connection headers are hop-by-hop and proxies drop them unless told to pass them on.

For nginx, in the location that proxies to voicebridge:
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;   # map $http_upgrade $connection_upgrade
    proxy_read_timeout 3600s;

Twilio reports this as error 31920 (WebSocket handshake failed).
"""


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


class StreamResource(Resource):
    """``/twilio-media``: log the upgrade request, diagnose or refuse it, else hand it to Autobahn."""

    isLeaf = True

    def __init__(self, factory: MediaStreamFactory, admission, urls):
        super().__init__()
        self._websocket = WebSocketResource(factory)
        self.registry = factory.registry
        self.admission = admission
        self.urls = urls

    def render(self, request):
        view = RequestView.of(request)
        client = self.urls.client(view)
        upgrade = header(request, b"upgrade")
        connection = header(request, b"connection")
        query = urlsplit(view.uri).query
        log.info(
            "stream request {method} {uri} client={client} peer={peer} upgrade={upgrade} connection={connection} "
            "host={host} x-forwarded-proto={xfp} signature={signed}",
            event_name="stream.request",
            method=printable(request.method),
            uri=printable(mask_url(view.uri, self.admission.settings.show_numbers)),
            client=client,
            peer=view.peer,
            upgrade=printable(upgrade),
            connection=printable(connection),
            host=printable(view.host),
            xfp=printable(view.forwarded_proto),
            signed="present" if request.getHeader(b"x-twilio-signature") else "absent",
        )
        if request.method != b"GET":
            request.setHeader(b"Allow", b"GET")
            return self._refuse(
                request,
                client,
                405,
                "method-not-allowed",
                "the stream endpoint takes a WebSocket GET; the voice webhook is /voice",
            )
        if "websocket" not in _tokens(upgrade):
            return self._upgrade_missing(request, client, upgrade, connection)
        if "upgrade" not in _tokens(connection):
            return self._refuse(
                request,
                client,
                426,
                "connection-upgrade-missing",
                f"'Upgrade: websocket' arrived but 'Connection: {connection}' lacks 'upgrade': "
                "a proxy rewrote the Connection header (nginx: proxy_set_header Connection $connection_upgrade)",
                diagnosis=b"connection-upgrade-missing",
            )
        try:
            stream_url = self.urls.stream_url(view)
        except PublicURLError as e:
            return self._refuse(request, client, 400, "bad-host", str(e))
        refusal = self.admission.stream(client, stream_url, query, header(request, b"x-twilio-signature"))
        if refusal is not None:
            return self._refuse(request, client, refusal.status, refusal.reason, refusal.message)
        return self._websocket.render(request)

    def _upgrade_missing(self, request, client, upgrade, connection):
        self.registry.handshake_refused("upgrade-missing")
        note = "" if connection is None else f' (Connection: "{printable(connection, 60)}")'
        log.warn(
            "stream request without 'Upgrade: websocket' from {client} (upgrade={upgrade}, connection={connection}): "
            "a proxy in front of voicebridge dropped the upgrade headers; answering 426",
            event_name="stream.upgrade_missing",
            client=client,
            upgrade=printable(upgrade),
            connection=printable(connection),
        )
        request.setResponseCode(426, b"Upgrade Required")
        request.setHeader(b"Upgrade", b"websocket")
        request.setHeader(b"Connection", b"Upgrade")
        request.setHeader(DIAGNOSIS_HEADER, b"upgrade-missing")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return _UPGRADE_MISSING.format(connection_note=note).encode("utf-8")

    def _refuse(self, request, client, status, reason, message, diagnosis=None):
        self.registry.handshake_refused(reason)
        log.warn(
            "stream handshake refused client={client} status={status} reason={reason}: {message}",
            event_name="handshake.refused",
            client=client,
            status=status,
            reason=reason,
            message=message,
        )
        request.setResponseCode(status)
        request.setHeader(DIAGNOSIS_HEADER, (diagnosis or reason.encode("ascii")))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return f"{status}: {message}\n".encode("utf-8")


class MediaStreamProtocol(FastTextFrames, WebSocketServerProtocol):
    """Frames in, calls on a ``Call``; ``send_text`` and ``close`` out. No meaning here.

    ``FastTextFrames`` carries the common frame (one unfragmented text frame) both ways;
    Autobahn everything else.
    """

    call = None

    def onConnect(self, request):
        peer = self.transport.getPeer()
        view = RequestView(
            secure=False,
            host=request.headers.get("host"),
            peer=getattr(peer, "host", "") or "",
            uri=request.path,
            forwarded_for=request.headers.get("x-forwarded-for"),
        )
        query = {k: v[0] for k, v in request.params.items() if v}
        self.call = self.factory.registry.new_call(self, self.factory.urls.client(view), query)
        return None

    def onOpen(self):
        self.text_sink = self.call.text_received  # what onMessage does for text, without the hops
        self.call.opened()
        self.call.guards.watch(self.transport)

    # Fast text frames skip this and go straight to ``text_sink`` (the call's text_received):
    # what a frame means belongs in Call, not here.
    def onMessage(self, payload, isBinary):
        if isBinary:
            self.call.binary_received(len(payload))
        else:
            self.call.text_received(payload)

    def onClose(self, wasClean, code, reason):
        if self.call is not None:
            if self.closedByMe and self.localCloseCode:
                code, reason = self.localCloseCode, self.localCloseReason
            self.call.connection_lost(code, reason, failed=self.failedByMe)
            self.call = self.text_sink = None

    def failHandshake(self, reason, code=400, responseHeaders=None):
        self.factory.registry.handshake_refused("invalid-handshake")
        log.warn(
            "stream handshake refused by the WebSocket layer status={status} reason={reason}: {message}",
            event_name="handshake.refused",
            status=code,
            reason="invalid-handshake",
            message=printable(reason, 200),
        )
        return super().failHandshake(reason, code, responseHeaders)

    # The link a Call talks through: ``send_text`` (FastTextFrames') and ``close``.

    def close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            reason_bytes = reason.encode("utf-8")[:120]
            if code == CLOSE_NORMAL or 3000 <= code <= 4999:
                self.sendClose(code, reason_bytes.decode("utf-8", "ignore"))
            else:
                # Autobahn's sendClose accepts only 1000 and 3000-4999; 1001/1003/1009/1011 are ours too.
                self.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)
        elif self.state == self.STATE_CONNECTING:
            self.dropConnection(abort=True)


class MediaStreamFactory(WebSocketServerFactory):
    protocol = MediaStreamProtocol

    def __init__(self, registry, urls, settings):
        super().__init__(server="voicebridge")
        self.registry = registry
        self.urls = urls
        limits = settings.limits
        self.setProtocolOptions(
            maxMessagePayloadSize=limits.max_message_size,
            maxFramePayloadSize=limits.max_message_size,
            failByDrop=False,  # a broken frame gets its close code (1002, 1007, 1009), not a bare TCP reset
            openHandshakeTimeout=limits.handshake_timeout,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,  # the drain's grace counts on it
            autoPingInterval=limits.ping_interval,
            autoPingTimeout=limits.ping_timeout,
            webStatus=False,
        )
