"""A worker's side of ``--workers``: its link to the supervisor, and through it to the other workers.

The worker is an ordinary voicebridge process with three differences, all here:

- its sockets are inherited (voicebridge/workers/sockets.py), named in ``VOICEBRIDGE_WORKER``;
- its limits count the whole machine: it tells the supervisor its census (started and
  handshaking calls, per tenant) whenever it changes, and every reservation it makes or
  claims; the supervisor hands it the others' (``Capacity.share_with``);
- signals go to the supervisor, which passes them on as commands: ``drain``, ``cut``,
  ``reload``, and ``exit`` once every worker has drained. A worker whose supervisor goes away
  drains and exits.

``/metrics`` on any worker answers for all of them (``gather_metrics``).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger, LogLevel

from voicebridge.observe.logs import printable
from voicebridge.workers import control

log = Logger(namespace="voicebridge.worker")
control_log = Logger(namespace="voicebridge.control")

ENVIRONMENT = "VOICEBRIDGE_WORKER"
METRICS_TIMEOUT = 2.0  # the supervisor's own wait for the other workers is shorter (supervisor.METRICS_WAIT)


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor hands a worker: its number, its control pipes, its sockets."""

    index: int
    workers: int  # how many the supervisor runs, this one included
    control_in: int
    control_out: int
    listen: tuple[tuple[str, int], ...]  # (description, inherited fd), in --listen order

    def to_environment(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "workers": self.workers,
                "control": [self.control_in, self.control_out],
                "listen": [list(x) for x in self.listen],
            }
        )


def worker_spec(environ=os.environ) -> WorkerSpec | None:
    """This process's spec if a supervisor started it, else None."""
    raw = environ.get(ENVIRONMENT)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        control_in, control_out = data["control"]
        return WorkerSpec(
            int(data["index"]),
            int(data["workers"]),
            int(control_in),
            int(control_out),
            tuple((str(d), int(fd)) for d, fd in data["listen"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{ENVIRONMENT} is not what a voicebridge supervisor sets ({e}); unset it") from None


class _ControlProtocol(protocol.Protocol):
    def __init__(self, link: SupervisorLink):
        self.link = link
        self.decoder = control.LineDecoder()

    def connectionMade(self):
        self.link.attach(self.transport)

    def dataReceived(self, data):
        deliver(self.decoder, data, self.link.received, "the supervisor")

    def connectionLost(self, reason):
        self.link.supervisor_gone()


class SupervisorLink(Service):
    """The worker's end of the control pipes; ``Capacity`` asks it about the other workers."""

    name = "supervisor-link"

    def __init__(self, spec: WorkerSpec, registry, metrics, reactor, on_drain, on_cut, on_reload):
        self.spec = spec
        self.registry = registry
        self.metrics = metrics
        self.reactor = reactor
        self.on_drain, self.on_cut, self.on_reload = on_drain, on_cut, on_reload
        self.transport = None
        self.gone = False
        self.draining = False
        self._peers = control.NO_CENSUS
        self._sent_census = None
        self._census_call = None
        self._gathers: dict[int, defer.Deferred] = {}
        self._ids = itertools.count(1)
        self._released = defer.Deferred()
        registry.capacity.share_with(self)
        registry.on_census = self._census_changed
        metrics.share_with(self)

    # Life cycle.

    def startService(self):
        super().startService()
        from twisted.internet import stdio

        stdio.StandardIO(_ControlProtocol(self), stdin=self.spec.control_in, stdout=self.spec.control_out, reactor=self.reactor)

    def stopService(self):
        # The process is going: its pipes close as the reactor stops, which is not the supervisor going away.
        self.gone = True
        return super().stopService()

    def attach(self, transport) -> None:
        self.transport = transport

    def ready(self, addresses: list[str]) -> None:
        self.send({"op": "ready", "addresses": addresses})
        self._send_census()

    def send(self, message: dict) -> None:
        if self.transport is not None and not self.gone:
            self.transport.write(control.encode(message))

    def released(self) -> defer.Deferred:
        """After the drain: tell the supervisor, and fire when it says every worker has drained (or
        at once after a cut, or when the supervisor is gone), so the sockets keep answering 503 meanwhile."""
        if not (self.gone or self._released.called):
            self.send({"op": "drained"})
        return self._released

    def _release(self) -> None:
        if not self._released.called:
            self._released.callback(None)

    def supervisor_gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        log.warn("the supervisor went away: draining, then exiting", event_name="worker.orphaned", worker=self.spec.index)
        gathers, self._gathers = list(self._gathers.values()), {}
        for gather in gathers:
            gather.callback([])
        self._release()
        self._drain()

    def _drain(self) -> None:
        if not self.draining:  # once: a second drain (the supervisor gone while draining) is no cut
            self.draining = True
            self.on_drain()

    # Commands and news from the supervisor.

    def received(self, message: dict) -> None:
        """``message`` has passed ``control.problem``: its fields are there, with their types."""
        op = message["op"]
        if op == "peers":
            self._peers = message
        elif op == "reserve":
            self.registry.capacity.peer_reserved(message["sid"], message["tenant"], message["seconds"])
            log.debug(
                "reservation for {callSid} made elsewhere (or before this worker started), {seconds:.1f}s left",
                event_name="worker.reservation_heard",
                callSid=printable(message["sid"], 64),
                seconds=message["seconds"],
            )
        elif op == "claim":
            self.registry.capacity.peer_claimed(message["sid"])
        elif op == "metrics-request":
            self.send({"op": "metrics", "id": message["id"], "families": self.metrics.wire()})
        elif op == "metrics":
            gather = self._gathers.pop(message["id"], None)
            if gather is not None:
                gather.callback(message["families"])
        elif op == "drain":
            self._drain()
        elif op == "cut":
            self._release()
            self._drain()
            self.on_cut()
        elif op == "exit":
            self._release()
        elif op == "reload":
            self.on_reload()
        else:
            log.warn("control message {op!r} is not for a worker", event_name="worker.control_error", op=op)

    # What Capacity asks (Capacity.share_with).

    def census(self) -> tuple[int, int]:
        return self._peers["started"], self._peers["handshaking"]

    def started_for(self, tenant_id: str) -> int:
        return self._peers["tenants"].get(tenant_id, 0)

    def reserved(self, call_sid: str, tenant_id: str | None, seconds: float) -> None:
        self.send({"op": "reserve", "sid": call_sid, "tenant": tenant_id, "seconds": seconds})

    def claimed(self, call_sid: str) -> None:
        self.send({"op": "claim", "sid": call_sid})

    def _census_changed(self) -> None:
        # Several changes in one reactor turn (a burst of handshakes) make one message.
        if self._census_call is None:
            self._census_call = self.reactor.callLater(0, self._send_census)

    def _send_census(self) -> None:
        self._census_call = None
        started, handshaking = self.registry.census()
        census = {"started": started, "handshaking": handshaking, "tenants": self.registry.started_by_tenant()}
        if census != self._sent_census:
            self._sent_census = census
            self.send({"op": "census", **census})

    # /metrics for the whole machine (MetricsResource).

    def gather_metrics(self) -> defer.Deferred:
        """Fires with [worker index, families] of each other worker that answered."""
        if self.gone:
            return defer.succeed([])
        gather_id = next(self._ids)
        gather = self._gathers[gather_id] = defer.Deferred()
        self.send({"op": "metrics-request", "id": gather_id})

        def timed_out():
            if self._gathers.pop(gather_id, None) is gather:
                log.warn("the supervisor did not answer a metrics request", event_name="worker.metrics_timeout")
                gather.callback([])

        timer = self.reactor.callLater(METRICS_TIMEOUT, timed_out)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return gather.addBoth(done)


def deliver(decoder: control.LineDecoder, data: bytes, handle, sender: str, **fields) -> None:
    """Hand each whole message in ``data`` to ``handle``. What is wrong with a line, or what ``handle``
    raises, is logged naming the ``sender`` and dropped: one bad message never cuts the pipe."""
    messages, problems = decoder.feed(data)
    for wrong in problems:
        control_log.error(
            "bad control message from {sender}: {problem}",
            event_name="worker.control_error",
            sender=sender,
            problem=wrong,
            **fields,
        )
    for message in messages:
        try:
            handle(message)
        except Exception:
            control_log.failure(
                "control message {op} from {sender} failed",
                event_name="worker.control_error",
                sender=sender,
                op=message["op"],
                **fields,
                level=LogLevel.error,
            )
