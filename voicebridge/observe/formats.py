"""What one log event looks like on a line: ``text``, ``journald`` or ``json`` (JSON lines).

Pure functions from a ``twisted.logger`` event to a line, tested without a reactor
(tests/test_log_formats.py); voicebridge/observe/output.py writes them.

- ``record(event)``: the flat, JSON-safe form: ``time`` (RFC 3339 UTC), ``level``, ``event``
  (its ``event_name``; a library line has none and gets ``twisted.log``, ``autobahn.log``...), ``message`` (rendered),
  ``logger``, the event's own fields, and ``traceback`` when it carries a failure. No Twisted
  internals (``log_*``, the legacy ``log.msg`` keys).
- ``json_line``: that record as one JSON object, ASCII only, so no byte of it can split a line
  or fail to encode, whatever a peer sent.
- ``text_line``: ``time level event message`` plus ``callSid=``/``conn=``/``worker=`` when the
  message does not say them already. Control characters are escaped, so one event is one line
  and a peer cannot start a line of its own; a traceback follows on lines indented by four spaces.
  ``journald=True`` drops the time (the journal keeps its own) and starts each line with the
  syslog priority, ``<4>`` for a warning, which journald's stdout stream reads as the line's
  priority: ``journalctl -p warning`` shows exactly the warnings and errors.

Cost: a ``call.ended`` line takes about 100 us in either format on the shared test VM, against 85 us
for twist's own JSON of the same event; a call logs a handful of lines, so nothing here is tuned.
"""

from __future__ import annotations

import json
import math
import time

from twisted.logger import LogLevel, formatEvent
from twisted.python.log import textFromEventDict

STANDARD = ("time", "level", "event", "message", "logger", "traceback")
# twisted.python.log.msg's own keys (an event it made carries "isError" and a tuple "message").
LEGACY = frozenset({"message", "isError", "time", "system", "format", "failure", "why", "logLevel", "printed"})
# The call's identifiers: what a text line ends with when its message does not say them (and ``worker=``).
TEXT_FIELDS = ("callSid", "conn")
PRIORITIES = {"debug": 7, "info": 6, "warn": 4, "error": 3, "critical": 2}

MAX_DEPTH = 4
MAX_ITEMS = 100
MAX_TEXT = 2000  # an object's str()
# Our own fields and messages are bounded where they are logged; this bounds anyone's, below
# journald's LineMax (48 KiB), which would split a longer line into entries of its own.
MAX_STRING = 8192
# C0 and C1 control characters, DEL and Unicode's line separators, as visible escapes: a line ends
# only where the formatter ends it, for any reader (Python's splitlines() breaks at \x85 and \u2028).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def level_name(event: dict) -> str:
    level = event.get("log_level")
    name = getattr(level, "name", None)
    return name if isinstance(name, str) and name in PRIORITIES else "info"


def rfc3339(when) -> str:
    """``2026-12-04T05:21:41.123Z``: UTC, milliseconds."""
    if not isinstance(when, (int, float)) or not math.isfinite(when):
        when = time.time()
    seconds = int(when)
    millis = min(int((when - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def bounded(text: str, limit: int = MAX_STRING) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def jsonable(value, depth: int = 0):
    """``value`` as something ``json.dumps`` writes as it is (finite numbers, strings, lists, objects)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return bounded(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:MAX_TEXT]).decode("latin-1") + ("..." if len(value) > MAX_TEXT else "")
    if depth < MAX_DEPTH:
        if isinstance(value, dict):
            items = list(value.items())[:MAX_ITEMS]
            return {str(k): jsonable(v, depth + 1) for k, v in items}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [jsonable(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    if isinstance(value, type(LogLevel.info)):  # constantly's NamedConstant: LogLevel.warn and its kin
        return value.name
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return bounded(text, MAX_TEXT)


def _traceback(event: dict, legacy: bool) -> str | None:
    if isinstance(event.get("log_traceback"), str):  # written by a worker (output.worker_observer)
        return event["log_traceback"]
    failure = event.get("failure") if legacy else event.get("log_failure")
    if failure is None:
        return None
    try:
        return failure.getTraceback()
    except Exception:  # a failure restored from a worker's JSON, or a broken one: say what it was
        return f"{getattr(failure, 'type', '?')}: {getattr(failure, 'value', '?')}"


def library_event(logger: str) -> str:
    """A line without an ``event_name`` (Twisted's, a library's) is ``twisted.log``, ``autobahn.log``...:
    its package, where ``logger`` has the rest. ``log.msg`` (Twisted's legacy API) is Twisted's."""
    top = logger.split(".", 1)[0]
    return "twisted.log" if top in ("log_legacy", "-", "") else f"{top}.log"


def record(event: dict) -> dict:
    """The event as one flat, JSON-safe dict, in the order a line shows it."""
    legacy = "isError" in event and "log_logger" not in event
    if legacy and event.get("failure") is not None:
        message = str(event.get("why") or "Unhandled Error")
    elif isinstance(event.get("log_rendered"), str):  # a worker's, formatted there (output.worker_observer)
        message = event["log_rendered"]
    else:
        message = formatEvent(event) if "log_format" in event or not legacy else textFromEventDict(event) or ""
    logger = str(event.get("log_namespace") or "-")
    name = event.get("event_name")
    out = {
        "time": rfc3339(event.get("log_time")),
        "level": level_name(event),
        "event": bounded(str(name), 200) if name else library_event(logger),
        "message": bounded(message),
        "logger": logger,
    }
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in ("event_name", "__class_uuid__"):
            continue
        if legacy and key in LEGACY:
            continue
        out[key + "_" if key in STANDARD else key] = jsonable(value)
    traceback = _traceback(event, legacy)
    if traceback:
        out["traceback"] = traceback
    return out


def json_line(event: dict) -> str:
    return json.dumps(record(event), ensure_ascii=True, separators=(",", ":"), default=str) + "\n"


def escape(text: str) -> str:
    """Control characters made visible (a backslash already in the text stays as it is)."""
    return text.translate(_CONTROLS)


def text_line(event: dict, journald: bool = False) -> str:
    r = record(event)
    message = escape(r["message"])
    head = f"{r['level']:<5} {escape(r['event'])} {message}"
    tail = []
    for key in TEXT_FIELDS:
        value = r.get(key)
        if value not in (None, "", "-"):
            pair = escape(f"{key}={value}")
            if pair not in message:
                tail.append(pair)
    if "worker_pid" in r and "worker" in r:  # relayed from a worker by the supervisor
        tail.append(escape(f"worker={r['worker']}"))
    line = " ".join([head, *tail])
    prefix = f"<{PRIORITIES[r['level']]}>" if journald else ""
    lines = [prefix + (line if journald else f"{r['time']} {line}")]
    if "traceback" in r:
        lines += [f"{prefix}    {escape(bounded(extra))}" for extra in r["traceback"].rstrip("\n").split("\n")]
    return "\n".join(lines) + "\n"
