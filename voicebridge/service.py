"""The service tree: one ``VoiceBridgeService`` owning the calls, with one ``ListenService`` per endpoint.

Listening is done here rather than with ``strports.service`` so the bound addresses are known
(for the start-up banner, tests that listen on port 0, and readiness), and so shutdown can end
the calls before the ports close.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from voicebridge.calls import CLOSE_GOING_AWAY

log = Logger(namespace="voicebridge.service")


def describe_address(kind: str, address) -> str:
    """``tcp 127.0.0.1:8080``, ``ssl [::]:443``, ``unix /run/voicebridge.sock``."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        host = f"[{host}]" if ":" in host else host
        return f"{kind} {host}:{port}"
    name = getattr(address, "name", None)
    return f"{kind} {name.decode() if isinstance(name, bytes) else name}" if name else f"{kind} {address}"


class ListenService(Service):
    """One ``--listen`` endpoint. A port that cannot be bound stops start-up with the reason."""

    def __init__(self, description: str, factory, reactor):
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port = None
        self.listening: defer.Deferred | None = None

    def privilegedStartService(self):
        # Bind here, before twistd drops privileges, so ports below 1024 work with --uid.
        endpoint = serverFromString(self.reactor, self.description)
        self.listening = endpoint.listen(self.factory)
        outcome = []
        self.listening.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0] if outcome else None
        self.listening = defer.succeed(self.port) if outcome else self.listening
        super().privilegedStartService()

    def startService(self):
        if self.listening is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None

    @property
    def address(self) -> str:
        if self.port is None:
            return self.description
        return describe_address(self.description.split(":", 1)[0], self.port.getHost())


class VoiceBridgeService(MultiService):
    """The daemon: listeners as children; on stop, live calls end before the ports close."""

    shutdown_grace = 5.0

    def __init__(self, settings, registry, site, admission, urls, reactor):
        super().__init__()
        self.setName("voicebridge")
        self.settings = settings
        self.registry = registry
        self.site = site
        self.admission = admission
        self.urls = urls
        self.reactor = reactor
        self.listeners = []
        for description in settings.listen:
            listener = ListenService(description, site, reactor)
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def startService(self):
        super().startService()
        self.banner()

    def banner(self) -> None:
        settings = self.settings
        addresses = ", ".join(listener.address for listener in self.listeners)
        ports = [listener.port.getHost().port for listener in self.listeners if hasattr(listener.port.getHost(), "port")]
        if self.urls.public_url:
            stream_url = (
                self.urls.public_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + self.urls.stream_path
            )
        else:
            stream_url = f"derived per request from Host (wss://HOST{self.urls.stream_path}); set --public-url"
        tenants = ", ".join(sorted(settings.config.tenants)) or "none"
        log.info(
            "voicebridge listening on {addresses}; public url {public_url}; stream url given to Twilio: {stream_url}; "
            "signatures {signatures}; handler {handler}; tenants {tenants}",
            event_name="service.listening",
            addresses=addresses,
            listening_ports=ports,
            public_url=self.urls.public_url or "not set",
            stream_url=stream_url,
            signatures="enforced" if self.admission.enforcing else "NOT CHECKED (development mode)",
            handler=settings.handler,
            tenants=tenants,
        )
        if not self.admission.enforcing:
            log.warn(
                "DEVELOPMENT MODE: no Twilio auth token (TWILIO_AUTH_TOKEN or --auth-token-file), so signatures "
                "are not checked and only loopback clients (127.0.0.1, ::1) are served. Do not expose this to Twilio.",
                event_name="service.development_mode",
            )

    @defer.inlineCallbacks
    def stopService(self):
        calls = list(self.registry.calls)
        if calls:
            log.info("shutting down: closing {count} live call(s) with 1001", count=len(calls))
            for call in calls:
                call.hangup("shutdown", CLOSE_GOING_AWAY)
            finished = defer.DeferredList([c.finished for c in calls], consumeErrors=True)
            finished.addTimeout(self.shutdown_grace, self.reactor)
            try:
                yield finished
            except defer.TimeoutError:
                log.warn(
                    "shutdown: {count} call(s) did not finish within {grace}s",
                    count=len(self.registry.calls),
                    grace=self.shutdown_grace,
                )
        yield super().stopService()
