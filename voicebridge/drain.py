"""Draining: on the way down, take no new calls and let the live ones finish.

While draining, ``/readyz`` answers 503, webhooks and stream handshakes get 503 (admission), and
the listening ports stay open so every client gets that answer rather than a refused connection.
Live calls go on untouched until they end, or until the drain timeout closes them with 1001.
``cut()`` (a second SIGTERM or SIGINT) closes them at once.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger

from voicebridge.calls import CLOSE_GOING_AWAY
from voicebridge.notify import notify

log = Logger(namespace="voicebridge.service")

DEFAULT_TIMEOUT = 300.0


class Drain:
    poll_interval = 0.1  # how soon the process goes after the last call ends
    progress_interval = 30.0  # how often a long drain says how far it is
    grace = 5.0  # for calls told 1001 to finish their close handshake

    def __init__(self, registry, clock, timeout: float = DEFAULT_TIMEOUT):
        self.registry = registry
        self.clock = clock
        self.timeout = timeout
        self.started_at: float | None = None
        self._cut = False
        self._pending: set = set()

    @property
    def running(self) -> bool:
        return self.started_at is not None

    def cut(self) -> None:
        """End the drain now: live calls are closed with 1001 and the process goes."""
        if self._cut:
            return
        self._cut = True
        if self.running:
            count = len(self._live())
            log.warn(
                "exiting now: closing {count} live call(s) with 1001",
                event_name="service.drain_cut",
                count=count,
            )
            self._hang_up("shutdown")

    def _live(self) -> set:
        """Calls still on the line, including those whose handler is still finishing (nothing is lost)."""
        self._pending.update(self.registry.calls)
        self._pending = {call for call in self._pending if not call.finished.called}
        return self._pending

    def _hang_up(self, reason: str) -> None:
        for call in list(self._live()):
            call.hangup(reason, CLOSE_GOING_AWAY)

    def _sleep(self, seconds: float):
        return task.deferLater(self.clock, seconds, lambda: None)

    @defer.inlineCallbacks
    def run(self):
        """Fires when no call is left (or the timeout or a cut ended them)."""
        self.registry.draining = True
        self.started_at = start = self.clock.seconds()
        live = len(self._live())
        notify("STOPPING=1", f"STATUS=draining: {live} live call(s)")
        log.info(
            "draining: {count} live call(s); /readyz answers 503 and new webhooks and streams get 503; "
            "waiting up to {timeout:g}s for the calls to end (a second SIGTERM or SIGINT exits now)",
            event_name="service.draining",
            count=live,
            timeout=self.timeout,
        )
        if self._cut:
            self._hang_up("shutdown")
        deadline = start + self.timeout
        next_progress = start + self.progress_interval
        while self._live() and not self._cut and self.clock.seconds() < deadline:
            yield self._sleep(min(self.poll_interval, max(deadline - self.clock.seconds(), 0)))
            now = self.clock.seconds()
            if now >= next_progress and self._pending:
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
        grace_end = self.clock.seconds() + (self.poll_interval if self._cut else self.grace)
        while self._live() and self.clock.seconds() < grace_end:
            yield self._sleep(self.poll_interval)
        left = len(self._live())
        if left:
            log.warn(
                "{count} call(s) did not finish closing; their connections are dropped",
                event_name="service.drain_abandoned",
                count=left,
            )
        log.info(
            "drained in {duration:.1f}s; stopping",
            event_name="service.drained",
            duration=self.clock.seconds() - start,
        )
