"""The supervisor's bookkeeping (voicebridge/workers/bookkeeping.py), pure: no process, no pipe, a fake clock."""

from __future__ import annotations

from twisted.internet import task

from voicebridge.workers import control
from voicebridge.workers.bookkeeping import RESTART_MAX, STABLE_SECONDS, Backoff, Books, WorkerState


def books(count=3):
    clock = task.Clock()
    b = Books(count, clock)
    b.workers = [WorkerState(i, 0.0) for i in range(count)]
    return b, clock


def census(started, handshaking, tenants=None):
    return {"op": "census", "started": started, "handshaking": handshaking, "tenants": tenants or {}}


def test_each_worker_hears_the_census_of_the_others_summed():
    b, _ = books()
    w0, w1, w2 = b.workers
    b.census(w0, census(2, 1, {"t-1": 2}))
    told = dict((w.index, m) for w, m in b.census(w1, census(3, 0, {"t-1": 1, "t-2": 2})))
    assert told[0] == {"op": "peers", "started": 3, "handshaking": 0, "tenants": {"t-1": 1, "t-2": 2}}
    assert told[1] == {"op": "peers", "started": 2, "handshaking": 1, "tenants": {"t-1": 2}}
    assert told[2] == {"op": "peers", "started": 5, "handshaking": 1, "tenants": {"t-1": 3, "t-2": 2}}
    assert all(control.problem(m) is None for m in told.values()), "every message passes the schema"


def test_a_worker_that_ends_leaves_the_census_and_its_slot():
    b, _ = books()
    w0, w1, w2 = b.workers
    b.census(w0, census(4, 0, {"t-1": 4}))
    w0.ended = True
    told = b.ended(w0)
    assert b.workers[0] is None and [w.index for w, _ in told] == [1, 2]
    assert all(m == {"op": "peers", "started": 0, "handshaking": 0, "tenants": {}} for _, m in told)
    replacement = WorkerState(1, 5.0)
    b.workers[1] = replacement
    w1.ended = True
    b.ended(w1)
    assert b.workers[1] is replacement, "an old worker's end does not free the slot its replacement holds"


def test_reservations_pass_to_the_others_and_wait_for_a_worker_that_starts_late():
    b, clock = books(2)
    w0, late = b.workers
    b.workers[1] = None  # being restarted
    reserve = {"op": "reserve", "sid": "CA1", "tenant": "t-1", "seconds": 30}
    assert b.reservation(w0, reserve) == [], "nobody else is there to tell"
    b.reservation(w0, {"op": "reserve", "sid": "CA2", "tenant": None, "seconds": 30})
    b.reservation(w0, {"op": "claim", "sid": "CA2"})
    clock.advance(10)
    b.workers[1] = late
    assert b.reservation(w0, {"op": "claim", "sid": "CA9"}) == [(late, {"op": "claim", "sid": "CA9"})]
    told = b.ready(late)
    assert late.ready and [m for _, m in told] == [
        {"op": "peers", "started": 0, "handshaking": 0, "tenants": {}},
        {"op": "reserve", "sid": "CA1", "tenant": "t-1", "seconds": 20.0},
    ], "what is left of the unclaimed reservation"
    clock.advance(21)
    assert [m["op"] for _, m in b.ready(late)] == ["peers"], "a lapsed reservation is not handed on"


def test_all_ready_needs_every_slot_and_all_drained_only_the_live():
    b, _ = books(2)
    w0, w1 = b.workers
    b.ready(w0)
    assert not b.all_ready()
    b.ready(w1)
    assert b.all_ready()
    w0.drained = True
    assert not b.all_drained()
    w1.ended = True
    assert b.all_drained(), "a worker that exited is not waited for"


def test_restarts_back_off_while_a_worker_keeps_dying_and_reset_after_a_stable_run():
    backoff = Backoff(2)
    delays = [backoff.next(0, 0.5) for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, RESTART_MAX, RESTART_MAX]
    assert backoff.next(1, 0.0) == 1.0, "each slot has its own"
    assert backoff.next(0, STABLE_SECONDS) == 1.0, "it ran long enough: back to the first delay"
    assert backoff.next(0, 1.0) == 2.0
