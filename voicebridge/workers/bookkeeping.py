"""The supervisor's bookkeeping, pure: what it knows of each worker, and what it must tell whom.

``voicebridge/workers/supervisor.py`` does the I/O (processes, pipes, timers, logs); every decision
about the workers' shared state is made here, on plain objects, so it tests without a process:
the machine's census and each worker's view of its peers, the reservations a worker that starts
late must be handed, when all are ready or drained, and how long to wait before restarting one.
Each method that hears a message returns the messages to send, as ``(worker, message)`` pairs.
"""

from __future__ import annotations

import os
from collections import Counter

from voicebridge.call.capacity import Reservations
from voicebridge.workers import control

RESTART_FIRST, RESTART_MAX = 1.0, 30.0
STABLE_SECONDS = 60.0  # a worker that ran this long is restarted after RESTART_FIRST again


def worker_count(value: str) -> int:
    """``--workers``: a number, or ``auto`` for one per core this process may run on."""
    value = str(value).strip().lower()
    if value == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except OSError:  # a seccomp filter that refuses it
            return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers {value!r}: a number of processes (1 or more), or auto (one per core)")
    return int(value)


def twist_log_level(argv: list[str]) -> list[str]:
    """twist's own ``--log-level`` (before the plugin's name in ``argv``), to pass on to the workers."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "voicebridge":
            break
        if arg.startswith("--log-level="):
            return [arg]
        if arg == "--log-level" and i + 1 < len(argv):
            return [arg, argv[i + 1]]
    return []


class WorkerState:
    """One worker as the books know it: its slot, when it started, how far it got, its last census."""

    def __init__(self, index: int, started_at: float):
        self.index = index
        self.started_at = started_at
        self.pid: int | None = None
        self.ready = self.drained = self.ended = False
        self.census = control.NO_CENSUS


class Backoff:
    """Restart delays per slot: 1 s, doubling to 30 s while a worker keeps dying; 1 s again after a stable run."""

    def __init__(self, count: int):
        self.delays = [RESTART_FIRST] * count

    def next(self, slot: int, uptime: float) -> float:
        """The delay before restarting ``slot``, whose worker ran ``uptime`` seconds (0 for one that never started)."""
        if uptime >= STABLE_SECONDS:
            self.delays[slot] = RESTART_FIRST
        delay = self.delays[slot]
        self.delays[slot] = min(delay * 2, RESTART_MAX)
        return delay


def machine_census(workers) -> tuple[int, int, Counter]:
    """Every given worker's census, summed: (started, handshaking, started per tenant)."""
    started = handshaking = 0
    tenants: Counter = Counter()
    for worker in workers:
        started += worker.census["started"]
        handshaking += worker.census["handshaking"]
        tenants.update(worker.census["tenants"])
    return started, handshaking, tenants


def peers_of(worker, machine: tuple[int, int, Counter]) -> dict:
    """The other workers' census, summed: the machine's less ``worker``'s own (tenants at 0 left out)."""
    started, handshaking, tenants = machine
    own = worker.census
    return {
        "op": "peers",
        "started": started - own["started"],
        "handshaking": handshaking - own["handshaking"],
        "tenants": dict(tenants - Counter(own["tenants"])),
    }


class Books:
    """Which worker holds each slot and what the workers told the supervisor; the reservations ledger."""

    def __init__(self, count: int, clock):
        self.workers: list = [None] * count  # slot -> its WorkerState (a WorkerProcess is one), None while restarting
        self.reservations = Reservations(clock)  # the workers' reservations, for a worker that starts late
        self.backoff = Backoff(count)

    def live(self) -> list:
        return [w for w in self.workers if w is not None and not w.ended]

    def all_ready(self) -> bool:
        return all(w is not None and w.ready for w in self.workers)

    def all_drained(self) -> bool:
        return all(w.drained for w in self.live())

    def census_for_all(self) -> list[tuple]:
        """Each live worker's view of its peers (the census summed once, not once per worker)."""
        machine = machine_census(self.live())
        return [(worker, peers_of(worker, machine)) for worker in self.live()]

    def ready(self, worker) -> list[tuple]:
        """A worker listens: it hears its peers' census, then what is left of every reservation made before it."""
        worker.ready = True
        out = [(worker, peers_of(worker, machine_census(self.live())))]
        for sid, tenant_id, seconds in self.reservations.remaining():
            out.append((worker, {"op": "reserve", "sid": sid, "tenant": tenant_id, "seconds": seconds}))
        return out

    def census(self, worker, message: dict) -> list[tuple]:
        worker.census = {k: message[k] for k in control.CENSUS}
        return self.census_for_all()

    def reservation(self, worker, message: dict) -> list[tuple]:
        """``reserve`` or ``claim``: kept in the ledger, and passed on to every other live worker."""
        if message["op"] == "reserve":
            self.reservations.heard(message["sid"], message["tenant"], message["seconds"])
        else:
            self.reservations.claim(message["sid"])
        return [(other, message) for other in self.live() if other is not worker]

    def ended(self, worker) -> list[tuple]:
        """A worker exited: its slot is free (unless already taken again), and its calls leave the census."""
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        return self.census_for_all()
