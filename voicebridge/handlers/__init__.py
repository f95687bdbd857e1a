"""Call handlers: where a call's audio goes.

A handler lives for one call. It hears the call's events and talks back through the call
(``send_audio``, ``send_mark``, ``clear``, ``hangup``). Built-in handlers are listed in
``BUILTIN``; third-party ones register under the ``voicebridge.handlers`` entry point group.
Both are found through ``load()``.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "voicebridge.handlers"

# name -> "module:Class"; adding a built-in handler is one new module and one line here.
BUILTIN = {
    "echo": "voicebridge.handlers.echo:EchoHandler",
    "record": "voicebridge.handlers.record:RecordHandler",
    "relay": "voicebridge.handlers.relay:RelayHandler",
    "openai-realtime": "voicebridge.handlers.openai_realtime:OpenAIRealtimeHandler",
}


class UnknownHandler(LookupError):
    pass


class Handler:
    """Base class: override the events you need; each gets the call's context through ``self.call``."""

    # True for a handler that forwards Twilio's frames byte for byte (relay): during each event the
    # frame being handled is ``self.call.frame``, and ``self.call.opening_frames`` holds ``connected``
    # and ``start`` as received. Other handlers leave it False, and their calls pay nothing for it.
    wants_frames = False

    def __init__(self, call, options: dict):
        self.call = call
        self.options = options

    @classmethod
    def check_options(cls, options: dict) -> dict:
        """Validate (and normalize) options at start-up; raise ValueError with a precise message."""
        return options

    @classmethod
    def inner_handler(cls, options: dict) -> str | None:
        """The handler this one hands the call on to, if it wraps one (record records another handler's call).

        Its options are resolved like any handler's, for the same tenant, and given to this one as
        ``options["inner"] = (name, class, options)``.
        """
        return None

    @classmethod
    def uses_connect_action(cls, options: dict) -> bool:
        """True if this handler may decide what Twilio does after the stream ends (relay's spoken fallback).

        The webhook then answers ``<Connect action=".../connect-action">`` for its calls.
        """
        return False

    def on_start(self, start) -> None:
        """Twilio's ``start`` arrived; ``self.call.parameters`` holds the call's context."""

    def on_media(self, audio: bytes, timestamp: int) -> None:
        """20 ms of the caller's mu-law audio; ``timestamp`` is milliseconds since the stream began."""

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_mark(self, name: str) -> None:
        """Audio sent before ``send_mark(name)`` has played (or was cleared)."""

    def on_stop(self, reason: str):
        """The stream ended: ``reason`` is the call's end reason, as ``call.ended`` logs it: ``stop`` (Twilio's),
        ``closed``, ``hangup``, ``error``, ``shutdown`` (a drain closed it), a bound (``idle-timeout``,
        ``max-duration``, ``slow-reader``, ``message-too-big``, ...) or a handler's own (``relay-failed``).

        May return a Deferred; the call is not forgotten until it fires.
        """


def _spec_load(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(import_module(module), attr)


def available() -> dict[str, str]:
    """Every handler name this installation knows, with where it comes from."""
    names = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    return names


def load(name: str) -> type:
    if name in BUILTIN:
        return _spec_load(BUILTIN[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise UnknownHandler(f"no handler named {name!r} (available: {', '.join(sorted(available()))})")
