"""The one HTTP site voicebridge serves: webhook, media stream and health checks on one port."""

from __future__ import annotations

from twisted.web.resource import NoResource, Resource

from voicebridge.call.stream import MediaStreamFactory, StreamResource
from voicebridge.observe.metrics import Metrics
from voicebridge.web.channel import BoundedSite
from voicebridge.web.connectaction import ACTION_PATH, ConnectActionResource, connect_action_url
from voicebridge.web.health import Healthz, Readyz
from voicebridge.web.publicurl import RequestView
from voicebridge.web.webhook import VoiceWebhook

INDEX = b"""voicebridge: Twilio voice webhook and Media Streams bridge.
  POST /voice          Twilio voice webhook (answers <Connect><Stream>)
  GET  /twilio-media   Twilio Media Streams WebSocket
  GET  /healthz        liveness
  GET  /readyz         readiness (503 while draining)
  GET  /metrics        Prometheus metrics
  POST /connect-action Twilio's <Connect action> request when a stream ends
"""


class NotFound(NoResource):
    """404, marked as voicebridge's own so ``voicebridge probe`` can tell it from a proxy's."""

    def render(self, request):
        request.setHeader(b"X-Voicebridge-Diagnosis", b"not-found")
        return super().render(request)


class Root(Resource):
    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return INDEX

    def getChild(self, path, request):
        if path == b"":
            return self
        return NotFound(
            "No such resource. voicebridge serves /voice, /twilio-media, /healthz, /readyz, /metrics and /connect-action."
        )


class VoiceSite(BoundedSite):
    """A Site that names itself and never shows a traceback to a client."""

    displayTracebacks = False
    noisy = False

    def getResourceFor(self, request):
        request.setHeader(b"Server", b"voicebridge")
        return super().getResourceFor(request)


def build_site(settings, registry, admission, urls) -> VoiceSite:
    root = Root()
    metrics = Metrics(registry)
    webhook = VoiceWebhook(settings, admission, urls)
    webhook.connect_action = connect_action_url(registry, urls)
    root.putChild(b"voice", metrics.timed(webhook))
    root.putChild(
        ACTION_PATH.strip("/").encode("ascii"), ConnectActionResource(registry.connect_actions, settings, admission, urls)
    )
    factory = MediaStreamFactory(registry, urls, settings)
    root.putChild(urls.stream_path.strip("/").encode("ascii"), StreamResource(factory, admission, urls))
    root.putChild(b"healthz", Healthz())
    root.putChild(b"readyz", Readyz(registry))
    root.putChild(b"metrics", metrics.resource())
    site = VoiceSite(root, settings.limits, settings.show_numbers)
    site.client_of = lambda request: urls.client(RequestView.of(request))
    site.metrics = metrics  # a worker shares it with the others (voicebridge/workers/peers.py)
    return site
