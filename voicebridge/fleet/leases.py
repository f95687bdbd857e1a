"""A machine's part in the fleet (``--redis``): its reservations, its calls' leases, and Redis going away.

- The webhook (``Admission.call``) reserves a slot for its CallSid on Redis, after this
  machine's own limits (``--max-calls``, and each tenant's ``max_calls`` counted here) have
  admitted it. The fleet's answer is awaited; Twilio's 15 s are far away (the reservation script's
  round trip on loopback: p50 0.10 ms, p99 0.40 ms, benchmarks/fleet.py).
- A ``start`` on this machine claims the slot (its reservation, made by whichever machine
  answered the webhook, or a new one within the limits); the call goes on meanwhile, and is
  closed (1008) only if the fleet says its tenant is full and it held no reservation.
- A call that ends frees its slot. Every lease/3 this machine pushes its calls' deadlines
  forward in one script; a machine that dies stops doing so, and its slots lapse on Redis.
- The registry is watched, not changed: on every census change (coalesced per reactor turn)
  the started calls are compared with those held, which costs nothing per media frame.

Redis unavailable or restarted: nothing here ever closes a call that is under way. New webhooks
follow ``--redis-unavailable``: ``admit`` (this machine's own limits only, with a warning and
``voicebridge_redis_unavailable_total``) or ``busy``. Calls that started meanwhile, and releases
that could not be sent, wait here; when Redis is back, the next renewal puts every live call back
(and the reservations still waiting for their stream), so the counts are right again.
"""

from __future__ import annotations

import os
import socket

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel

from voicebridge.call.capacity import RESERVATION_SECONDS
from voicebridge.fleet import slots
from voicebridge.fleet.client import Redis, Unavailable
from voicebridge.observe.logs import printable

log = Logger(namespace="voicebridge.fleet")

COMMAND_TIMEOUT = 2.0  # a webhook waits this long for Redis at most, then decides without it
WARN_EVERY = 10.0  # seconds between two warnings of decisions made without Redis
MAX_PENDING_RELEASES = 100_000

STARTED = "started"  # voicebridge.call.call.STARTED (not imported: the call package is being split)


def machine_name() -> str:
    """This process in the fleet: host name and pid (a restarted process is a new member; its calls died with it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Fleet:
    """One machine's ledger of fleet slots on Redis. ``start()`` connects; ``stop()`` leaves."""

    def __init__(self, redis_url, settings, registry, reactor, *, fleet_max_calls=None, lease=15.0, unavailable="admit",
                 name="voicebridge", machine=None, ca_file=None):
        self.settings = settings
        self.registry = registry
        self.capacity = registry.capacity
        self.reactor = reactor
        self.fleet_max_calls = fleet_max_calls
        self.lease = lease
        self.unavailable_policy = unavailable
        self.keys = slots.Keys(name)
        self.machine = machine or machine_name()
        self.channel = self.keys.machine(self.machine)
        self.tenants = sorted(settings.config.tenants)
        self.redis = Redis(
            redis_url, reactor, channels=[self.channel], on_message=self._message, on_up=self._redis_up, ca_file=ca_file
        )
        self.held: dict[str, object] = {}  # CallSid -> Call: started calls here whose slot is (or will be) on Redis
        self.pending_releases: set[str] = set()
        self.counts: slots.Counts | None = None  # the fleet's view at the last renewal
        self.unavailable = {"admit": 0, "busy": 0}  # webhooks decided without Redis
        self.handlers = {}  # op -> callable(message), for messages on this machine's channel (control.py)
        self._warned_at = None
        self._unwarned = 0
        self._bad_warned: dict[str, float] = {}  # BadMessage reason -> when it was last warned of
        self._bad_counts: dict[str, int] = {}  # BadMessage reason -> dropped since
        self._scan_call = None
        self._renewing = None
        self._previous_census = registry.on_census
        registry.on_census = self._census_changed
        self._loop = task.LoopingCall(self.renew)
        self._loop.clock = reactor

    # Life cycle.

    def start(self) -> None:
        self.redis.start()
        self._loop.start(self.lease / 3, now=False)
        log.info(
            "fleet member {machine} of {fleet} on {url}; lease {lease:g}s; fleet limit {limit}; without Redis: {policy}",
            event_name="fleet.started",
            machine=self.machine,
            fleet=self.keys.name,
            url=self.redis.url.shown,
            lease=self.lease,
            limit=self.fleet_max_calls if self.fleet_max_calls is not None else "none",
            policy=self.unavailable_policy,
        )

    @defer.inlineCallbacks
    def stop(self):
        if self._loop.running:
            self._loop.stop()
        self._scan()
        if self.pending_releases and self.redis.available:
            yield self._release(list(self.pending_releases))
        yield self.redis.stop()

    # The webhook.

    def reserve(self, call_sid: str | None, tenant):
        """After this machine's own limits admitted the call: the fleet's answer, a Deferred of a Refusal or None."""
        from voicebridge.web.admission import Refusal

        if not call_sid:
            return None  # no CallSid (not Twilio): this machine's limits only
        tenant_id = tenant.id if tenant is not None else None
        tenant_limit = tenant.max_calls if tenant is not None else None
        script, keys, args = slots.reserve_call(
            self.keys, call_sid, tenant_id, self.fleet_max_calls, tenant_limit, int(RESERVATION_SECONDS * 1000), self.machine
        )

        def decided(reply):
            verdict = slots.parse_reserve(reply)
            if verdict.ok:
                return None
            self.capacity.release(call_sid)
            return Refusal(
                503, "over-capacity", slots.limit_message(verdict.limit, self.fleet_max_calls, tenant_id, tenant_limit)
            )

        def without_redis(failure):
            if not failure.check(Unavailable):
                log.failure(
                    "a reservation on Redis failed",
                    failure,
                    event_name="fleet.error",
                    callSid=printable(call_sid, 40),
                    level=LogLevel.error,
                )
            return self._without_redis(call_sid, str(failure.value))

        return self.redis.run(script, keys, args, COMMAND_TIMEOUT).addCallbacks(decided, without_redis)

    def _without_redis(self, call_sid: str, why: str):
        from voicebridge.web.admission import Refusal

        policy = self.unavailable_policy
        self.unavailable[policy] += 1
        self._unwarned += 1
        now = self.reactor.seconds()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            log.warn(
                "Redis is unavailable ({why}): {count} webhook(s) answered without the fleet's limits "
                "({policy}: {meaning}); callSid={callSid}",
                event_name="fleet.redis_unavailable",
                why=printable(why, 200),
                count=self._unwarned,
                policy=policy,
                meaning="admitted under this machine's own limits" if policy == "admit" else "answered busy",
                callSid=printable(call_sid, 40),
            )
            self._warned_at, self._unwarned = now, 0
        if policy == "busy":
            self.capacity.release(call_sid)
            return Refusal(503, "redis-unavailable", "Redis is unavailable and --redis-unavailable is busy")
        return None

    # Calls starting and ending here (the registry's census).

    def _census_changed(self) -> None:
        if self._previous_census is not None:
            self._previous_census()
        if self._scan_call is None:
            self._scan_call = self.reactor.callLater(0, self._scan)

    def _scan(self) -> None:
        if self._scan_call is not None and self._scan_call.active():
            self._scan_call.cancel()
        self._scan_call = None
        live = {call.call_sid: call for call in self.registry.calls if call.state == STARTED and call.call_sid}
        held = self.held
        gone = [sid for sid in held if sid not in live]
        for sid in gone:
            del held[sid]
        for sid, call in live.items():
            if sid not in held:
                held[sid] = call
                self._claim(call)
        if gone:
            self._release(gone)

    def _claim(self, call) -> None:
        tenant = call.tenant
        tenant_id = tenant.id if tenant is not None else None
        tenant_limit = tenant.max_calls if tenant is not None else None
        script, keys, args = slots.claim_call(
            self.keys, call.call_sid, tenant_id, self.fleet_max_calls, tenant_limit, int(self.lease * 1000), self.machine
        )

        def decided(reply):
            verdict = slots.parse_claim(reply)
            if not verdict.ok:
                reason = "tenant-limit" if verdict.limit == "tenant" else "fleet-limit"
                call.exceeded(
                    reason,
                    slots.limit_message(verdict.limit, self.fleet_max_calls, tenant_id, tenant_limit)
                    + "; its stream arrived without a reservation",
                    event_name="call.over_limit",
                )

        def failed(failure):
            # Never cut a call for Redis: the next renewal registers it.
            if not failure.check(Unavailable):
                log.failure(
                    "a claim on Redis failed",
                    failure,
                    event_name="fleet.error",
                    callSid=printable(call.call_sid, 64),
                    level=LogLevel.error,
                )

        self.redis.run(script, keys, args, COMMAND_TIMEOUT).addCallbacks(decided, failed)

    def _release(self, sids) -> defer.Deferred:
        self.pending_releases.update(sids)
        if len(self.pending_releases) > MAX_PENDING_RELEASES:  # they lapse on Redis by themselves anyway
            self.pending_releases = set(list(self.pending_releases)[-MAX_PENDING_RELEASES:])
        if not self.redis.available:
            return defer.succeed(None)
        batch = [sid for sid in sids if sid not in self.held]
        if not batch:
            return defer.succeed(None)
        script, keys, args = slots.release_call(self.keys, self.machine, batch)

        def done(_):
            self.pending_releases.difference_update(batch)

        return self.redis.run(script, keys, args, COMMAND_TIMEOUT).addCallbacks(done, lambda _: None)

    # Leases.

    def renew(self) -> defer.Deferred:
        """Push this machine's deadlines forward; put back what Redis lost; read the fleet's counts."""
        if self._renewing is not None:
            return self._renewing
        if not self.redis.available:
            return defer.succeed(None)
        self._scan()
        now = self.reactor.seconds()
        started = [
            (sid, call.tenant.id if call.tenant is not None else None, (now - (call.started_at or now)) * 1000)
            for sid, call in self.held.items()
        ]
        reserved = [
            (sid, tenant_id, seconds * 1000)
            for sid, tenant_id, seconds in self.capacity.reservations.remaining()
            if sid not in self.held and not sid.startswith("anonymous-")
        ]
        pending = [sid for sid in self.pending_releases if sid not in self.held]
        release = self._release(pending) if pending else defer.succeed(None)
        script, keys, args = slots.renew_call(self.keys, self.machine, int(self.lease * 1000), self.tenants, started, reserved)

        def renewed(reply):
            self.counts = slots.parse_renew(reply, self.tenants)
            if self.counts.put_back:
                log.info(
                    "registered {count} call(s) and reservation(s) again that Redis did not hold (it restarted, "
                    "or was unreachable past their deadline)",
                    event_name="fleet.reregistered",
                    count=self.counts.put_back,
                )

        def failed(failure):
            if not failure.check(Unavailable):
                log.failure("renewing the leases on Redis failed", failure, event_name="fleet.error", level=LogLevel.error)

        def finished(_):
            self._renewing = None

        self._renewing = d = release.addCallback(lambda _: self.redis.run(script, keys, args, COMMAND_TIMEOUT))
        d.addCallbacks(renewed, failed).addBoth(finished)
        return d

    def _redis_up(self) -> None:
        self.reactor.callLater(0, self.renew)

    # This machine's channel.

    def _message(self, channel, raw) -> None:
        """Whatever a peer (or anyone who can PUBLISH on this Redis) sent: checked, dropped if bad; never raises."""
        try:
            message = slots.parse_message(raw, self.keys)
        except slots.BadMessage as e:
            self._bad_message(channel, e)
            if e.reply_id is not None:  # our request's answer, malformed: the request fails now (502), not at its timeout
                message = {"op": "control-reply", "id": e.reply_id, "status": 502, "result": {},
                           "error": f"the machine that holds the call answered malformed ({e})"}
            else:
                return
        try:
            op = message["op"]
            if op == "claimed":
                sid = message["sid"]
                self.capacity.peer_claimed(sid)  # its stream started on another machine: not expected here any more
                self.capacity.peers.claimed(sid)
                return
            handler = self.handlers.get(op)
            if handler is not None:
                handler(message)
        except Exception:
            log.failure("a message on {channel} failed", event_name="fleet.error", channel=printable(channel, 100),
                        level=LogLevel.error)

    def _bad_message(self, channel, error) -> None:
        """The ``fleet.bad_message`` warning: once per reason every ``WARN_EVERY`` seconds, with how many were dropped."""
        now = self.reactor.seconds()
        reason = error.reason
        self._bad_counts[reason] = self._bad_counts.get(reason, 0) + 1
        last = self._bad_warned.get(reason)
        if last is not None and now - last < WARN_EVERY:
            return
        self._bad_warned[reason] = now
        log.warn(
            "a message on {channel} is not the fleet's ({reason}: {detail}); {count} dropped for this reason "
            "since the last warning",
            event_name="fleet.bad_message",
            channel=printable(channel, 100),
            reason=reason,
            detail=printable(error.detail, 120),
            count=self._bad_counts.pop(reason),
        )

    # What /metrics shows.

    def collector(self):
        return FleetCollector(self)


class FleetService(Service):
    """Joins the fleet when the daemon starts; leaves (releasing its slots) after the drain."""

    name = "fleet"

    def __init__(self, fleet: Fleet):
        self.fleet = fleet

    def startService(self):
        super().startService()
        self.fleet.start()

    def stopService(self):
        super().stopService()
        return self.fleet.stop()


class FleetCollector:
    def __init__(self, fleet: Fleet):
        self.fleet = fleet

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fleet = self.fleet
        yield GaugeMetricFamily(
            "voicebridge_redis_up", "1 while this machine is connected to the fleet's Redis", value=int(fleet.redis.available)
        )
        unavailable = CounterMetricFamily(
            "voicebridge_redis_unavailable",
            "Webhooks decided without Redis, by what --redis-unavailable decided (admit, busy)",
            labels=["decision"],
        )
        for decision, count in sorted(fleet.unavailable.items()):
            unavailable.add_metric([decision], count)
        yield unavailable
        counts = fleet.counts
        if counts is not None:
            yield GaugeMetricFamily(
                "voicebridge_fleet_slots", "Slots held across the fleet (reserved and started), at the last renewal",
                value=counts.fleet,
            )
            by_tenant = GaugeMetricFamily(
                "voicebridge_fleet_slots_by_tenant", "Slots held across the fleet, by tenant, at the last renewal",
                labels=["tenant"],
            )
            for tenant, count in sorted(counts.tenants.items()):
                by_tenant.add_metric([tenant], count)
            yield by_tenant
        yield GaugeMetricFamily("voicebridge_fleet_calls_held", "Started calls this machine holds a fleet lease for",
                                value=len(fleet.held))
