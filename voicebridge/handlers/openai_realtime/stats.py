"""The ``openai-realtime`` handler's figures for ``/metrics``: one ``RealtimeStats`` per daemon (its reactor).

Counting is plain integers and a bucket index per observation (a ``bisect`` over a dozen bounds);
Prometheus families are built only when scraped (``RealtimeCollector``), as the call metrics are.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections import Counter

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

# Delta received from the provider to its frame written to Twilio: microseconds when idle.
BRIDGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
# The caller stops speaking to the first audio byte sent to Twilio: the model's time, mostly.
TURN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

# Labels come from a fixed set: a tool name or an error code the provider sends is a label only when known
# here, anything else is counted as "other" (a provider sending 5,000 distinct names makes one series, not 5,000).
OTHER = "other"
TOOLS = frozenset({"end_call", "transfer_call"})
# Error codes the handler's own best-effort requests may draw (a cancel that raced the response's end).
BENIGN_ERRORS = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})
# The codes (or, without one, the error types) an error event that does not end the call is counted under:
# the benign ones, what a late truncate draws (invalid_value), the documented types, and "unknown" (none given).
ERROR_CODES = BENIGN_ERRORS | {"invalid_value", "invalid_request_error", "server_error", "unknown"}


def tool_label(name) -> str:
    """The ``tool`` label of a tool call: the name when it is one of ours, else "other"."""
    return name if type(name) is str and name in TOOLS else OTHER


def error_label(code) -> str:
    """The ``code`` label of a provider error: the code when known, else "other"."""
    return code if type(code) is str and code in ERROR_CODES else OTHER


class Buckets:
    """A histogram without Prometheus: counts per bucket (not cumulative), a sum and a count."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None with no observations)."""
        n = self.count
        if not n:
            return None
        rank, total = q * n, 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            if total >= rank:
                return bound
        return float("inf")


class RealtimeStats:
    def __init__(self):
        self.calls = 0
        self.barge_ins = 0
        self.barge_ins_ignored = 0  # speech shorter than barge_in_min_ms: playback went on
        self.truncations = 0
        self.tool_calls: Counter = Counter()  # (tool_label(name), outcome) -> calls
        self.failures: Counter = Counter()  # reason -> calls whose provider link failed
        self.provider_errors: Counter = Counter()  # error_label(code) -> error events that did not end the call
        self.turn = Buckets(TURN_BUCKETS)
        self.bridge = Buckets(BRIDGE_BUCKETS)


_STATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stats_for(clock) -> RealtimeStats:
    """The figures of the daemon that runs on ``clock`` (a process's reactor; a task.Clock per unit test)."""
    stats = _STATS.get(clock)
    if stats is None:
        stats = _STATS[clock] = RealtimeStats()
    return stats


def _counter(name, documentation, labels, values: dict):
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class RealtimeCollector:
    def __init__(self, clock):
        self.clock = clock

    def collect(self):
        stats = stats_for(self.clock)
        yield _counter("voicebridge_realtime_calls", "Calls handed to the Realtime API", [], {(): stats.calls})
        yield _counter(
            "voicebridge_realtime_barge_ins",
            "Caller speech that interrupted the agent (cleared and truncated)",
            [],
            {(): stats.barge_ins},
        )
        yield _counter(
            "voicebridge_realtime_barge_ins_ignored",
            "Caller speech while the agent spoke, shorter than barge_in_min_ms: playback went on",
            [],
            {(): stats.barge_ins_ignored},
        )
        yield _counter(
            "voicebridge_realtime_truncations",
            "conversation.item.truncate sent at the played position",
            [],
            {(): stats.truncations},
        )
        yield _counter(
            "voicebridge_realtime_tool_calls",
            "Tool calls by the agent, by tool and outcome",
            ["tool", "outcome"],
            stats.tool_calls,
        )
        yield _counter("voicebridge_realtime_failures", "Provider links that failed, by reason", ["reason"], stats.failures)
        yield _counter(
            "voicebridge_realtime_provider_errors",
            "Error events that did not end the call, by code",
            ["code"],
            stats.provider_errors,
        )
        for name, documentation, buckets in (
            (
                "voicebridge_realtime_turn_latency_seconds",
                "Caller stopped speaking (speech_stopped) to the agent's first audio sent",
                stats.turn,
            ),
            (
                "voicebridge_realtime_bridge_latency_seconds",
                "Agent audio received from the provider to written to Twilio",
                stats.bridge,
            ),
        ):
            family = HistogramMetricFamily(name, documentation)
            family.add_metric([], buckets.cumulative(), buckets.sum)
            yield family
