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

from voicebridge import tls
from voicebridge.drain import Drain
from voicebridge.notify import notify

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

    def __init__(self, description: str, factory, reactor, tls_settings: tls.ReloadableTLS | None = None):
        """``tls_settings``: for an ``ssl:`` description, what start-up built and checked (else built here)."""
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port = None
        self.listening: defer.Deferred | None = None
        self.tls: tls.ReloadableTLS | None = tls_settings

    def privilegedStartService(self):
        # Bind here, before twistd drops privileges, so ports below 1024 work with --uid.
        if tls.is_ssl(self.description):
            # Twisted's ssl: parser keeps only the first certificate of certKey: build it here.
            endpoint, self.tls = tls.server_endpoint(self.reactor, self.description, self.tls)
        else:
            endpoint = serverFromString(self.reactor, self.description)
        self.listening = endpoint.listen(self.factory)
        outcome = []
        self.listening.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0] if outcome else None
        self.listening = defer.succeed(self.port) if outcome else self.listening
        if self.tls is not None and self.port is not None:
            self.tls.listener = self.address  # its logs name the bound address
            self.tls.announce()
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
    """The daemon: listeners as children; on stop, a drain lets live calls end before the ports close."""

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
        self.drain = Drain(registry, reactor, settings.limits.drain_timeout)
        for description in settings.listen:
            listener = ListenService(description, site, reactor, settings.tls.get(description))
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def startService(self):
        super().startService()
        self.banner()
        notify("READY=1", f"STATUS=listening on {', '.join(listener.address for listener in self.listeners)}")

    def reload(self) -> None:
        """SIGHUP: load renewed TLS certificates; live connections keep theirs."""
        secured = [listener for listener in self.listeners if listener.tls is not None]
        if not secured:
            log.info("SIGHUP: no ssl: listener, nothing to reload", event_name="service.reload")
            return
        results = [listener.tls.reload() for listener in secured]
        notify(f"STATUS=certificate reload: {sum(results)} of {len(results)} listener(s) reloaded")

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
        yield self.drain.run()
        yield super().stopService()
