"""The calls this process carries, and how a call finds its tenant and handler.

The registry is what the stream, the webhook's admission, the drain, ``/metrics`` and the
supervisor link see of the calls: the set of live ``Call``s, their census, the totals of ended
ones, and the routes that ``voicebridge.call.resolve`` decided at start-up.
"""

from __future__ import annotations

import itertools

from voicebridge.call.call import HANDSHAKE, STARTED, Call
from voicebridge.call.capacity import Capacity
from voicebridge.call.resolve import close_grace, resolve_handlers
from voicebridge.call.stats import CallTotals
from voicebridge.web.connectaction import ConnectActions


class CallRegistry:
    """The calls this process carries, and how a call finds its tenant and handler."""

    def __init__(self, settings, clock):
        self.settings = settings
        self.clock = clock
        self.config = settings.config
        self.show_numbers = settings.show_numbers
        self.calls: set[Call] = set()
        self.draining = False
        self.drained = False  # a worker whose drain is over, waiting for the others: no stream is taken
        self.totals = CallTotals()  # ended calls, for /metrics
        self._conns = itertools.count(1)
        self._handlers = settings.handlers if settings.handlers is not None else resolve_handlers(settings)
        self.connect_actions = ConnectActions(clock)
        self.limits = settings.limits
        self.capacity = Capacity(self.limits.max_calls, clock, self)
        self.on_census = None  # under --workers: tells the other workers when census() changes

    def route(self, parameters: dict) -> tuple:
        """(tenant, handler name, handler class, options) for a call with these parameters; raises NoTenant."""
        tenant = self.config.tenant_for(parameters.get("businessId"), parameters.get("to"))
        name, cls, options = self._handlers[tenant.id if tenant is not None else None]
        return tenant, name, cls, options

    def wants_connect_action(self, tenant) -> bool:
        """Whether the webhook should give this tenant's calls ``<Connect action>`` (see Handler.uses_connect_action)."""
        name, cls, options = self._handlers[tenant.id if tenant is not None else None]
        return cls.uses_connect_action(options)

    @property
    def close_grace(self) -> float:
        """The longest a handler in use declared it may take to finish after its call closed (the drain's grace)."""
        return close_grace(self._handlers)

    def new_call(self, link, client: str, query: dict[str, str]) -> Call:
        call = Call(self, link, client, query, next(self._conns))
        self.calls.add(call)
        self.census_changed()
        return call

    def closed(self, call: Call) -> None:
        self.calls.discard(call)
        self.totals.ended(call)
        self.census_changed()

    def census_changed(self) -> None:
        if self.on_census is not None:
            self.on_census()

    def handshake_refused(self, reason: str) -> None:
        self.totals.refused(reason)

    def webhook_refused(self, endpoint: str, reason: str) -> None:
        self.totals.webhook_refused(endpoint, reason)

    @property
    def active(self) -> int:
        return len(self.calls)

    def census(self) -> tuple[int, int]:
        """(started, in handshake): the calls that hold a slot."""
        started = handshaking = 0
        for call in self.calls:
            if call.state == STARTED:
                started += 1
            elif call.state == HANDSHAKE:
                handshaking += 1
        return started, handshaking

    def started_for(self, tenant_id: str) -> int:
        return self.started_by_tenant().get(tenant_id, 0)

    def started_by_tenant(self) -> dict[str, int]:
        """Started calls per tenant id (calls without a tenant are not counted against any)."""
        counts: dict[str, int] = {}
        for call in self.calls:
            if call.state == STARTED and call.tenant is not None:
                counts[call.tenant.id] = counts.get(call.tenant.id, 0) + 1
        return counts
