"""The service tree: one ``VoiceBridgeService`` owning the calls, with one ``ListenService`` per endpoint.

Listening is done here rather than with ``strports.service`` so the bound addresses are known
(for the start-up banner, tests that listen on port 0, and readiness), and so shutdown can end
the calls before the ports close.
"""

from __future__ import annotations

import os

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from voicebridge.daemon.drain import Drain
from voicebridge.daemon.notify import notify
from voicebridge.daemon.startup import bind_error
from voicebridge.tls import listen as tls
from voicebridge.workers import sockets

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


def listen_now(endpoint, factory):
    """``endpoint.listen(factory)``'s port if it answers at once (tcp, ssl, unix, systemd do), else None.
    One that cannot bind raises here, so start-up stops with the reason."""
    outcome = []
    endpoint.listen(factory).addBoth(outcome.append)
    if outcome and isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0] if outcome else None


class ListenService(Service):
    """One ``--listen`` endpoint. A port that cannot be bound stops start-up with the reason."""

    def __init__(self, description: str, factory, reactor, tls_settings: tls.ReloadableTLS | None = None):
        """``tls_settings``: for an ``ssl:`` description, what start-up built and checked (else built here)."""
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port = None
        self.bound = False
        self.tls: tls.ReloadableTLS | None = tls_settings

    def listen(self, factory) -> defer.Deferred:
        if tls.is_ssl(self.description):
            # Twisted's ssl: parser keeps only the first certificate of certKey: build it here.
            endpoint, self.tls = tls.server_endpoint(self.reactor, self.description, self.tls)
        else:
            endpoint = serverFromString(self.reactor, self.description)
        return endpoint.listen(factory)

    def privilegedStartService(self):
        # Bind here, before twistd drops privileges, so ports below 1024 work with --uid.
        try:
            self.port = listen_now(self, self.factory)
        except CannotListenError as e:  # one line naming the flag, the value and the fix, not a traceback
            raise SystemExit(f"voicebridge: {bind_error(self.description, e)}") from None
        self.bound = True
        if self.tls is not None and self.port is not None:
            self.tls.listener = self.address  # its logs name the bound address
            self.tls.announce()
        super().privilegedStartService()

    def startService(self):
        if not self.bound:
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


class AdoptedListenService(ListenService):
    """A worker's ``--listen`` endpoint: a socket the supervisor bound (voicebridge/workers/sockets.py)."""

    def __init__(self, description: str, fd: int, factory, reactor, tls_settings: tls.ReloadableTLS | None = None):
        super().__init__(description, factory, reactor, tls_settings)
        self.fd = fd

    def listen(self, factory) -> defer.Deferred:
        spec = sockets.parse_listen(self.description)
        if spec.kind == "ssl" and self.tls is None:
            self.tls = tls.build(self.description)
        try:
            return defer.succeed(sockets.adopt(self.reactor, self.fd, spec, factory, self.tls))
        finally:
            os.close(self.fd)  # the port holds its own duplicate


class VoiceBridgeService(MultiService):
    """The daemon: listeners as children; on stop, a drain lets live calls end before the ports close.

    ``listeners``: the ``ListenService``s to serve on (default: one per ``--listen``). ``link``: a
    worker's ``SupervisorLink``, which is told when the service listens, and holds the ports open
    after the drain until every worker has drained.
    """

    def __init__(self, settings, registry, site, admission, urls, reactor, listeners=None, link=None):
        super().__init__()
        self.setName("voicebridge")
        self.settings = settings
        self.registry = registry
        self.site = site
        self.admission = admission
        self.urls = urls
        self.reactor = reactor
        self.link = link
        self.drain = Drain(registry, reactor, settings.limits.drain_timeout)
        if listeners is None:
            listeners = [ListenService(d, site, reactor, settings.tls.get(d)) for d in settings.listen]
        self.listeners = listeners
        for listener in listeners:
            listener.setServiceParent(self)
        if link is not None:
            link.setServiceParent(self)

    def startService(self):
        super().startService()
        addresses = [listener.address for listener in self.listeners]
        if self.link is not None:
            log.info(
                "worker {worker} listening on {addresses}",
                event_name="worker.listening",
                worker=self.link.spec.index,
                addresses=", ".join(addresses),
            )
            self.link.ready(addresses)
            return
        self.banner()
        notify("READY=1", f"STATUS=listening on {', '.join(addresses)}")

    def reload(self) -> None:
        """SIGHUP: load renewed TLS certificates; live connections keep theirs."""
        secured = [listener for listener in self.listeners if listener.tls is not None]
        if not secured:
            log.info("SIGHUP: no ssl: listener, nothing to reload", event_name="service.reload")
            return
        results = [listener.tls.reload() for listener in secured]
        notify(f"STATUS=certificate reload: {sum(results)} of {len(results)} listener(s) reloaded")

    def banner(self) -> None:
        ports = [listener.port.getHost().port for listener in self.listeners if hasattr(listener.port.getHost(), "port")]
        banner(self.settings, self.urls, self.admission.enforcing, [listener.address for listener in self.listeners], ports)

    @defer.inlineCallbacks
    def stopService(self):
        yield self.drain.run()
        if self.link is not None:
            # Held open (503 for all) until every worker has drained: a stream now would be cut at exit.
            self.registry.drained = True
            yield self.link.released()
        yield super().stopService()


def banner(settings, urls, enforcing: bool, addresses: list[str], ports: list[int], **extra) -> None:
    """The start-up banner: what is served where, what Twilio is told, whether signatures count (``Admission.enforcing``)."""
    if urls.public_url:
        stream_url = urls.public_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + urls.stream_path
    else:
        stream_url = f"derived per request from Host (wss://HOST{urls.stream_path}); set --public-url"
    if getattr(settings, "fleet", None) is not None:
        extra = {**extra, "fleet": settings.fleet.shown}  # the Redis URL, its password never shown
    log.info(
        "voicebridge listening on {addresses}; public url {public_url}; stream url given to Twilio: {stream_url}; "
        "signatures {signatures}; handler {handler}; tenants {tenants}; fast path {fast_path} ({fast_path_reason})"
        + "".join(f"; {k} {{{k}}}" for k in extra),
        event_name="service.listening",
        addresses=", ".join(addresses),
        listening_ports=ports,
        public_url=urls.public_url or "not set",
        stream_url=stream_url,
        signatures="enforced" if enforcing else "NOT CHECKED (development mode)",
        handler=settings.handler,
        tenants=", ".join(sorted(settings.config.tenants)) or "none",
        fast_path="on" if settings.fast_path else "off",
        fast_path_reason=settings.fast_path_reason,
        **extra,
    )
    if not enforcing:
        log.warn(
            "DEVELOPMENT MODE: no Twilio auth token (TWILIO_AUTH_TOKEN or --auth-token-file), so signatures "
            "are not checked and only loopback clients (127.0.0.1, ::1) are served. Do not expose this to Twilio.",
            event_name="service.development_mode",
        )
