"""How many calls this daemon carries, globally and per tenant, and whether one more fits.

A call is decided three times, each time with what is known then:

- the webhook knows the CallSid and the tenant: over a limit, the caller hears busy. Otherwise a
  slot is *reserved* for that CallSid, so a burst of webhooks cannot all be answered
  ``<Connect>`` for slots that only some of their streams will get;
- the stream handshake knows neither (they arrive in ``start``): it is refused (503) when the
  daemon is full;
- ``start`` names the call and its tenant: it takes its reservation, and is closed when its
  tenant is over the tenant's limit.

Calls still in handshake state count against the global limit, since they hold a socket and a
slot until ``start`` or the start timeout; a handshake is taken to be the stream of one of the
reservations, so the load is ``started + max(reserved, handshaking)``. Tenants count started
calls and their own reservations. A reservation lapses after ``RESERVATION_SECONDS`` if no
stream claims it (Twilio could not reach the stream URL, say).

Reservations are kept with or without a limit: a drain still takes the streams of calls the
webhook has just answered (``expecting_stream``), and waits for them.

Under ``--workers`` each worker's ``peers`` (voicebridge/workers/peers.py) add the other workers'
calls to the load, and every reservation is shared: a webhook answered by one worker reserves
the slot in all of them, and the ``start`` that takes it, on whichever worker the stream landed,
frees it in all of them. A claim that overtakes its reservation on the way is remembered, so the
late reservation is not held as a phantom slot. The supervisor keeps the same ledger
(``Reservations``) and hands it to a worker that starts late (a restart), so that worker counts
the slots the others reserved before it was there.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict

RESERVATION_SECONDS = 30.0
MAX_RESERVATIONS = 100_000  # without a limit, a bound on memory all the same (the oldest go first)


class NoPeers:
    """A process on its own: nobody else carries calls, nobody hears of reservations."""

    def census(self) -> tuple[int, int]:
        return 0, 0

    def started_for(self, tenant_id: str) -> int:
        return 0

    def reserved(self, call_sid: str, tenant_id: str | None, seconds: float) -> None:
        pass

    def claimed(self, call_sid: str) -> None:
        pass


class Reservations:
    """CallSids a webhook admitted whose ``start`` has not come yet, soonest to lapse first;
    and, where reservations are shared between processes, the claims heard, so that a reservation
    arriving after its claim is not held."""

    def __init__(self, clock):
        self.clock = clock
        self.held: OrderedDict[str, tuple[str | None, float]] = OrderedDict()  # CallSid -> (tenant id, expiry)
        self.claimed: OrderedDict[str, float] = OrderedDict()  # CallSid -> expiry

    def expire(self, now: float | None = None) -> None:
        if now is None:
            now = self.clock.seconds()
        while self.held and next(iter(self.held.values()))[1] <= now:
            self.held.popitem(last=False)
        while self.claimed and next(iter(self.claimed.values())) <= now:
            self.claimed.popitem(last=False)

    def hold(self, key: str, tenant_id: str | None, seconds: float) -> None:
        """Hold ``key`` for ``seconds``, kept in order of expiry (a repeat moves, with its new expiry)."""
        self.held.pop(key, None)
        expiry = self.clock.seconds() + seconds
        later = []  # only a reservation handed over with less time left lands before others
        for sid, (_, other) in reversed(self.held.items()):
            if other <= expiry:
                break
            later.append(sid)
        self.held[key] = (tenant_id, expiry)
        for sid in reversed(later):
            self.held.move_to_end(sid)
        while len(self.held) > MAX_RESERVATIONS:
            self.held.popitem(last=False)

    def heard(self, call_sid: str, tenant_id: str | None, seconds: float) -> None:
        """Another process reserved ``call_sid``: hold it here too, unless its claim came first."""
        self.expire()
        if call_sid not in self.claimed:
            self.hold(call_sid, tenant_id, min(seconds, RESERVATION_SECONDS))

    def claim(self, call_sid: str, remember: bool = True) -> None:
        """``call_sid``'s start took its slot; ``remember`` it where its reservation may still be on the way."""
        self.held.pop(call_sid, None)
        if remember:
            self.claimed.pop(call_sid, None)
            self.claimed[call_sid] = self.clock.seconds() + RESERVATION_SECONDS
            while len(self.claimed) > MAX_RESERVATIONS:
                self.claimed.popitem(last=False)

    def remaining(self) -> list[tuple[str, str | None, float]]:
        """(CallSid, tenant id, seconds left) of every reservation held, soonest to lapse first."""
        now = self.clock.seconds()
        self.expire(now)  # the same instant: every time left is above zero
        return [(sid, tenant_id, expiry - now) for sid, (tenant_id, expiry) in self.held.items()]


class Capacity:
    def __init__(self, max_calls: int | None, clock, registry):
        """``registry`` answers ``census()`` -> (started, handshaking) and ``started_for(tenant_id)``."""
        self.max_calls = max_calls
        self.clock = clock
        self.registry = registry
        self.peers = NoPeers()
        self.reservations = Reservations(clock)
        self._anonymous = itertools.count(1)
        self._anonymous_prefix = f"anonymous-{os.getpid()}-"  # unique across workers too
        self.streams = None  # told of every start, here or on a peer (call/streamlog.py; set by Admission)

    def share_with(self, peers) -> None:
        """Under ``--workers``: ``peers`` answers ``census()`` and ``started_for()`` for the other workers,
        and hears of every reservation made and claimed here."""
        self.peers = peers

    @property
    def shared(self) -> bool:
        return not isinstance(self.peers, NoPeers)

    # What the load is.

    def last_answered(self) -> float | None:
        """When the newest reservation was made (the webhook's last ``<Connect>``), if any is held."""
        self.reservations.expire()
        return next(reversed(self.reservations.held.values()))[1] - RESERVATION_SECONDS if self.reservations.held else None

    def expecting_stream(self) -> bool:
        """A call the webhook answered has not connected its stream yet (a handshake is taken for one)."""
        _, handshaking, reserved = self.counts()
        return reserved > handshaking

    def counts(self) -> tuple[int, int, int]:
        """(started, handshaking, reserved)."""
        self.reservations.expire()
        started, handshaking = self.registry.census()
        peers_started, peers_handshaking = self.peers.census()
        return started + peers_started, handshaking + peers_handshaking, len(self.reservations.held)

    def _tenant_load(self, tenant_id: str, except_sid: str | None = None) -> int:
        started = self.registry.started_for(tenant_id) + self.peers.started_for(tenant_id)
        reserved = sum(1 for sid, (t, _) in self.reservations.held.items() if t == tenant_id and sid != except_sid)
        return started + reserved

    def _limited(self, tenant) -> bool:
        return self.max_calls is not None or (tenant is not None and tenant.max_calls is not None)

    # The three decisions. Each returns None to admit, else why not.

    def reserve(self, call_sid: str | None, tenant) -> str | None:
        """At the webhook: admit (and hold a slot for ``call_sid``) or say which limit is reached."""
        if self._limited(tenant):
            started, handshaking, reserved = self.counts()
            if call_sid in self.reservations.held:
                reserved -= 1  # Twilio asking again for the same call: it already holds its slot
            if self.max_calls is not None and started + max(reserved + 1, handshaking) > self.max_calls:
                return f"this daemon's limit of {self.max_calls} calls is reached (--max-calls)"
            if tenant is not None and tenant.max_calls is not None:
                if self._tenant_load(tenant.id, except_sid=call_sid) + 1 > tenant.max_calls:
                    return f"tenant {tenant.id}'s limit of {tenant.max_calls} calls is reached (max_calls)"
        else:
            self.reservations.expire()
        key = call_sid or f"{self._anonymous_prefix}{next(self._anonymous)}"
        tenant_id = tenant.id if tenant is not None else None
        self.reservations.hold(key, tenant_id, RESERVATION_SECONDS)
        self.peers.reserved(key, tenant_id, RESERVATION_SECONDS)
        return None

    def release(self, call_sid: str) -> None:
        """A reservation made here that the fleet refused after all (voicebridge/fleet): let it go, here and in the peers."""
        self.reservations.claim(call_sid, remember=False)
        self.peers.claimed(call_sid)

    # What the other workers did (``--workers``).

    def peer_reserved(self, call_sid: str, tenant_id: str | None, seconds: float) -> None:
        self.reservations.heard(call_sid, tenant_id, seconds)

    def peer_claimed(self, call_sid: str) -> None:
        self.reservations.claim(call_sid)
        if self.streams is not None:
            self.streams.started(call_sid, here=False)

    def admit_handshake(self) -> str | None:
        """At the stream handshake (this call is not yet among ``calls``)."""
        if self.max_calls is None:
            return None
        started, handshaking, reserved = self.counts()
        if started + max(reserved, handshaking + 1) > self.max_calls:
            return (
                f"this daemon's limit of {self.max_calls} calls is reached (--max-calls): "
                f"{started} started, {handshaking} in handshake, {reserved} answered by the webhook and not yet started"
            )
        return None

    def admit_start(self, call_sid: str, tenant) -> str | None:
        """At ``start``: the call takes its reservation; refused when its tenant is full (the call is not yet STARTED)."""
        self.reservations.expire()
        self.reservations.claim(call_sid, remember=self.shared)
        self.peers.claimed(call_sid)  # the reservation may be held by the worker that answered the webhook
        if self.streams is not None:
            self.streams.started(call_sid)
        if tenant is not None and tenant.max_calls is not None:
            if self._tenant_load(tenant.id) + 1 > tenant.max_calls:
                return f"tenant {tenant.id}'s limit of {tenant.max_calls} calls is reached (max_calls)"
        return None
