"""Call handlers: where a call's audio goes. This module is their registry.

A handler lives for one call. It hears the call's events and talks back through the call; what
it may use is the handler API, ``voicebridge.handlers.api`` (``Handler`` is importable from here
too, as handlers written before that module do). Built-in handlers are listed in ``BUILTIN``;
third-party ones register under the ``voicebridge.handlers`` entry point group. Both are found
through ``load()``. The registry itself is pure: the API (and Twisted with it) is imported only
when a handler is.
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
}


class UnknownHandler(LookupError):
    pass


def __getattr__(name: str):
    """``voicebridge.handlers.Handler``: the old import path of the base class, loaded when first asked for."""
    if name in ("Handler", "HandlerCall"):
        from voicebridge.handlers import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
