"""The daemon's side of ``streamwatch``: the clock that lapses expected streams, and the log lines.

``StreamWatch`` decides (pure); this schedules one timer, at the soonest lapse, and logs what it
returns. The webhook, ``/twilio-media`` and ``start`` report to it (a line each).
"""

from __future__ import annotations

from twisted.logger import Logger

from voicebridge.call.capacity import RESERVATION_SECONDS
from voicebridge.call.streamwatch import STARTED, StreamWatch
from voicebridge.observe.logs import printable

log = Logger(namespace="voicebridge.streams")

FORMATS = {
    "call.stream_missing": (
        "call callSid={callSid} tenant={tenant}: answered <Connect><Stream url={stream_url}>, and no stream came in "
        "{waited} s; /twilio-media saw {seen} meanwhile"
    ),
    "service.streams_not_arriving": (
        "streams are not arriving: {missing} of the last {of} answered calls got no stream; /twilio-media saw {seen}. "
        "{explanation}. Run: {probe}"
    ),
    "service.streams_arriving": "streams arrive again: call {callSid} started",
}


class WatchedStreams:
    def __init__(self, clock, wait: float = RESERVATION_SECONDS):
        self.clock = clock
        self.watch = StreamWatch(wait)
        self._timer = None

    def answered(self, call_sid: str | None, tenant: str | None, stream_url: str) -> None:
        self.watch.answered(call_sid, tenant, stream_url, self.clock.seconds())
        self._arm()

    def saw(self, kind: str, reason: str | None = None, detail: str | None = None) -> None:
        self.watch.saw(kind, reason, detail)

    def started(self, call_sid: str | None, here: bool = True) -> None:
        """A ``start`` took ``call_sid``'s slot (``here``, or on another worker)."""
        if here:
            self.watch.saw(STARTED)
        self._log(self.watch.started(call_sid))

    def _arm(self) -> None:
        due = self.watch.next_due()
        if due is None or (self._timer is not None and self._timer.active()) or not hasattr(self.clock, "callLater"):
            return
        self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()) + 0.05, self._lapse)

    def _lapse(self) -> None:
        self._timer = None
        self._log(self.watch.due(self.clock.seconds()))
        self._arm()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _log(self, events) -> None:
        for event in events:
            emit = {"warn": log.warn, "error": log.error, "info": log.info}[event.level]
            fields = dict(event.fields)
            if "callSid" in fields:  # the peer's text: escaped, so it cannot forge a log line
                fields["callSid"] = printable(fields["callSid"], 64)
            emit(FORMATS[event.name], event_name=event.name, **fields)
