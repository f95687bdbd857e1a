"""``/metrics`` in Prometheus format: calls, refusals, media, webhook latency, errors.

The media path pays nothing per frame: ``CallCollector`` reads the counters the calls already
keep (and the registry's totals of ended calls) when Prometheus scrapes. Only the webhook, once
per request, observes a Histogram. Each daemon has its own ``CollectorRegistry``, never the
process-global one, so several services (and tests) can live in one process.

Under ``--workers`` a scrape reaches one worker, which gathers the others' families through the
supervisor (``by_worker``): one answer for the whole machine, each series labelled ``worker``.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from twisted.logger import Logger, LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from voicebridge import __version__
from voicebridge.call.stats import CALL_OBJECTS, tenant_label

log = Logger(namespace="voicebridge.metrics")

WEBHOOK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)


def _counter(name, documentation, labels, values: dict):
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class CallCollector:
    """Reads a CallRegistry at scrape time (in the reactor thread, so nothing moves meanwhile)."""

    def __init__(self, calls):
        self.calls = calls

    def collect(self):
        registry, totals = self.calls, self.calls.totals
        live = list(registry.calls)
        info = GaugeMetricFamily("voicebridge_build_info", "voicebridge's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "voicebridge_draining", "1 while draining (readyz answers 503), else 0", value=int(registry.draining)
        )
        yield GaugeMetricFamily("voicebridge_calls_active", "Media streams open now, started or not", value=len(live))
        yield GaugeMetricFamily(
            "voicebridge_call_objects",
            "Call objects in memory, ended ones not yet freed included (stays near calls_active unless calls leak)",
            value=len(CALL_OBJECTS),
        )
        by_tenant = Counter(tenant_label(c) for c in live if c.started_at is not None)
        active = GaugeMetricFamily("voicebridge_calls_active_by_tenant", "Started calls open now, by tenant", labels=["tenant"])
        for tenant, count in sorted(by_tenant.items()):
            active.add_metric([tenant], count)
        yield active
        yield _counter(
            "voicebridge_calls",
            "Calls ended, by tenant and outcome (stop, closed, hangup, error, shutdown, refused, tenant-limit, ...; "
            "no-start: closed before start arrived)",
            ["tenant", "outcome"],
            totals.calls,
        )
        yield _counter(
            "voicebridge_calls_dropped",
            "Started calls whose stream went away without Twilio's stop",
            ["tenant"],
            totals.dropped,
        )
        yield _counter("voicebridge_handshake_refusals", "Stream upgrades refused, by reason", ["reason"], totals.refusals)
        streams = getattr(registry.capacity, "streams", None)
        if streams is not None:  # the call funnel: where answered calls stop (call/streamwatch.py)
            yield _counter(
                "voicebridge_call_funnel",
                "Calls by stage reached: answered (<Connect>), requested (/twilio-media), upgraded, started, missing",
                ["stage"],
                streams.watch.funnel(),
            )
            yield _counter(
                "voicebridge_streams_missing",
                "Calls answered with <Connect><Stream> whose stream never came, by tenant",
                ["tenant"],
                streams.watch.missing_by_tenant,
            )
        yield _counter(
            "voicebridge_webhook_refusals",
            "Webhook and connect-action requests refused, by endpoint and reason",
            ["endpoint", "reason"],
            totals.webhook_refusals,
        )
        errors = Counter(totals.errors)
        for call in live:
            errors.update(call.errors)
        yield _counter("voicebridge_stream_errors", "Protocol and handler errors on streams, by reason", ["reason"], errors)
        frames = {
            "in": totals.frames_in + sum(c.frames_in for c in live),
            "out": totals.frames_out + sum(c.frames_out for c in live),
        }
        yield _counter("voicebridge_media_frames", "Media frames, in from Twilio and out to Twilio", ["direction"], frames)
        audio = {
            "in": totals.bytes_in + sum(c.bytes_in for c in live),
            "out": totals.bytes_out + sum(c.bytes_out for c in live),
        }
        yield _counter("voicebridge_media_bytes", "Audio bytes (mu-law, decoded), in and out", ["direction"], audio)
        durations = HistogramMetricFamily("voicebridge_call_duration_seconds", "Duration of ended calls, from start")
        buckets = [("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in totals.durations]
        durations.add_metric([], buckets, totals.duration_sum)
        yield durations


def _wire_value(value: float):
    return value if math.isfinite(value) else repr(value)  # JSON has no inf or nan


def families_to_wire(registry) -> list:
    """A registry's families as plain lists, for one worker to send another (JSON)."""
    return [
        [m.name, m.documentation, m.type, m.unit, [[s.name, s.labels, _wire_value(s.value)] for s in m.samples]]
        for m in registry.collect()
    ]


def by_worker(per_worker: list) -> list[Metric]:
    """Several workers' families (``[index, families_to_wire(...)]`` each) as one set, every sample
    labelled ``worker``. Not summed: a worker that restarts, or misses a scrape, then resets or
    drops its own series alone, as Prometheus expects of a counter, where a sum would go down and
    ``rate()`` would count everything the others carry as new."""
    merged: dict[str, Metric] = {}
    for index, wire in per_worker:
        worker = str(index)
        for name, documentation, typ, unit, samples in wire:
            metric = merged.get(name)
            if metric is None:
                metric = merged[name] = Metric(name, documentation, typ, unit)
            for sample_name, labels, value in samples:
                metric.add_sample(sample_name, {**labels, "worker": worker}, float(value))
    return list(merged.values())


def handler_collectors(calls) -> list:
    """The collectors of the handlers this daemon's calls can reach: a handler class with a
    ``metrics_collector(registry)`` classmethod (openai-realtime) reports its own figures."""
    from voicebridge import handlers
    from voicebridge.call.resolve import handlers_in_use

    collectors = []
    for name in sorted(handlers_in_use(getattr(calls, "_handlers", None) or {})):
        make = getattr(handlers.load(name), "metrics_collector", None)
        if make is not None:
            collectors.append(make(calls))
    return collectors


class _Families:
    """What an encoder wants of a registry: ``collect()``."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


class Metrics:
    """One daemon's metrics: the registry, the webhook timer, and the ``/metrics`` resource."""

    def __init__(self, calls):
        self.peers = None  # under --workers: gathers the other workers' families (peers.SupervisorLink)
        self.registry = CollectorRegistry()
        self.registry.register(CallCollector(calls))
        for collector in handler_collectors(calls):
            self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.webhook_seconds = Histogram(
            "voicebridge_webhook_seconds",
            "Time to answer the voice webhook, by HTTP status",
            ["status"],
            buckets=WEBHOOK_BUCKETS,
            registry=self.registry,
        )

    def timed(self, resource: Resource) -> Resource:
        return TimedResource(resource, self.webhook_seconds)

    def resource(self) -> Resource:
        return MetricsResource(self)

    def share_with(self, peers) -> None:
        self.peers = peers

    def wire(self) -> list:
        return families_to_wire(self.registry)

    def machine(self, others: list) -> _Families:
        """This worker's families and the other workers' (``[index, families]`` each), and how many answered."""
        families = by_worker([[self.peers.spec.index, self.wire()], *others])
        workers = GaugeMetricFamily(
            "voicebridge_workers", "Workers that answered this scrape, and those that did not", labels=["state"]
        )
        answered = 1 + len(others)
        workers.add_metric(["answered"], answered)
        workers.add_metric(["missing"], max(self.peers.spec.workers - answered, 0))
        return _Families([*families, workers])


class TimedResource(Resource):
    """Observes how long ``inner`` takes to answer, once per request."""

    isLeaf = True

    def __init__(self, inner: Resource, histogram: Histogram):
        super().__init__()
        self.inner = inner
        self.histogram = histogram

    def render(self, request):
        started = time.perf_counter()
        result = self.inner.render(request)
        if result is NOT_DONE_YET:
            request.notifyFinish().addBoth(lambda _: self._observe(request, started))
        else:
            self._observe(request, started)
        return result

    def _observe(self, request, started: float) -> None:
        self.histogram.labels(status=str(request.code)).observe(time.perf_counter() - started)


class MetricsResource(Resource):
    """Renders in the reactor thread (prometheus_client's own resource scrapes from a thread pool)."""

    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        encoder, content_type = choose_encoder((request.getHeader(b"accept") or b"").decode("latin-1"))
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        if self.metrics.peers is None:
            return encoder(self.metrics.registry)
        finished = []
        request.notifyFinish().addBoth(finished.append)

        def answer(others):
            try:
                body = encoder(self.metrics.machine(others))
            except Exception:  # a worker's families that do not merge: this worker's own, rather than nothing
                log.failure("could not merge the workers' metrics", event_name="metrics.merge_failed", level=LogLevel.error)
                body = encoder(self.metrics.registry)
            if not finished:  # the scraper may have gone
                request.write(body)
                request.finish()

        self.metrics.peers.gather_metrics().addCallback(answer)
        return NOT_DONE_YET
