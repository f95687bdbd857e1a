"""The fast path's one switch: on unless ``--no-fast-path``, ``VOICEBRIDGE_FAST_PATH=off`` or the self-check says no.

Off, the daemon serves on plain Twisted and Autobahn: Twisted's own poll step, Autobahn's own
frames both ways, no C masker needed. It costs CPU (docs/benchmarks.md), never correctness:
tests/test_wsconformance.py holds the two paths to the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger

log = Logger(namespace="voicebridge.fastpath")

ENV = "VOICEBRIDGE_FAST_PATH"
FLAG = "--no-fast-path"


@dataclass(frozen=True)
class Decision:
    """Whether calls take the fast path, and why (what the ``service.listening`` banner says)."""

    on: bool
    reason: str
    missing: tuple[str, ...] = ()  # what the self-check did not find


def requested(no_fast_path: bool, environ) -> Decision:
    """What the operator asked for: the flag wins over the environment. ValueError names a bad value."""
    value = environ.get(ENV, "").strip()
    if value.lower() not in ("", "on", "off"):
        raise ValueError(f"{ENV}={value!r}: use on or off")
    if no_fast_path:
        return Decision(False, FLAG)
    if value.lower() == "off":
        return Decision(False, f"{ENV}=off")
    return Decision(True, "requested")


def decide(request: Decision, reactor, check=None) -> Decision:
    """The request, checked: off when asked, or when ``check(reactor)`` (the self-check) finds a problem."""
    if not request.on:
        return request
    if check is None:
        from voicebridge.fastpath.selfcheck import problems as check
    missing = tuple(check(reactor))
    if missing:
        return Decision(False, "self-check failed: " + "; ".join(missing), missing)
    from voicebridge.fastpath.selfcheck import is_epoll

    if not is_epoll(reactor):
        return Decision(True, f"self-check passed; the poll step is {type(reactor).__name__}'s own (not epoll)")
    return Decision(True, "self-check passed")


def engage(request: Decision, reactor, install: bool = True, check=None) -> Decision:
    """``decide``, say so when the self-check turned it off, and install the lean poll step when on (``install``)."""
    decision = decide(request, reactor, check)
    if decision.missing:
        log.warn(
            "fast path disabled: the self-check did not find {missing}; serving on plain Twisted and Autobahn "
            "(a Twisted, Autobahn or websockets release this voicebridge was not tested with? see constraints.txt)",
            event_name="fastpath.disabled",
            missing=", ".join(decision.missing),
        )
    from voicebridge.net.leanclient import LeanClientFrames

    LeanClientFrames.lean = decision.on  # the AI provider link's frames follow the same switch
    if decision.on and install:
        from voicebridge.fastpath import leanloop

        leanloop.install(reactor)  # a tenth of the CPU at load: see voicebridge/fastpath/leanloop.py
    return decision
