"""Draining: on the way down, take no new calls and let the live ones finish.

While draining, ``/readyz`` answers 503, new webhooks get 503 (admission), and the listening ports
stay open so every client gets that answer rather than a refused connection. A call the webhook
answered just before the drain still has its stream taken, and is waited for like a live one
(until its reservation lapses). Live calls go on untouched until they end, or until the drain
timeout closes them with 1001. ``cut()`` (a second SIGTERM or SIGINT) closes them at once.

Either way the calls told 1001 are then given ``grace`` to finish: their close handshake, and
their handlers' own ending (a relay closing its application, a recording being saved), as long
as the handlers in use declare (``Handler.close_grace``, read through the registry). The drain
waits on each call's ``finished``; it never sleeps a fixed time.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from voicebridge.call.closecodes import CLOSE_GOING_AWAY, CLOSE_HANDSHAKE_TIMEOUT
from voicebridge.config.limits import Limits
from voicebridge.daemon.notify import notify

log = Logger(namespace="voicebridge.service")

# How long after the webhook answered <Connect> a drain waits for the call's stream to connect
# (Twilio connects within a second or two). Its handshake is taken for as long as the process runs.
ANSWER_WAIT = 10.0
# After 1001, every handler gets at least this long to finish (beyond the close handshake): what the
# built-ins need at most, a relay's 5 s close to its application and a recording's 2 s save after it.
HANDLER_GRACE = 7.0


def grace_for(handler_grace: float) -> float:
    """How long calls told 1001 may take to finish: the WebSocket close handshake, then their handlers'
    own ending, as long as the slowest handler in use declares (``Handler.close_grace``), 7 s at least."""
    return CLOSE_HANDSHAKE_TIMEOUT + max(HANDLER_GRACE, handler_grace)


# The grace with the built-in handlers (12 s): deployments' stop timeouts are set above the drain plus this.
GRACE = grace_for(0.0)


class Drain:
    progress_interval = 30.0  # how often a long drain says how far it is
    grace = GRACE
    answer_wait = ANSWER_WAIT

    def __init__(self, registry, clock, timeout: float = Limits.drain_timeout):
        self.registry = registry
        self.grace = grace_for(getattr(registry, "close_grace", 0.0))
        self.clock = clock
        self.timeout = timeout
        self.started_at: float | None = None
        self._cut = False
        self._pending: set = set()  # calls still finishing, though gone from the registry
        self._waiter: defer.Deferred | None = None

    @property
    def running(self) -> bool:
        return self.started_at is not None

    def cut(self) -> None:
        """End the drain now: live calls are closed with 1001, and the process goes once they have finished."""
        if self._cut:
            return
        self._cut = True
        if self.running:
            log.warn(
                "exiting now: closing {count} live call(s) with 1001",
                event_name="service.drain_cut",
                count=len(self._live()),
            )
            self._hang_up("shutdown")
        self._wake()

    def _live(self) -> set:
        """Calls still on the line, including those whose handler is still finishing (nothing is lost)."""
        for call in self.registry.calls - self._pending:
            if not call.finished.called:
                self._pending.add(call)
                call.finished.addBoth(self._finished, call)
        return self._pending

    def _finished(self, result, call):
        self._pending.discard(call)
        self._wake()
        return result

    def _answered(self) -> int:
        """Calls the webhook answered whose stream has not started yet (their reservations)."""
        capacity = getattr(self.registry, "capacity", None)
        return capacity.counts()[2] if capacity is not None else 0

    def _expecting_until(self) -> float | None:
        """Until when a stream of a call the webhook just answered may still connect; None if none may."""
        capacity = getattr(self.registry, "capacity", None)
        answered = capacity.last_answered() if capacity is not None else None
        if answered is None or answered + self.answer_wait <= self.clock.seconds():
            return None
        return answered + self.answer_wait

    def _hang_up(self, reason: str) -> None:
        for call in list(self._live()):
            call.hangup(reason, CLOSE_GOING_AWAY)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _wait(self, until: float) -> defer.Deferred:
        """Fires when a call finishes, on ``cut()``, or at ``until``, whichever comes first."""
        waiter = self._waiter = defer.Deferred()
        timer = self.clock.callLater(max(until - self.clock.seconds(), 0), self._wake)
        return waiter.addBoth(lambda _: timer.cancel() if timer.active() else None)

    @defer.inlineCallbacks
    def run(self):
        """Fires when no call is left (or the timeout or a cut ended them)."""
        self.registry.draining = True
        self.started_at = start = self.clock.seconds()
        live = len(self._live())
        notify("STOPPING=1", f"STATUS=draining: {live} live call(s)")
        log.info(
            "draining: {count} live call(s), {answered} answered and not yet streaming; /readyz answers 503 and new "
            "webhooks get 503; waiting up to {timeout:g}s for the calls to end (a second SIGTERM or SIGINT exits now)",
            event_name="service.draining",
            count=live,
            answered=self._answered(),
            timeout=self.timeout,
        )
        if self._cut:
            self._hang_up("shutdown")
        deadline = start + self.timeout
        next_progress = start + self.progress_interval
        while not self._cut and (self._live() or self._expecting_until()) and self.clock.seconds() < deadline:
            wake = min(deadline, next_progress)
            expecting = self._expecting_until()
            if expecting is not None and not self._pending:
                wake = min(wake, expecting)  # only answered calls are awaited: look again when their wait ends
            yield self._wait(wake)
            now = self.clock.seconds()
            if now >= next_progress and self._live():
                next_progress = now + self.progress_interval
                count = len(self._pending)
                notify(f"STATUS=draining: {count} live call(s)")
                log.info(
                    "draining: {count} call(s) still live, {left:.0f}s left",
                    event_name="service.drain_progress",
                    count=count,
                    left=max(deadline - now, 0),
                )
        if self._live() and not self._cut:
            log.warn(
                "drain timeout ({timeout:g}s): closing {count} live call(s) with 1001",
                event_name="service.drain_timeout",
                timeout=self.timeout,
                count=len(self._pending),
            )
            self._hang_up("shutdown")
        grace_end = self.clock.seconds() + self.grace
        while self._live() and self.clock.seconds() < grace_end:
            yield self._wait(grace_end)
        left = len(self._live())
        if left:
            log.warn(
                "{count} call(s) did not finish closing within {grace:g}s; their connections are dropped",
                event_name="service.drain_abandoned",
                count=left,
                grace=self.grace,
            )
        log.info(
            "drained in {duration:.1f}s; stopping",
            event_name="service.drained",
            duration=self.clock.seconds() - start,
        )
