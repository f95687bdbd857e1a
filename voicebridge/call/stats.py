"""Running totals of the calls that ended, so what ``/metrics`` reports only ever goes up.

A live call counts its own frames and bytes (plain integers on the ``Call``, nothing more on the
media path); when it ends, ``CallTotals.ended`` folds them in here. A scrape adds the live calls
to these totals (voicebridge/observe/metrics.py). Pure: no Prometheus, no I/O.
"""

from __future__ import annotations

import weakref
from collections import Counter

# Call durations, in seconds: from a few seconds (a wrong number) to an hour-long call.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))

# Every Call object still in memory, ended or not (a weak set: it holds none of them). Beside the
# live calls, it shows whether ended calls are freed: a leak, or cycles waiting for the collector.
CALL_OBJECTS: weakref.WeakSet = weakref.WeakSet()

NO_TENANT = "none"
NO_START = "no-start"


def tenant_label(call) -> str:
    return call.tenant.id if call.tenant is not None else NO_TENANT


class CallTotals:
    def __init__(self):
        self.calls: Counter = Counter()  # (tenant, outcome) -> calls ended
        self.dropped: Counter = Counter()  # tenant -> started calls whose stream went away without stop
        self.errors: Counter = Counter()  # reason -> protocol and handler errors
        self.refusals: Counter = Counter()  # reason -> refused stream handshakes
        self.webhook_refusals: Counter = Counter()  # (endpoint, reason) -> refused webhook and connect-action requests
        self.frames_in = self.frames_out = 0
        self.bytes_in = self.bytes_out = 0
        self.duration_counts = [0] * len(DURATION_BUCKETS)  # per bucket, not cumulative
        self.duration_sum = 0.0

    def ended(self, call) -> None:
        tenant = tenant_label(call)
        started = call.started_at is not None
        # A call refused at start (no tenant, tenant-limit) got a start: its outcome is why it was refused.
        outcome = (call.end_reason or "closed") if call.start_received else NO_START
        self.calls[(tenant, outcome)] += 1
        if started and outcome == "closed":
            self.dropped[tenant] += 1
        self.errors.update(call.errors)
        self.frames_in += call.frames_in
        self.frames_out += call.frames_out
        self.bytes_in += call.bytes_in
        self.bytes_out += call.bytes_out
        if started and call.ended_at is not None:
            duration = max(0.0, call.ended_at - call.started_at)
            self.duration_sum += duration
            for i, bound in enumerate(DURATION_BUCKETS):
                if duration <= bound:
                    self.duration_counts[i] += 1
                    break

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1

    def webhook_refused(self, endpoint: str, reason: str) -> None:
        self.webhook_refusals[(endpoint, reason)] += 1

    @property
    def durations(self) -> list[tuple[float, int]]:
        """(upper bound, calls at or under it): cumulative, as Prometheus histograms are."""
        total, out = 0, []
        for bound, count in zip(DURATION_BUCKETS, self.duration_counts, strict=True):
            total += count
            out.append((bound, total))
        return out
