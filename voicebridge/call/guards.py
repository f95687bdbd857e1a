"""One call's bounds in time and memory: the timers that end it, and the watch on what it queues.

- start timeout: no ``start`` within ``start_timeout`` of the handshake;
- idle timeout: no ``media`` for ``idle_timeout`` once started;
- max duration: any call, ``max_duration`` after its handshake;
- send buffer: a peer that stops reading makes Twisted buffer every frame sent to it, without
  end. The guard is the transport's producer: the transport pauses it once its own buffer is
  full, and from then on what the call sends is counted; past ``max_send_buffer`` the call ends.

Timers run on the registry's clock (an IReactorTime; tests use ``task.Clock``) and are all
cancelled when the call ends. When a bound is crossed the guard asks the call to end itself
(``Call.exceeded``), which logs the reason with the callSid and closes with 1008.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class CallGuards:
    def __init__(self, call, limits, clock):
        self.call = call
        self.limits = limits
        self.clock = clock
        self._timers: dict = {}
        self.last_media: float | None = None
        self.paused = False  # the transport's buffer is full: the peer is not keeping up
        self.queued = 0  # bytes sent while paused

    # Life of the call.

    def opened(self) -> None:
        self._arm("start", self.limits.start_timeout, self._start_timeout)
        self._arm("duration", self.limits.max_duration, self._max_duration)

    def started(self) -> None:
        self._cancel("start")
        self.last_media = self.clock.seconds()
        self._arm("idle", self.limits.idle_timeout, self._idle_check)

    def ended(self) -> None:
        for name in list(self._timers):
            self._cancel(name)

    @property
    def pending(self) -> list[str]:
        """The timers still armed (for tests and for the shutdown report)."""
        return sorted(self._timers)

    # Timers.

    def _arm(self, name: str, seconds: float, fire) -> None:
        self._cancel(name)

        def run():
            self._timers.pop(name, None)
            fire()

        self._timers[name] = self.clock.callLater(seconds, run)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _start_timeout(self) -> None:
        seconds = self.limits.start_timeout
        self.call.exceeded("start-timeout", f"no start within {seconds:g}s of the handshake (--start-timeout)")

    def _idle_check(self) -> None:
        quiet = self.clock.seconds() - self.last_media
        left = self.limits.idle_timeout - quiet
        if left > 0:
            self._arm("idle", left, self._idle_check)
            return
        self.call.exceeded("idle-timeout", f"no media for {quiet:.1f}s (--idle-timeout {self.limits.idle_timeout:g})")

    def _max_duration(self) -> None:
        self.call.exceeded(
            "max-duration", f"the call reached the maximum duration of {self.limits.max_duration:g}s (--max-duration)"
        )

    # The send buffer (IPushProducer: the transport calls these).

    def watch(self, transport) -> None:
        """Become ``transport``'s producer, in place of twisted.web's channel, which has no use for it after the upgrade."""
        transport.unregisterProducer()
        transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued = 0

    def stopProducing(self) -> None:
        self.paused = False

    def queue(self, size: int) -> bool:
        """Count ``size`` bytes sent while paused; False (and the call is ending) once over the limit."""
        self.queued += size
        if self.queued <= self.limits.max_send_buffer:
            return True
        self.call.exceeded(
            "slow-reader",
            f"the peer stopped reading: {self.queued} bytes queued beyond the socket's buffer (--max-send-buffer)",
            event_name="call.slow_reader",
        )
        return False
