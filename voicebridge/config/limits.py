"""Every bound the daemon enforces on time, size and concurrency, and the flags that set them.

An open media-stream endpoint is a toll-fraud and denial-of-service target: each resource a
peer can hold (a socket, a call slot, memory for its frames, a log line) has a bound here, with
a default a production daemon can run on. ``tap.Options`` takes its flags from ``OPTIONS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

KIB = 1024


@dataclass(frozen=True)
class Limits:
    # Time, in seconds.
    handshake_timeout: float = 10.0  # connect -> complete HTTP request (webhook or WebSocket upgrade)
    start_timeout: float = 10.0  # WebSocket open -> Twilio's ``start``
    idle_timeout: float = 30.0  # no ``media`` for this long -> close
    max_duration: float = 4 * 3600.0  # any call, from its handshake
    ping_interval: float = 20.0  # WebSocket ping after this much quiet, so dead peers are noticed
    ping_timeout: float = 20.0  # ... and no pong within this long -> drop
    drain_timeout: float = 300.0  # on SIGTERM, live calls may go on this long before 1001
    # Size, in bytes.
    max_body_size: int = 64 * KIB  # an HTTP request body (the webhook's form)
    max_send_buffer: int = 1024 * KIB  # a call's outbound bytes queued beyond the socket's own buffer
    max_message_size: int = 64 * KIB  # one WebSocket message (Twilio's are about 300 bytes)
    # Concurrency.
    max_calls: int | None = None  # calls in progress on this daemon; None: no limit


# (flag, attribute, type, help). Defaults come from Limits.
OPTIONS = [
    (
        "max-calls",
        "max_calls",
        int,
        "Most calls in progress at once (webhook answers busy, handshakes get 503).",
    ),
    ("start-timeout", "start_timeout", float, "Seconds from the WebSocket handshake to Twilio's start (closes with 1008)."),
    ("idle-timeout", "idle_timeout", float, "Seconds without media before a started call is closed (1008)."),
    ("max-duration", "max_duration", float, "Longest call, in seconds (closes with 1008)."),
    ("handshake-timeout", "handshake_timeout", float, "Seconds a client has to deliver a complete HTTP request or upgrade."),
    ("ping-interval", "ping_interval", float, "Seconds between WebSocket pings; 0 turns pings off."),
    ("ping-timeout", "ping_timeout", float, "Seconds to wait for a pong before dropping the connection."),
    ("max-body-size", "max_body_size", int, "Largest HTTP request body, in bytes (413 beyond)."),
    ("max-send-buffer", "max_send_buffer", int, "Outbound bytes a call may queue for a peer that does not read (1008 beyond)."),
    ("max-message-size", "max_message_size", int, "Largest WebSocket message accepted, in bytes (closes with 1009)."),
    ("drain-timeout", "drain_timeout", float, "On SIGTERM, seconds live calls may go on before they are closed with 1001."),
]

_DEFAULTS = {f.name: f.default for f in fields(Limits)}
_MINIMUM = {
    "max_calls": 0,
    "start_timeout": 0.1,
    "idle_timeout": 0.1,
    "max_duration": 1.0,
    "handshake_timeout": 0.1,
    "ping_interval": 0.0,  # off; else at least 1: Autobahn schedules pings on whole seconds
    "ping_timeout": 1.0,
    "max_body_size": 1 * KIB,
    "max_send_buffer": 16 * KIB,
    "max_message_size": 1 * KIB,
    "drain_timeout": 0.0,  # close live calls at once
}
_MAXIMUM = {"drain_timeout": 86400.0}


def opt_parameters() -> list:
    """``optParameters`` rows for ``tap.Options``; every default is None, meaning Limits' own default."""
    rows = []
    for flag, attr, kind, help in OPTIONS:
        default = _DEFAULTS[attr]
        rows.append([flag, None, None, f"{help} [default: {'no limit' if default is None else f'{default:.12g}'}]", kind])
    return rows


def from_options(options) -> Limits:
    """Limits from parsed options; raises ValueError naming the flag and its minimum (tap makes it a usage error)."""
    values = {}
    for flag, attr, _kind, _help in OPTIONS:
        value = options[flag]
        if value is None:
            continue
        if attr in _MAXIMUM and not (math.isfinite(value) and _MINIMUM[attr] <= value <= _MAXIMUM[attr]):
            raise ValueError(f"--{flag} must be between {_MINIMUM[attr]:g} and {_MAXIMUM[attr]:g}, got {value}")
        if not math.isfinite(value) or value < _MINIMUM[attr]:
            raise ValueError(f"--{flag} must be at least {_MINIMUM[attr]}, got {value}")
        if attr == "ping_interval" and 0 < value < 1:
            raise ValueError(f"--{flag} must be 0 (no pings) or at least 1, got {value}")
        values[attr] = value
    return Limits(**values)
