"""Listening sockets for ``--workers``: bound by the supervisor, accepted on by the workers.

The supervisor binds every socket before privileges drop and never accepts on one:

- ``tcp:``, ``tcp6:`` and ``ssl:`` get one socket per worker, bound with SO_REUSEPORT so the
  kernel spreads connections over the workers. The supervisor only binds it; the worker calls
  listen() when its service is up, so a worker that cannot start never takes a connection. The
  socket dies with its worker, and the supervisor binds a fresh one for its successor.
- ``unix:`` and ``systemd:`` sockets cannot be multiplied: one socket, listening, is shared by
  every worker, and each worker takes one connection per wake-up so that one of them does not
  swallow a whole burst.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from twisted.internet import tcp, unix
from twisted.internet.abstract import isIPv6Address
from twisted.logger import Logger

from voicebridge.tls import listen as tls

log = Logger(namespace="voicebridge.workers")

PER_WORKER = ("tcp", "tcp6", "ssl")
SHARED = ("unix", "systemd")
_TCP_KEYS = ("port", "interface", "backlog")


class ListenError(ValueError):
    """A ``--listen`` description that ``--workers`` cannot serve, with the reason."""


@dataclass(frozen=True)
class ListenSpec:
    description: str
    kind: str  # one of PER_WORKER or SHARED
    port: int = 0
    interface: str = ""
    backlog: int = 50

    @property
    def per_worker(self) -> bool:
        return self.kind in PER_WORKER

    @property
    def family(self) -> int:
        if self.kind == "tcp6" or isIPv6Address(self.interface):
            return socket.AF_INET6
        return socket.AF_INET


def parse_listen(description: str) -> ListenSpec:
    """What the supervisor binds for one ``--listen`` description."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind == "ssl":
        try:
            spec = tls.parse_ssl(description)
        except tls.TLSConfigError as e:
            raise ListenError(str(e)) from None
        return ListenSpec(description, "ssl", spec.port, spec.interface, spec.backlog)
    if kind in SHARED:
        return ListenSpec(description, kind)
    if kind not in ("tcp", "tcp6"):
        raise ListenError(
            f"--listen {description}: --workers serves tcp:, tcp6:, ssl:, unix: and systemd: endpoints, not {kind}:"
        )
    args, kwargs = tls.split_description(description)
    port, interface, backlog = tls.tcp_fields(
        description, args, kwargs, _TCP_KEYS, f"{kind}:PORT", ListenError, "::" if kind == "tcp6" else ""
    )
    return ListenSpec(description, kind, port, interface, backlog)


def bind_reuseport(spec: ListenSpec, port: int | None = None) -> socket.socket:
    """A socket bound to the spec's address (``port`` overrides it: the one port 0 picked), not listening."""
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # IPV6_V6ONLY as the system has it, like Twisted's tcp6:
        sock.bind((spec.interface, spec.port if port is None else port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _OneAcceptTCPPort(tcp.Port):
    """A shared socket: one accept per wake-up, so every worker woken gets its turn."""

    numberAccepts = property(lambda self: 1, lambda self, value: None)


class _SharedUnixPort(unix.Port):
    """A worker's view of the supervisor's unix socket: one accept per wake-up, and the socket
    file stays when the worker goes (the other workers still accept on it)."""

    numberAccepts = property(lambda self: 1, lambda self, value: None)

    def connectionLost(self, reason):
        tcp.Port.connectionLost(self, reason)  # unix.Port's would unlink the file


def private_adopt_problems() -> list[str]:
    """Whether the private constructor the shared sockets need is there, shaped as used (else: the public one)."""
    import inspect

    found = []
    for cls, args in ((tcp.Port, (None, 0, 0, None)), (unix.Port, (None, 0, None))):
        name = f"twisted.internet.{cls.__module__.rsplit('.', 1)[-1]}.Port._fromListeningDescriptor"
        method = getattr(cls, "_fromListeningDescriptor", None)
        if method is None:
            found.append(f"{name} (missing)")
            continue
        try:
            inspect.signature(method).bind(*args)
        except (TypeError, ValueError):
            found.append(f"{name} (does not take {len(args)} arguments)")
    return found


def adopt(reactor, fd: int, spec: ListenSpec, factory, tls_settings=None):
    """Listen (per-worker sockets) and accept on an inherited socket; the listening port.

    ``fd`` is duplicated; the caller closes its own. ``ssl:`` wraps ``factory`` in TLS with
    ``tls_settings`` (a ``tls.ReloadableTLS``), as ``listenSSL`` does. A per-worker socket is
    Twisted's own port, through the public ``adoptStreamPort``. A shared socket needs a port of
    ours (one accept per wake-up, and a unix socket file left in place), which only Twisted's
    private constructor builds; where a Twisted release renamed it (``private_adopt_problems``),
    the public port serves it, without those two refinements, and ``workers.adopt_fallback`` says so.
    """
    sock = socket.socket(fileno=fd)
    try:
        family = sock.family
        sock.setblocking(False)
        if spec.per_worker:
            sock.listen(spec.backlog)
        if spec.kind == "ssl":
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(tls_settings, False, factory)
        problems = [] if spec.per_worker else private_adopt_problems()
        if spec.per_worker or problems:
            if problems:
                log.warn(
                    "{kind}: socket shared by workers served by Twisted's public adoptStreamPort, since {missing}: "
                    "each worker may take a whole burst of connections"
                    + (", and the socket file goes when this worker stops" if family == socket.AF_UNIX else ""),
                    event_name="workers.adopt_fallback",
                    kind=spec.kind,
                    missing="; ".join(problems),
                )
            return reactor.adoptStreamPort(sock.fileno(), family, factory)
        if family == socket.AF_UNIX:
            port = _SharedUnixPort._fromListeningDescriptor(reactor, sock.fileno(), factory)
        else:
            port = _OneAcceptTCPPort._fromListeningDescriptor(reactor, sock.fileno(), family, factory)
        port.startListening()
    finally:
        sock.detach()  # the fd stays the caller's: the port listens on its own duplicate
    return port
