"""Events from the Realtime API, checked before any is read: the provider is a peer we do not control.

``parse_event`` is the one step every message from the provider goes through before dispatch. It
answers the event and its ``type``, or raises ``BadEvent`` with a reason from a fixed set (a
``voicebridge_stream_errors_total{reason}`` label; ``call.protocol_error`` counts each and logs it
once per call) and a bounded detail:

- ``realtime-invalid-json``: not JSON;
- ``realtime-not-object``: JSON, but not an object;
- ``realtime-missing-type``: an object without ``type``;
- ``realtime-bad-type``: ``type`` not a string, empty, or longer than ``MAX_TYPE_LENGTH``;
- ``realtime-too-deep``: containers nested deeper than ``MAX_EVENT_DEPTH`` anywhere in the event
  (known type or not), or beyond orjson's own 1,024 levels. The GA events nest about 8 deep at most
  (``session.updated`` echoing the tools' JSON schemas), so nothing downstream (``str()``, ``repr()``,
  a log serializer) ever recurses over a peer's nesting.

The size is bounded before this, by the link's maximum message size. The fields an event handler reads
are then type-checked one by one (``text``, ``shown``): a wrong one is ``realtime-bad-field``.
"""

from __future__ import annotations

import orjson

from voicebridge.handlers.api import printable
from voicebridge.twilio.messages import too_deep

MAX_EVENT_DEPTH = 32
MAX_TYPE_LENGTH = 128  # the longest GA type, conversation.item.input_audio_transcription.completed, is 53
MAX_ID_LENGTH = 256  # an item, response or call id kept or echoed back (the API's are about 30 characters)

REASONS = (
    "realtime-invalid-json",
    "realtime-not-object",
    "realtime-missing-type",
    "realtime-bad-type",
    "realtime-too-deep",
    "realtime-bad-field",
)

_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class BadEvent(Exception):
    """A message from the provider that is not an event this handler may read: ``reason`` (fixed set), ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def json_type(value) -> str:
    """The JSON name of a parsed value's type (never its contents)."""
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def parse_event(payload: bytes | str) -> tuple[dict, str]:
    """(event, type) of one text message from the provider, or ``BadEvent``; never anything else."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e) or "recursion" in str(e).lower():  # orjson's own bound: 1,024 levels
            detail = f"{len(payload)} bytes of JSON nesting more than 1,024 levels (the bound is {MAX_EVENT_DEPTH})"
            raise BadEvent("realtime-too-deep", detail) from None
        raise BadEvent("realtime-invalid-json", f"{len(payload)} bytes that are not JSON: {printable(str(e), 80)}") from None
    except RecursionError:  # a backstop: orjson bounds its own depth
        raise BadEvent("realtime-too-deep", f"{len(payload)} bytes of JSON nesting too deep to decode") from None
    if type(event) is not dict:
        raise BadEvent("realtime-not-object", f"a JSON {json_type(event)}, not an event object")
    kind = event.get("type")
    if type(kind) is not str:
        if kind is None:
            raise BadEvent("realtime-missing-type", "an object without 'type'")
        raise BadEvent("realtime-bad-type", f"an object whose 'type' is a JSON {json_type(kind)}, not a string")
    if not kind or len(kind) > MAX_TYPE_LENGTH:
        raise BadEvent("realtime-bad-type", f"an object whose 'type' is {len(kind)} characters, not 1 to {MAX_TYPE_LENGTH}")
    if too_deep(event, MAX_EVENT_DEPTH):
        raise BadEvent("realtime-too-deep", f"{printable(kind, 64)} nests more than {MAX_EVENT_DEPTH} levels deep")
    return event, kind


def text(obj: dict, key: str, where: str, limit: int = MAX_ID_LENGTH, required: bool = True) -> str | None:
    """``obj[key]``, a non-empty string of at most ``limit`` characters; None when absent and not required.

    Anything else raises ``BadEvent("realtime-bad-field")`` naming the field and what it was (its JSON
    type or length, never its contents).
    """
    value = obj.get(key)
    if type(value) is str and 0 < len(value) <= limit:
        return value
    if value is None and not required:
        return None
    if type(value) is str:
        problem = f"{len(value)} characters, not 1 to {limit}"
    else:
        problem = f"a JSON {json_type(value)}, not a string"
    raise BadEvent("realtime-bad-field", f"{where}.{key} is {problem}")


def section(obj: dict, key: str, where: str, required: bool = True) -> dict:
    """``obj[key]``, an object; ``{}`` when absent and not required; else ``BadEvent("realtime-bad-field")``."""
    value = obj.get(key)
    if type(value) is dict:
        return value
    if value is None and not required:
        return {}
    raise BadEvent("realtime-bad-field", f"{where}.{key} is a JSON {json_type(value)}, not an object")


def shown(value, limit: int) -> str:
    """A field for a log line or a message back to the agent: a string escaped and cut, else only its JSON type."""
    if type(value) is str:
        return printable(value, limit)
    return "-" if value is None else f"<{json_type(value)}>"


def arguments(value) -> dict:
    """A function call's ``arguments`` (a JSON text, itself decoded here): the object, or ``{}``."""
    if type(value) is not str:
        return {}
    try:
        parsed = orjson.loads(value)
    except (orjson.JSONDecodeError, RecursionError):
        return {}
    if type(parsed) is not dict or too_deep(parsed, MAX_EVENT_DEPTH):
        return {}
    return parsed
