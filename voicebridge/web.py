"""The one HTTP site voicebridge serves: webhook, media stream and health checks on one port."""

from __future__ import annotations

from twisted.web.resource import NoResource, Resource

from voicebridge.channel import BoundedSite
from voicebridge.health import Healthz, Readyz
from voicebridge.media import MediaStreamFactory, StreamResource
from voicebridge.webhook import VoiceWebhook

INDEX = b"""voicebridge: Twilio voice webhook and Media Streams bridge.
  POST /voice          Twilio voice webhook (answers <Connect><Stream>)
  GET  /twilio-media   Twilio Media Streams WebSocket
  GET  /healthz        liveness
  GET  /readyz         readiness (503 while draining)
"""


class Root(Resource):
    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return INDEX

    def getChild(self, path, request):
        if path == b"":
            return self
        return NoResource("No such resource. voicebridge serves /voice, /twilio-media, /healthz and /readyz.")


class VoiceSite(BoundedSite):
    """A Site that names itself and never shows a traceback to a client."""

    displayTracebacks = False
    noisy = False

    def getResourceFor(self, request):
        request.setHeader(b"Server", b"voicebridge")
        return super().getResourceFor(request)


def build_site(settings, registry, admission, urls) -> VoiceSite:
    root = Root()
    root.putChild(b"voice", VoiceWebhook(settings, admission, urls))
    factory = MediaStreamFactory(registry, urls, settings)
    root.putChild(urls.stream_path.strip("/").encode("ascii"), StreamResource(factory, admission, urls))
    root.putChild(b"healthz", Healthz())
    root.putChild(b"readyz", Readyz(registry))
    return VoiceSite(root, settings.limits, settings.show_numbers)
