"""Who may come in: signature checks for webhooks and stream handshakes, development mode, capacity.

One place decides, so the webhook and the stream refuse for the same reasons and log the same
way: the status, a stable reason code, and the URL that was checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger

from voicebridge.call.streamlog import WatchedStreams
from voicebridge.observe.logs import mask_url
from voicebridge.twilio.signatures import SignatureChecker, stream_candidates
from voicebridge.web.publicurl import is_loopback

log = Logger(namespace="voicebridge.admission")


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    message: str


DRAINING = Refusal(
    503,
    "draining",
    "this voicebridge is draining (stopping for a restart or deploy) and takes no new calls; "
    "its live calls go on. Point Twilio at an instance that is ready (/readyz answers 200).",
)


class Admission:
    def __init__(self, settings, registry=None):
        self.settings = settings
        self.registry = registry  # whose ``draining`` turns every new webhook and stream away
        self.checker = SignatureChecker(settings.auth_token) if settings.auth_token else None
        self.capacity = registry.capacity if registry is not None else None
        # Answered calls whose stream never comes (call.stream_missing, service.streams_not_arriving).
        self.streams = WatchedStreams(registry.clock) if registry is not None else None
        if self.capacity is not None:
            self.capacity.streams = self.streams
        self.fleet = None  # with --redis, the fleet's slots too (voicebridge/fleet/leases.py)

    @property
    def draining(self) -> bool:
        return self.registry is not None and self.registry.draining

    @property
    def enforcing(self) -> bool:
        return self.checker is not None

    def _development(self, client: str) -> Refusal | None:
        """``client``: the peer, or behind a trusted proxy the address it forwarded for (a local nginx serves the world)."""
        if is_loopback(client):
            return None
        return Refusal(
            403,
            "development-mode",
            "development mode (no TWILIO_AUTH_TOKEN): only loopback clients are served; "
            "set TWILIO_AUTH_TOKEN or --auth-token-file to accept Twilio",
        )

    def webhook(
        self, client: str, url: str, form_pairs, signature: str | None, settings_header: str | None, live_call: bool = False
    ) -> Refusal | None:
        """``live_call``: the request is about a call already in progress (``<Connect action>``): no drain refusal."""
        if self.draining and not live_call:
            return DRAINING
        if self.checker is None:
            return self._development(client)
        shown = mask_url(url, self.settings.show_numbers)  # a GET webhook's query carries From and To
        if not signature:
            return Refusal(403, "signature-missing", f"no X-Twilio-Signature header (checked url {shown})")
        if not self.checker.valid_webhook(url, form_pairs, signature, settings_header):
            return Refusal(
                403,
                "signature-invalid",
                f"X-Twilio-Signature does not match url {shown} with {len(form_pairs)} form parameters; "
                "is --public-url the URL configured in Twilio?",
            )
        return None

    def stream(self, client: str, stream_url: str, query: str, signature: str | None) -> Refusal | None:
        """During a drain, a handshake is still taken while a call the webhook answered has not connected:
        it is that call's stream (reservations lapse after capacity.RESERVATION_SECONDS; the drain waits
        for them drain.ANSWER_WAIT). In a fleet (``--redis``) every stream belongs to a call some machine
        answered, maybe another one: a draining machine takes any until it has drained, rather than lose it."""
        if self.draining and (self.registry.drained or not self._expecting_stream()):
            return DRAINING
        if self.checker is None:
            return self._development(client) or self._handshake_capacity()
        candidates = stream_candidates(stream_url, query)
        if not signature:
            return Refusal(403, "signature-missing", f"no X-Twilio-Signature header (would check {candidates[0]})")
        if self.checker.valid_stream(candidates, signature) is None:
            shown = ", ".join(mask_url(url, self.settings.show_numbers) for url in candidates)  # a query may carry numbers
            return Refusal(
                403,
                "signature-invalid",
                f"X-Twilio-Signature matches none of {shown}; is --public-url the URL configured in Twilio?",
            )
        return self._handshake_capacity()

    def _expecting_stream(self) -> bool:
        return self.fleet is not None or (self.capacity is not None and self.capacity.expecting_stream())

    def _handshake_capacity(self) -> Refusal | None:
        over = self.capacity.admit_handshake() if self.capacity is not None else None
        return Refusal(503, "over-capacity", over) if over else None

    def call(self, call_sid: str | None, tenant):
        """At the webhook, once the request is known to be Twilio's: is there room for this call?
        A Refusal or None; with a fleet (``--redis``), a Deferred of one, once Redis has answered."""
        over = self.capacity.reserve(call_sid, tenant) if self.capacity is not None else None
        if over:
            return Refusal(503, "over-capacity", over)
        return self.fleet.reserve(call_sid, tenant) if self.fleet is not None else None
