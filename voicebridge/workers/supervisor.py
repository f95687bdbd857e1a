"""``--workers N``: one process per core on the same ports, and the supervisor that keeps them.

The supervisor serves nothing itself. It binds every ``--listen`` before privileges drop
(voicebridge/workers/sockets.py) and starts N workers: ``twist voicebridge`` again, with the same
options, and ``VOICEBRIDGE_WORKER`` naming their sockets and control pipes
(voicebridge/workers/peers.py). Then it:

- restarts a worker that dies, after 1 s, doubling to 30 s while it keeps dying;
- relays what the workers tell one another (voicebridge/workers/control.py): census, reservations and
  claims, so ``--max-calls`` and a tenant's ``max_calls`` hold across the machine (and keeps
  the reservations, for a worker that starts late), and metrics requests, so ``/metrics`` on
  any worker answers for all;
- takes the signals: SIGTERM or SIGINT drains every worker, and once all have drained they exit
  together (each keeps answering 503 until then); a second one cuts the drain; SIGHUP reloads
  the certificates in each;
- re-emits each worker's log events with ``worker`` and ``worker_pid`` added, in its own format;
- tells systemd READY=1 once every worker listens, and STOPPING=1 when the drain begins.

What it knows of the workers and what it must tell whom (census, reservations, restart delays)
is decided by the pure ``voicebridge/workers/bookkeeping.py``; this module does the I/O.
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.application.service import MultiService
from twisted.internet import defer, error, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, eventFromJSON, globalLogPublisher

from voicebridge.call.resolve import close_grace, resolve_handlers
from voicebridge.daemon.drain import grace_for
from voicebridge.daemon.notify import notify
from voicebridge.daemon.service import banner, describe_address, listen_now
from voicebridge.daemon.startup import bind_error
from voicebridge.observe.logs import printable
from voicebridge.web.admission import Admission
from voicebridge.web.publicurl import PublicURLs, TrustedProxies
from voicebridge.workers import control, sockets
from voicebridge.workers.bookkeeping import Books, Gather, Gathers, WorkerState, twist_log_level
from voicebridge.workers.output import StartupOutput
from voicebridge.workers.peers import ENVIRONMENT, WorkerSpec, deliver

log = Logger(namespace="voicebridge.supervisor")

CONTROL_IN, CONTROL_OUT = 0, 3  # a worker's fds: commands in, messages out (1 and 2 are its log and stderr)
FIRST_SOCKET_FD = 4
METRICS_WAIT = 1.5  # for the other workers' families (a worker waits peers.METRICS_TIMEOUT for the answer)
KILL_MARGIN = 15.0  # past the drain timeout and its grace, workers still running are killed
NOT_FOR_WORKERS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")  # the supervisor's alone


class WorkerProcess(WorkerState, protocol.ProcessProtocol):
    """One worker as the supervisor sees it: its pipes; its state and census are the books' (``WorkerState``)."""

    def __init__(self, supervisor: Supervisor, index: int, started_at: float):
        super().__init__(index, started_at)
        self.supervisor = supervisor
        self._control = control.LineDecoder()
        self._log = control.Lines()
        self._stderr = control.Lines()
        self.startup_output = StartupOutput()  # what it writes before it is ready: told as one line

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, fd, data):
        if fd == CONTROL_OUT:
            received = lambda message: self.supervisor.received(self, message)  # noqa: E731
            deliver(self._control, data, received, f"worker {self.index}", worker=self.index)
        elif fd == 1:
            for line in self._log.feed(data):
                self.supervisor.relay_log(self, line)
        elif fd == 2:
            for line in self._stderr.feed(data):
                self.supervisor.relay_output(self, line)

    def processEnded(self, reason):
        for line in (self._log.rest(), self._stderr.rest()):
            if line.strip():
                self.supervisor.relay_output(self, line)
        self.supervisor.tell_startup_output(self)
        self.ended = True
        self.supervisor.worker_ended(self, reason.value)

    def send(self, message: dict) -> None:
        if self.ended or self.transport is None:
            return
        try:
            self.transport.writeToChild(CONTROL_IN, control.encode(message))
        except (KeyError, OSError):
            pass  # its end is closed: it is exiting, and processEnded follows


class Supervisor(MultiService):
    def __init__(self, settings, argv: list[str], count: int, reactor, environ=os.environ):
        """``argv``: the voicebridge options as given, passed to every worker."""
        super().__init__()
        self.setName("voicebridge-supervisor")
        self.settings = settings
        self.argv = list(argv)
        self.count = count
        self.reactor = reactor
        self.environ = environ
        self.log_level = twist_log_level(sys.argv)
        self.urls = PublicURLs(settings.public_url, TrustedProxies(settings.trusted_proxies))
        self.specs = [sockets.parse_listen(d) for d in settings.listen]
        self.ports: dict[int, int] = {}  # spec index -> the port of its per-worker sockets (port 0 picks it once)
        self.shared: dict[int, object] = {}  # spec index -> listening port of a shared socket, never accepting
        self.unclaimed: dict[tuple[int, int], object] = {}  # (slot, spec index) -> socket bound at start-up
        self.books = Books(count, reactor)
        self.restarts: dict[int, object] = {}  # slot -> the delayed restart
        self.stopping = self.announced = False
        self.bound_as: int | None = None  # the user the ports were bound as (privilegedStartService), once bound
        self._waiter: defer.Deferred | None = None
        self.gathers = Gathers()

    # Start-up.

    def privilegedStartService(self):
        # Bound here, before twistd drops privileges (twist calls only startService, which comes here first);
        # a port that cannot be bound stops start-up.
        self.bound_as = os.geteuid()
        for i, spec in enumerate(self.specs):
            if not spec.per_worker:
                try:
                    self.shared[i] = listen_now(serverFromString(self.reactor, spec.description), protocol.Factory())
                except error.CannotListenError as e:
                    raise SystemExit(f"voicebridge: {bind_error(spec.description, e)}") from None
                self.shared[i].stopReading()  # the workers accept on it, never the supervisor
                continue
            for slot in range(self.count):
                try:
                    sock = sockets.bind_reuseport(spec, self.ports.get(i))
                except OSError as e:  # one line naming the flag, the value and the fix (daemon/startup.py)
                    failed = error.CannotListenError(spec.interface, self.ports.get(i, spec.port), e)
                    raise SystemExit(f"voicebridge: {bind_error(spec.description, failed)}") from None
                self.ports.setdefault(i, sock.getsockname()[1])
                self.unclaimed[(slot, i)] = sock
        super().privilegedStartService()

    def startService(self):
        if self.bound_as is None:
            self.privilegedStartService()
        super().startService()
        if os.geteuid() != self.bound_as:
            log.warn(
                "the ports were bound as uid {bound} and the supervisor now runs as uid {now} (twistd --uid): a worker "
                "that dies cannot be replaced, since the kernel shares a port between sockets of one user only. Start "
                "as the service's user instead, with CAP_NET_BIND_SERVICE for ports below 1024 (systemd/voicebridge.service)",
                event_name="supervisor.privileges_dropped",
                bound=self.bound_as,
                now=os.geteuid(),
            )
        log.info(
            "starting {count} worker(s) on {addresses}",
            event_name="supervisor.starting",
            count=self.count,
            addresses=", ".join(self.addresses()),
        )
        for slot in range(self.count):
            self.spawn(slot)

    def addresses(self) -> list[str]:
        out = []
        for i, spec in enumerate(self.specs):
            if spec.per_worker:
                if spec.family == socket.AF_INET6:
                    address = IPv6Address("TCP", spec.interface or "::", self.ports[i])
                else:
                    address = IPv4Address("TCP", spec.interface or "0.0.0.0", self.ports[i])
                out.append(describe_address(spec.kind, address))
            else:
                out.append(describe_address(spec.kind, self.shared[i].getHost()))
        return out

    def spawn(self, slot: int) -> None:
        self.restarts.pop(slot, None)
        owned, listen, child_fds = [], [], {CONTROL_IN: "w", 1: "r", 2: "r", CONTROL_OUT: "r"}
        try:
            for i, spec in enumerate(self.specs):
                if spec.per_worker:
                    sock = self.unclaimed.pop((slot, i), None) or sockets.bind_reuseport(spec, self.ports[i])
                    owned.append(sock)
                    fd = sock.fileno()
                else:
                    fd = self.shared[i].fileno()
                child_fds[FIRST_SOCKET_FD + i] = fd
                listen.append((spec.description, FIRST_SOCKET_FD + i))
        except OSError as e:
            for sock in owned:
                sock.close()
            delay = self._next_delay(slot, 0.0)
            log.error(
                "worker {worker}: could not bind {address}: {error}; trying again in {delay:g}s",
                event_name="worker.bind_failed",
                worker=slot,
                address=spec.description,
                error=e.strerror or str(e),
                delay=delay,
            )
            self.restarts[slot] = self.reactor.callLater(delay, self.spawn, slot)
            return
        spec = WorkerSpec(slot, self.count, CONTROL_IN, CONTROL_OUT, tuple(listen))
        env = {k: v for k, v in self.environ.items() if k not in NOT_FOR_WORKERS}
        env[ENVIRONMENT] = spec.to_environment()
        args = [sys.executable, "-m", "twisted", "--log-format=json", *self.log_level, "voicebridge", *self.argv]
        worker = WorkerProcess(self, slot, self.reactor.seconds())
        try:
            self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs=child_fds)
        except Exception as e:  # fork or exec refused (no memory, too many processes or files)
            delay = self._next_delay(slot, 0.0)
            log.error(
                "worker {worker} could not be started: {error}; trying again in {delay:g}s",
                event_name="worker.spawn_failed",
                worker=slot,
                error=str(e),
                delay=delay,
            )
            self.restarts[slot] = self.reactor.callLater(delay, self.spawn, slot)
            return
        finally:
            for sock in owned:
                sock.close()  # the worker holds it now: it dies with the worker
        self.workers[slot] = worker
        log.info("worker {worker} started, pid {pid}", event_name="worker.started", worker=slot, pid=worker.pid)

    @property
    def workers(self) -> list[WorkerProcess | None]:
        return self.books.workers

    @workers.setter
    def workers(self, workers: list[WorkerProcess | None]) -> None:
        self.books.workers = workers

    def _next_delay(self, slot: int, uptime: float) -> float:
        return self.books.backoff.next(slot, uptime)

    def live(self) -> list[WorkerProcess]:
        return self.books.live()

    @staticmethod
    def _send(messages: list[tuple]) -> None:
        for worker, message in messages:
            worker.send(message)

    # What the workers say.

    def received(self, worker: WorkerProcess, message: dict) -> None:
        """``message`` has passed ``control.problem``: its fields are there, with their types."""
        op = message["op"]
        if op == "ready":
            self._send(self.books.ready(worker))
            self.tell_startup_output(worker)
            log.info("worker {worker} ready", event_name="worker.ready", worker=worker.index, pid=worker.pid)
            if not (self.announced or self.stopping) and self.books.all_ready():
                self.announced = True
                self._announce()
        elif op == "census":
            self._send(self.books.census(worker, message))
        elif op in ("reserve", "claim"):
            self._send(self.books.reservation(worker, message))
        elif op == "metrics-request":
            self._gather(worker, message["id"])
        elif op == "metrics":
            self._answer(self.gathers.heard(worker, message))
        elif op == "drained":
            worker.drained = True
            self._wake()
        else:
            log.warn(
                "control message {op!r} from worker {worker} is not for the supervisor",
                event_name="worker.control_error",
                op=op,
                worker=worker.index,
            )

    def _announce(self) -> None:
        ports = [self.ports[i] for i in sorted(self.ports)]
        ports += [p.getHost().port for p in self.shared.values() if hasattr(p.getHost(), "port")]
        addresses = self.addresses()
        banner(self.settings, self.urls, Admission(self.settings).enforcing, addresses, ports, workers=self.count)
        notify("READY=1", f"STATUS={self.count} worker(s) listening on {', '.join(addresses)}")

    def _gather(self, asker: WorkerProcess, request_id) -> None:
        others = [w for w in self.live() if w is not asker and w.ready]
        gather_id, gather = self.gathers.start(asker, request_id, others)
        for other in others:
            other.send({"op": "metrics-request", "id": gather_id})
        gather.timer = self.reactor.callLater(METRICS_WAIT, lambda: self._answer(self.gathers.finish(gather_id)))
        if not others:
            self._answer(self.gathers.finish(gather_id))

    @staticmethod
    def _answer(gathers: list[Gather]) -> None:
        for gather in gathers:
            if gather.timer is not None and gather.timer.active():
                gather.timer.cancel()
            gather.asker.send(gather.answer())

    def relay_log(self, worker: WorkerProcess, line: bytes) -> None:
        """A worker's JSON log event, emitted here as if it were the supervisor's, naming the worker."""
        text = line.lstrip(b"\x1e").strip()
        if not text:
            return
        try:
            event = eventFromJSON(text.decode("utf-8", "replace"))
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.relay_output(worker, line)
            return
        level = event.get("log_level")
        event["worker"] = worker.index
        event["worker_pid"] = worker.pid
        event["log_system"] = f"worker-{worker.index} {event.get('log_namespace', '-')}#{getattr(level, 'name', level)}"
        globalLogPublisher(event)

    def relay_output(self, worker: WorkerProcess, line: bytes) -> None:
        """What a worker wrote outside its log (a traceback before logging began, a usage error).

        Before it is ready, gathered and told as one line when it is ready or gone (``tell_startup_output``)."""
        if not worker.ready:
            worker.startup_output.add(line)
            return
        text = line.decode("utf-8", "replace").strip("\x1e\r\n")
        if text.strip():
            self._tell_output(worker, text)

    def tell_startup_output(self, worker: WorkerProcess) -> None:
        summary = worker.startup_output.summary()
        worker.startup_output.clear()
        if summary is not None:
            self._tell_output(worker, summary)

    @staticmethod
    def _tell_output(worker: WorkerProcess, text: str) -> None:
        log.warn(
            "worker {worker}: {line}",
            event_name="worker.output",
            worker=worker.index,
            worker_pid=worker.pid,
            line=printable(text, 2000),
        )

    def worker_ended(self, worker: WorkerProcess, status) -> None:
        self._send(self.books.ended(worker))
        self._answer(self.gathers.gone(worker.index))
        code, signal = getattr(status, "exitCode", None), getattr(status, "signal", None)
        uptime = self.reactor.seconds() - worker.started_at
        fields = dict(worker=worker.index, pid=worker.pid, exit_code=code, signal=signal, uptime=uptime)
        fields["how"] = f"signal {signal}" if signal else f"exit status {code}"
        if self.stopping:
            log.info("worker {worker} (pid {pid}) exited ({how})", event_name="worker.exited", **fields)
            self._wake()
            return
        delay = self._next_delay(worker.index, uptime)
        log.error(
            "worker {worker} (pid {pid}) exited ({how}) after {uptime:.1f}s; restarting it in {delay:g}s",
            event_name="worker.exited",
            delay=delay,
            **fields,
        )
        self.restarts[worker.index] = self.reactor.callLater(delay, self.spawn, worker.index)

    # Signals (voicebridge/daemon/signals.py) and stopping.

    def reload(self) -> None:
        running = self.live()
        log.info("SIGHUP: reloading certificates in {count} worker(s)", event_name="supervisor.reload", count=len(running))
        for worker in running:
            worker.send({"op": "reload"})

    def cut(self) -> None:
        for worker in self.live():
            worker.send({"op": "cut"})

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    @defer.inlineCallbacks
    def _until(self, done):
        while not done():
            self._waiter = defer.Deferred()
            yield self._waiter

    def _drain_grace(self) -> float:
        """The workers' drain grace: the same handlers, so the same as each worker's (voicebridge/daemon/drain.py)."""
        resolved = self.settings.handlers if self.settings.handlers is not None else resolve_handlers(self.settings)
        return grace_for(close_grace(resolved))

    def _kill(self) -> None:
        for worker in self.live():
            log.warn(
                "worker {worker} (pid {pid}) is still running: killing it",
                event_name="supervisor.kill",
                worker=worker.index,
                pid=worker.pid,
            )
            try:
                worker.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    @defer.inlineCallbacks
    def stopService(self):
        self.stopping = True
        for restart in self.restarts.values():
            if restart.active():
                restart.cancel()
        self.restarts.clear()
        for sock in self.unclaimed.values():
            sock.close()
        self.unclaimed.clear()
        running = self.live()
        notify("STOPPING=1", f"STATUS=draining {len(running)} worker(s)")
        log.info("draining {count} worker(s)", event_name="supervisor.draining", count=len(running))
        for worker in running:
            worker.send({"op": "drain"})
        killer = self.reactor.callLater(self.settings.limits.drain_timeout + self._drain_grace() + KILL_MARGIN, self._kill)
        # Every worker keeps answering 503 until the last has drained; then they exit together.
        yield self._until(self.books.all_drained)
        for worker in self.live():
            worker.send({"op": "exit"})
        yield self._until(lambda: not self.live())
        if killer.active():
            killer.cancel()
        for port in self.shared.values():
            yield port.stopListening()
        yield super().stopService()
        log.info("every worker has exited; stopping", event_name="supervisor.stopped")
