"""The connection to Redis: one for commands, one for pub/sub, both kept up without ever blocking.

txredisapi speaks Redis on Twisted's own reactor (no thread, no asyncio bridge on the epoll
reactor); its pool slots reconnect with a capped back-off. What is added here:

- a command never waits for a connection: while none is up, it fails at once
  (``Unavailable``), and the fleet decides without Redis (``--redis-unavailable``);
- a command gets ``timeout`` seconds for its answer, after which the caller decides without it
  (the answer, when it comes, is consumed and dropped, so replies never slip out of order);
- at most ``MAX_PENDING`` commands wait on the wire: a Redis that accepts and never answers
  cannot make memory grow with every webhook;
- ``up`` and ``down`` callbacks, so live calls are registered again when Redis comes back;
- the subscriber connection subscribes again after every reconnection.

The password (from the URL or ``--redis-password-file``) never reaches a log line: ``RedisURL.shown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.logger import Logger

from voicebridge.config.file import Secret, read_secret_file
from voicebridge.observe.logs import printable

log = Logger(namespace="voicebridge.fleet")

CONNECT_TIMEOUT = 5.0
MAX_PENDING = 1000
RETRY_MAX_DELAY = 2.0  # seconds between reconnection attempts at most: calls are put back soon after Redis returns


class Unavailable(Exception):
    """No connection to Redis now, or no answer in time."""


@dataclass(frozen=True)
class RedisURL:
    scheme: str  # redis, rediss, unix
    host: str | None = None
    port: int = 6379
    path: str | None = None  # unix socket
    db: int = 0
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def shown(self) -> str:
        """For logs and the banner: the password is never shown."""
        user = quote(self.username or "", safe="")
        auth = f"{user}:***@" if self.password is not None else (f"{user}@" if user else "")
        if self.scheme == "unix":
            return f"unix://{auth}{self.path}" + (f"?db={self.db}" if self.db else "")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{auth}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str, password_file: str | None = None) -> RedisURL:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path/redis.sock[?db=N]``.

    The password comes from ``password_file`` when given (it wins over one in the URL). Raises
    ValueError with a message that never contains the password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("--redis is not a URL (redis://host:6379/0, rediss://host:6380/0, unix:///path/redis.sock)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--redis: the scheme must be redis://, rediss:// or unix://, not {scheme or 'none'!r}")
    username = unquote(parts.username) if parts.username else None
    password = Secret(unquote(parts.password)) if parts.password else None
    query = parse_qs(parts.query)
    if password_file:
        password = read_secret_file(password_file, "--redis-password-file")
    db_text = query.get("db", [""])[0] if scheme == "unix" else parts.path.strip("/")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(f"--redis: the database must be a number, not {db_text!r}") from None
    if db < 0:
        raise ValueError("--redis: the database must be 0 or more")
    if scheme == "unix":
        if not parts.path:
            raise ValueError("--redis unix:// needs the socket's path: unix:///run/redis/redis.sock")
        return RedisURL("unix", path=parts.path, db=db, username=username, password=password)
    if not parts.hostname:
        raise ValueError(f"--redis {scheme}:// needs a host: {scheme}://host:6379/0")
    return RedisURL(scheme, parts.hostname, port or 6379, None, db, username, password)


_QUIET = Logger(observer=lambda event: None)


class _ReportingEndpoint:
    """An endpoint that tells the owner why a connection attempt failed (once per reason: see ``Redis._unreachable``)."""

    def __init__(self, endpoint, owner):
        self.endpoint = endpoint
        self.owner = owner

    def connect(self, factory):
        def failed(failure):
            self.owner._unreachable(failure.getErrorMessage())
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class _Factory(txredisapi.RedisFactory):
    """A pool of one connection that tells its owner when it is up and down, and keeps trying."""

    maxDelay = RETRY_MAX_DELAY
    initialDelay = 0.25

    def __init__(self, owner, url: RedisURL, protocol=None):
        if protocol is not None:
            self.protocol = protocol
        password = str(url.password) if url.password is not None else None
        # Not "lazy": txredisapi then logs a refused AUTH on its own at every retry; connectionError below logs it once.
        super().__init__(url.shown, url.db or None, 1, isLazy=False, password=password, username=url.username)
        self.owner = owner

    def startConnecting(self, endpoint):
        endpoint = _ReportingEndpoint(endpoint, self.owner)
        pool_slot = getattr(txredisapi, "_PoolSlot", None)
        if pool_slot is None or not hasattr(ClientService, "_log"):
            # Another txredisapi or Twisted than the one these private names come from: connect as it does
            # (its retries are logged by Twisted, more chattily), rather than fail at start-up.
            return super().startConnecting(endpoint)
        for _ in range(self.poolsize):
            # Twisted's ClientService logs every retry, taking its logger when it is made: fleet.redis_down
            # and fleet.redis_unreachable say it once instead.
            saved, ClientService._log = ClientService._log, _QUIET
            try:
                slot = pool_slot(self, endpoint, self.reconnect)
            finally:
                ClientService._log = saved
            self.slots.append(slot)
            slot.start()

    def addConnection(self, conn):
        _no_delay(conn.transport)
        super().addConnection(conn)
        if conn in self.pool and self is self.owner._commands:
            # Up once it has answered: over TLS without a password, the handshake is only known done then.
            conn.ping().addCallbacks(lambda _: conn in self.pool and self.owner._up(self, conn), lambda _: None)

    def delConnection(self, conn):
        super().delConnection(conn)
        self.owner._down(self, conn)

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        lost = protocol.connectionLost

        def connection_lost(reason):
            if self is self.owner._commands and self.owner.conn is not protocol:
                # Lost before it was usable: a TLS handshake or a certificate refused, say.
                self.owner._unreachable(reason.getErrorMessage())
            return lost(reason)

        protocol.connectionLost = connection_lost
        return protocol

    def stopTrying(self):
        # txredisapi stops for good after a refused AUTH or SELECT: keep trying (with the back-off), so a
        # fixed password or ACL is taken without a restart.
        return defer.succeed(None)

    def connectionError(self, why):
        self.owner._error(why)


class _Subscriber(txredisapi.SubscriberProtocol):
    def connectionMade(self):
        d = super().connectionMade()
        self.whenConnected().addCallback(lambda _: self.subscribe(self.factory.owner.channels))
        return d

    def messageReceived(self, pattern, channel, message):
        self.factory.owner._message(channel, message)


class Redis:
    """What the fleet asks of Redis. ``on_up`` and ``on_down`` are called as the command connection comes and goes."""

    def __init__(self, url: RedisURL, reactor, channels=(), on_message=None, on_up=None, on_down=None, ca_file=None):
        self.url = url
        self.reactor = reactor
        self.channels = list(channels)
        self.on_message, self.on_up, self.on_down = on_message, on_up, on_down
        self.ca_file = ca_file
        self.conn = None
        self.pending = 0
        self.available = False
        self._factories = []
        self._last_error = None

    def start(self) -> None:
        self._commands = _Factory(self, self.url)
        self._commands.startConnecting(self._endpoint())
        self._factories.append(self._commands)
        if self.channels:
            self._subscriber = _Factory(self, self.url, _Subscriber)
            self._subscriber.startConnecting(self._endpoint())
            self._factories.append(self._subscriber)

    def stop(self) -> defer.Deferred:
        self.available = False
        return defer.gatherResults([f.disconnect() for f in self._factories], consumeErrors=True)

    def _endpoint(self):
        if self.url.scheme == "unix":
            return UNIXClientEndpoint(self.reactor, self.url.path, timeout=CONNECT_TIMEOUT)
        endpoint = HostnameEndpoint(self.reactor, self.url.host, self.url.port, timeout=CONNECT_TIMEOUT)
        if self.url.tls:
            from twisted.internet import ssl

            trust = None
            if self.ca_file:
                with open(self.ca_file, "rb") as f:
                    trust = ssl.trustRootFromCertificates(
                        [ssl.Certificate.loadPEM(pem) for pem in _pem_blocks(f.read())]
                    )
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(self.url.host, trustRoot=trust), endpoint)
        return endpoint

    # Connection state, from the factories.

    def _up(self, factory, conn) -> None:
        if factory is not self._commands:
            return
        self.conn = conn
        self.pending = 0
        was, self.available = self.available, True
        self._last_error = None
        if not was:
            log.info("connected to Redis at {url}", event_name="fleet.redis_up", url=self.url.shown)
            if self.on_up is not None:
                self.on_up()

    def _down(self, factory, conn) -> None:
        if factory is not self._commands or conn is not self.conn:
            return
        self.conn = None
        was, self.available = self.available, False
        if was:
            log.warn(
                "lost the connection to Redis at {url}; live calls go on, reconnecting",
                event_name="fleet.redis_down",
                url=self.url.shown,
            )
            if self.on_down is not None:
                self.on_down()

    def _error(self, why) -> None:
        text = str(why)
        if self.url.password is not None:
            text = text.replace(str(self.url.password), "***")
        if text != self._last_error:  # once per distinct reason, not once per retry
            self._last_error = text
            log.error("Redis at {url}: {reason}", event_name="fleet.redis_error", url=self.url.shown, reason=text)

    def _unreachable(self, why: str) -> None:
        text = f"could not connect: {why}"
        if text != self._last_error:  # once per distinct reason while it lasts, not once per retry
            self._last_error = text
            log.warn("Redis at {url} {reason}; retrying", event_name="fleet.redis_unreachable", url=self.url.shown,
                     reason=printable(text, 300))

    def _message(self, channel, message) -> None:
        """From the subscriber connection: nothing may escape, or txredisapi drops the connection."""
        if self.on_message is not None:
            try:
                self.on_message(channel, message)
            except Exception:
                log.failure("a message on {channel} failed", event_name="fleet.error", channel=printable(channel, 100))

    # Commands.

    def run(self, script: str, keys, args, timeout: float) -> defer.Deferred:
        """EVALSHA (EVAL the first time) -> the script's reply; fails with ``Unavailable``."""
        return self._command(lambda conn: conn.eval(script, list(keys), [str(a) for a in args]), timeout)

    def publish(self, channel: str, message: str, timeout: float) -> defer.Deferred:
        """-> how many subscribers heard it."""
        return self._command(lambda conn: conn.publish(channel, message), timeout)

    def hget(self, key: str, name: str, timeout: float) -> defer.Deferred:
        return self._command(lambda conn: conn.hget(key, name), timeout)

    def _command(self, send, timeout: float) -> defer.Deferred:
        conn = self.conn
        if conn is None or not self.available:
            return defer.fail(Unavailable("not connected to Redis"))
        if self.pending >= MAX_PENDING:
            return defer.fail(Unavailable(f"{self.pending} commands wait for Redis already"))
        self.pending += 1
        result = defer.Deferred()

        def answered(value):
            self.pending = max(self.pending - 1, 0)
            if timer.active():
                timer.cancel()
            if not result.called:
                if isinstance(value, Exception):  # txredisapi hands some errors back as values
                    result.errback(value)
                else:
                    result.callback(value)

        def failed(failure):
            self.pending = max(self.pending - 1, 0)
            if timer.active():
                timer.cancel()
            if not result.called:
                result.errback(failure)

        def timed_out():
            if not result.called:
                result.errback(Unavailable(f"no answer from Redis within {timeout:g}s"))

        timer = self.reactor.callLater(timeout, timed_out)
        try:
            sent = send(conn)
        except Exception as e:  # a connection that died under us
            timer.cancel()
            self.pending = max(self.pending - 1, 0)
            return defer.fail(Unavailable(str(e)))
        sent.addCallbacks(answered, failed)
        return result


def _no_delay(transport) -> None:
    """Commands are small and answered at once: Nagle's algorithm would hold one back behind another's ACK."""
    for t in (transport, getattr(transport, "transport", None)):  # TLS wraps the TCP transport
        set_no_delay = getattr(t, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
            return


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
