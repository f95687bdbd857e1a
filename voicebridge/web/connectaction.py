"""What Twilio does when a stream ends: ``<Connect action>`` and ``POST /connect-action``.

``<Connect>`` holds a call until the stream closes; then Twilio requests the ``action`` URL, if the
TwiML gave one, and runs the TwiML it gets back. A handler that needs a say in it (relay: "say a
message and hang up" when the application behind it failed) records its wish here by CallSid;
the webhook gives that handler's calls ``action="PUBLIC_URL/connect-action"``; the action request,
signed like any webhook (``voicebridge.web.twiliorequest``), is answered with the wish, or with ``<Hangup/>``.

Wishes live in this process only, at most ``MAX_ENTRIES`` of them, each for ``TTL`` seconds:
Twilio asks within moments of the stream closing, and an entry nobody asks for must not stay.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.logger import Logger

from voicebridge.observe.logs import printable
from voicebridge.twilio import twiml
from voicebridge.web.twiliorequest import TwilioRequest

log = Logger(namespace="voicebridge.connectaction")

ACTION_PATH = "/connect-action"


def connect_action_url(registry, urls):
    """For the webhook: the action URL for a call of ``tenant`` whose handler wants one, else None."""

    def action(tenant, view):
        return urls.base(view) + ACTION_PATH if registry.wants_connect_action(tenant) else None

    return action


class ConnectActions:
    """CallSid -> the TwiML to answer Twilio's action request with. Bounded and expiring."""

    MAX_ENTRIES = 10_000
    TTL = 600.0

    def __init__(self, clock):
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, str, str, str]] = OrderedDict()

    def say_and_hang_up(self, call_sid: str, message: str, reason: str) -> None:
        self._put(call_sid, twiml.say_and_hang_up(message), reason, "say-and-hangup")

    def dial(self, call_sid: str, destination: str, reason: str) -> None:
        """The stream ended to hand the caller on (an AI agent's ``transfer_call``): answer ``<Dial>``."""
        self._put(call_sid, twiml.dial(destination), reason, "dial")

    def _put(self, call_sid: str, body: str, reason: str, answer: str) -> None:
        self._expire()
        self._entries.pop(call_sid, None)
        self._entries[call_sid] = (self.clock.seconds() + self.TTL, body, reason, answer)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)

    def take(self, call_sid: str) -> tuple[str, str] | None:
        """(TwiML, reason) for this call, once; None if nothing was asked for it (or it expired)."""
        entry = self.take_answer(call_sid)
        return entry[:2] if entry is not None else None

    def take_answer(self, call_sid: str) -> tuple[str, str, str] | None:
        """(TwiML, reason, answer kind: ``say-and-hangup`` or ``dial``) for this call, once; else None."""
        self._expire()
        entry = self._entries.pop(call_sid, None)
        return entry[1:] if entry is not None else None

    def _expire(self) -> None:
        now = self.clock.seconds()
        while self._entries:
            call_sid, (expires, *_) = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[call_sid]

    def __len__(self):
        self._expire()
        return len(self._entries)


class ConnectActionResource(TwilioRequest):
    """``/connect-action``: Twilio asks what follows a stream that ended. Signed and checked like the webhook.

    Twilio requests it with POST unless ``<Connect method="GET">`` says otherwise; a GET carries the
    fields in its query string. It belongs to a call already in progress, so a drain serves it.
    """

    event_prefix = "connect_action"
    endpoint = "connect-action"
    live_call = True

    def __init__(self, actions: ConnectActions, settings, admission, urls):
        super().__init__(settings, admission, urls)
        self.actions = actions

    def answer(self, request, view, fields):
        call_sid = fields.get("CallSid") or ""
        wish = self.actions.take_answer(call_sid) if call_sid else None
        if wish is None:
            body, answer, reason = twiml.hang_up(), "hangup", None
        else:
            body, reason, answer = wish
        log.info(
            "stream ended callSid={callSid}; Twilio asked what next and got {answer}",
            event_name="call.after_stream",
            callSid=printable(call_sid or "-", 40),
            answer=answer,
            because=reason or "-",
        )
        return self.twiml(request, body)
