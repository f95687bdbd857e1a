"""Twilio Media Streams messages: parsing what Twilio sends, building what either side sends.

Pure functions and plain values, no I/O: the wire format is tested without a reactor, and the
daemon, the probe, the load tester and the tests all share one description of it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass, field

import orjson


class MessageError(ValueError):
    """A text frame that breaks the Media Streams protocol.

    ``reason`` is a short stable code (used in logs and metrics); ``detail`` says what was wrong.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: dict
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    payload: bytes
    timestamp: int
    track: str = "inbound"
    chunk: int | None = None
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str
    track: str = "inbound_track"


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str | None = None
    account_sid: str | None = None


@dataclass(frozen=True, slots=True)
class Clear:
    """Sent by the application only: flush the audio Twilio has buffered."""

    stream_sid: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event this version does not know; Twilio adds events, so it is not an error."""

    event: str
    raw: dict = field(repr=False)


# The shapes Twilio sends, bounded. Twilio's messages nest three deep (start.customParameters.NAME);
# a message nested deeper than MAX_DEPTH anywhere (an unknown field too) is refused before any field
# is read, so nothing downstream (str(), a log serializer, json.dumps) ever recurses over a peer's
# nesting. customParameters are <Parameter>s, each name and value under 500 characters (Twilio's
# rule); voicebridge's own webhook sends at most 25.
MAX_DEPTH = 8
MAX_PARAMETERS = 32
MAX_PARAMETER_LENGTH = 499
MAX_TRACKS = 4
MAX_MARK_NAME = 256
MAX_SHORT_TEXT = 64  # connected.protocol, connected.version, mediaFormat's text values
MAX_MEDIA_FORMAT_KEYS = 8
_TOKEN = re.compile(r"[A-Za-z_]{1,32}")  # a track: "inbound", "outbound", "inbound_track", ...
_DIGIT = re.compile(r"[0-9A-Da-d*#]")


def too_deep(obj, limit: int = MAX_DEPTH) -> bool:
    """Whether ``obj`` (parsed JSON) nests more than ``limit`` containers deep; iterative, never recursion.

    Visits each container once: a Twilio start message costs about a microsecond.
    """
    level = [obj]
    for _ in range(limit):
        deeper = []
        for container in level:
            for value in container.values() if type(container) is dict else container:
                if type(value) is dict or type(value) is list:
                    deeper.append(value)
        if not deeper:
            return False
        level = deeper
    return True


def _text(obj: dict, key: str, where: str, limit: int = MAX_MARK_NAME) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MessageError("missing-field", f"{where}.{key} must be a non-empty string")
    if len(value) > limit:
        raise MessageError("bad-field", f"{where}.{key} is {len(value)} characters, over {limit}")
    return value


def _short_text(obj: dict, key: str, where: str, default: str = "") -> str:
    """An optional string field of at most MAX_SHORT_TEXT characters."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_SHORT_TEXT:
        raise MessageError("bad-field", f"{where}.{key} must be a string of at most {MAX_SHORT_TEXT} characters")
    return value


def _track(obj: dict, where: str, default: str) -> str:
    value = obj.get("track")
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise MessageError("bad-field", f"{where}.track must be a track name (letters and '_'), got {_kind(value)}")
    return value


def _kind(value) -> str:
    """What a bad value is, for a detail: its type, and a short string's own text. Never str() of a container."""
    if isinstance(value, str):
        return repr(value[:40])
    return type(value).__name__


def _section(obj: dict, key: str) -> dict:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise MessageError("missing-field", f"{key} must be an object")
    return value


def _number(value, where: str, default=None) -> int | None:
    """Twilio sends counters as decimal strings ("5"); accept integers too."""
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    raise MessageError("bad-field", f"{where} must be a non-negative integer, got {_kind(value)}")


# Twilio's SIDs are two letters and 32 hex digits; this admits any short token of letters and
# digits, and nothing that could break a log line or a file name built from it.
_SID = re.compile(r"[A-Za-z0-9]{1,64}")


def _sid(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MessageError("missing-field", f"{where} must be a non-empty string")
    if not _SID.fullmatch(value):
        raise MessageError("bad-field", f"{where} must be letters and digits (a Twilio SID), got {_kind(value)}")
    return value


def _stream_sid(obj: dict, event: str) -> str:
    return _sid(obj.get("streamSid"), f"{event}.streamSid")


def _parse_connected(obj):
    return Connected(protocol=_short_text(obj, "protocol", "connected"), version=_short_text(obj, "version", "connected"))


def _parameters(params) -> dict[str, str]:
    """start.customParameters: at most MAX_PARAMETERS string names and values, each under 500 characters."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise MessageError("bad-field", f"start.customParameters must be an object, got {_kind(params)}")
    if len(params) > MAX_PARAMETERS:
        raise MessageError("too-many-parameters", f"start.customParameters has {len(params)} parameters, over {MAX_PARAMETERS}")
    for name, value in params.items():
        if not isinstance(value, str):
            raise MessageError("bad-field", f"start.customParameters[{name[:40]!r}] must be a string, got {_kind(value)}")
        if len(name) > MAX_PARAMETER_LENGTH or len(value) > MAX_PARAMETER_LENGTH:
            raise MessageError(
                "parameter-too-long",
                f"start.customParameters[{name[:40]!r}]: names and values are under 500 characters "
                f"(got {len(name)} and {len(value)})",
            )
    return dict(params)


def _media_format(value) -> dict:
    """start.mediaFormat: a flat object of a few short scalar fields (encoding, sampleRate, channels)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_MEDIA_FORMAT_KEYS:
        raise MessageError("bad-field", f"start.mediaFormat must be an object of at most {MAX_MEDIA_FORMAT_KEYS} fields")
    for key, item in value.items():
        if len(key) > 32 or not (
            item is None
            or isinstance(item, (bool, int, float))
            and (not isinstance(item, int) or abs(item) < 10**18)
            or isinstance(item, str)
            and len(item) <= MAX_SHORT_TEXT
        ):
            raise MessageError("bad-field", f"start.mediaFormat.{key[:32]} must be a number or a short string, got {_kind(item)}")
    return dict(value)


def _parse_start(obj):
    start = _section(obj, "start")
    sid = _sid(obj.get("streamSid") or start.get("streamSid"), "start.streamSid")
    tracks = start.get("tracks") or ["inbound"]
    if (
        not isinstance(tracks, list)
        or len(tracks) > MAX_TRACKS
        or not all(isinstance(t, str) and _TOKEN.fullmatch(t) for t in tracks)
    ):
        raise MessageError("bad-field", f"start.tracks must be a list of at most {MAX_TRACKS} track names")
    return Start(
        stream_sid=sid,
        call_sid=_sid(start.get("callSid"), "start.callSid"),
        account_sid=_sid(start["accountSid"], "start.accountSid") if start.get("accountSid") else "",
        tracks=tuple(tracks),
        custom_parameters=_parameters(start.get("customParameters")),
        media_format=_media_format(start.get("mediaFormat")),
        sequence_number=_number(obj.get("sequenceNumber"), "sequenceNumber"),
    )


def _parse_media(obj):
    media = _section(obj, "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise MessageError("missing-field", "media.payload must be a string")
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("bad-base64", f"media.payload is not base64 ({len(payload)} chars)") from None
    return Media(
        stream_sid=_stream_sid(obj, "media"),
        payload=audio,
        timestamp=_number(media.get("timestamp"), "media.timestamp", 0),
        track=_track(media, "media", "inbound"),
        chunk=_number(media.get("chunk"), "media.chunk"),
        sequence_number=_number(obj.get("sequenceNumber"), "sequenceNumber"),
    )


def _parse_dtmf(obj):
    dtmf = _section(obj, "dtmf")
    digit = _text(dtmf, "digit", "dtmf")
    if not _DIGIT.fullmatch(digit):
        raise MessageError("bad-field", f"dtmf.digit must be one key (0-9, *, #, A-D), got {_kind(digit)}")
    return Dtmf(stream_sid=_stream_sid(obj, "dtmf"), digit=digit, track=_track(dtmf, "dtmf", "inbound_track"))


def _parse_mark(obj):
    mark = _section(obj, "mark")
    name = mark.get("name")
    if not isinstance(name, str):
        raise MessageError("missing-field", "mark.name must be a string")
    if len(name) > MAX_MARK_NAME:
        raise MessageError("bad-field", f"mark.name is {len(name)} characters, over {MAX_MARK_NAME}")
    return Mark(stream_sid=_stream_sid(obj, "mark"), name=name)


def _optional_sid(section: dict, key: str) -> str | None:
    value = section.get(key)
    return value if isinstance(value, str) and _SID.fullmatch(value) else None


def _parse_stop(obj):
    stop = obj.get("stop") if isinstance(obj.get("stop"), dict) else {}
    return Stop(
        stream_sid=_stream_sid(obj, "stop"),
        call_sid=_optional_sid(stop, "callSid"),
        account_sid=_optional_sid(stop, "accountSid"),
    )


_FAST_TRACKS = frozenset({"inbound", "outbound"})


def media_fields(data: bytes | str, stream_sid: str | None = None) -> tuple[str, bytes, int] | None:
    """(streamSid, audio, timestamp) of a ``media`` frame in Twilio's own shape, else None.

    With ``stream_sid`` (one ``parse`` accepted: a started call's own), only a frame of that
    stream is taken, and its SID is not checked again (about 2,000 instructions of the 66,000 an
    echoed frame costs, benchmarks/instructions.py).

    The receive hot path: no message object, no counters parsed that nobody reads. None is not
    an error, only "not the common case": ``parse`` then gives the full answer. Whatever this
    accepts, ``parse`` accepts with the same values (tests/test_messages_fast.py checks both).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.get("event") != "media":
        return None
    media = obj.get("media")
    sid = obj.get("streamSid")
    # Exactly Twilio's four fields at each level (so no unknown field, of any depth, slips past
    # ``parse``'s bounds), and a streamSid of letters and digits, as ``parse`` demands.
    if type(media) is not dict or type(sid) is not str or len(obj) != 4 or len(media) != 4:
        return None
    if stream_sid is not None:
        if sid != stream_sid:
            return None
    # bytes.isalnum is a table lookup per byte; str.isalnum asks the Unicode database for each
    # character (1,900 instructions for a 34-character SID, 3% of an echoed frame's).
    elif not (len(sid) <= 64 and sid.isascii() and sid.encode().isalnum()):
        return None
    payload = media.get("payload")
    timestamp = media.get("timestamp")
    track = media.get("track")
    if type(payload) is not str or type(timestamp) is not str or type(track) is not str:
        return None
    if track != "inbound" and track not in _FAST_TRACKS:  # a compare, not a hash of a new string
        return None
    chunk = media.get("chunk")  # parse() refuses a frame with a bad counter: so does this
    sequence = obj.get("sequenceNumber")
    if type(chunk) is not str or type(sequence) is not str:
        return None
    digits = timestamp + chunk + sequence
    if not (
        digits.isdigit() and digits.isascii() and 0 < len(timestamp) <= 18 and 0 < len(chunk) <= 18 and 0 < len(sequence) <= 18
    ):
        return None
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except ValueError:
        return None
    return sid, audio, int(timestamp)


_PARSERS = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


def _loads(data: bytes | str):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e) or "recursion" in str(e).lower():  # orjson's own limit: 1024 levels
            raise MessageError("too-deep", f"the message nests more than {MAX_DEPTH} levels deep") from None
        raise MessageError("invalid-json", str(e)[:120]) from None


def parse(data: bytes | str):
    """Parse one text frame from Twilio into a message value, or raise MessageError."""
    obj = _loads(data)
    if not isinstance(obj, dict):
        raise MessageError("not-object", f"expected a JSON object, got {type(obj).__name__}")
    if too_deep(obj):
        raise MessageError("too-deep", f"the message nests more than {MAX_DEPTH} levels deep; Twilio's nest 3")
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise MessageError("missing-event", "the object has no string 'event'")
    parser = _PARSERS.get(event)
    if parser is None:
        return Unknown(event=event[:64], raw=obj)
    try:
        return parser(obj)
    except RecursionError:  # a bound above was missed: still a precise answer, never an unhandled error
        raise MessageError("too-deep", "a field nests too deep to read") from None


# What the application sends to Twilio.


def media(stream_sid: str, audio: bytes) -> bytes:
    """A ``media`` message carrying raw mu-law audio (base64-encoded here).

    Byte for byte ``orjson.dumps({"event": "media", "streamSid": .., "media": {"payload": ..}})``,
    assembled from a per-stream head: this runs for every frame sent.
    """
    return _media_head(stream_sid) + binascii.b2a_base64(audio, newline=False) + b'"}}'


# One entry per live stream: 1,024 covers what one process carries (about 700 calls per core,
# docs/benchmarks.md) in about 300 KB. It was 8,192: the soak saw RSS grow 1.2 MB over the first
# 5,000 calls as it filled, an entry per ended call (docs/benchmarks.md#soak).
@functools.lru_cache(maxsize=1024)
def _media_head(stream_sid: str) -> bytes:
    return b'{"event":"media","streamSid":' + orjson.dumps(stream_sid) + b',"media":{"payload":"'


def mark(stream_sid: str, name: str) -> bytes:
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear(stream_sid: str) -> bytes:
    return orjson.dumps({"event": "clear", "streamSid": stream_sid})


def parse_outbound(data: bytes | str):
    """Parse what an application sent to Twilio (used by Twilio's side: probe, load tester, tests)."""
    obj = _loads(data)
    if not isinstance(obj, dict):
        raise MessageError("not-object", f"expected a JSON object, got {type(obj).__name__}")
    if too_deep(obj):
        raise MessageError("too-deep", f"the message nests more than {MAX_DEPTH} levels deep")
    event = obj.get("event")
    if event == "media":
        payload = _section(obj, "media").get("payload")
        if not isinstance(payload, str):
            raise MessageError("missing-field", "media.payload must be a string")
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError("bad-base64", "media.payload is not base64") from None
        return Media(stream_sid=_stream_sid(obj, "media"), payload=audio, timestamp=0, track="outbound")
    if event == "mark":
        return _parse_mark(obj)
    if event == "clear":
        return Clear(stream_sid=_stream_sid(obj, "clear"))
    if not isinstance(event, str) or not event:
        raise MessageError("missing-event", "the object has no string 'event'")
    return Unknown(event=event[:64], raw=obj)


_MEDIA_HEAD = b'{"event":"media",'
_PAYLOAD_KEY = b'"payload":"'


def outbound_media_payload(data: bytes) -> bytes | None:
    """The base64 payload of a compact ``media`` message an application sent, without parsing it.

    For readers of many frames (the load tester). None when the message is not in the compact
    form that orjson, ``JSON.stringify`` and ``media()`` write: then ``parse_outbound`` decides.
    """
    if not data.startswith(_MEDIA_HEAD):
        return None
    start = data.find(_PAYLOAD_KEY)
    if start < 0:
        return None
    start += len(_PAYLOAD_KEY)
    end = data.find(b'"', start)
    if end < 0 or data.find(b"\\", start, end) >= 0:
        return None
    return data[start:end]


# What Twilio sends, for code that plays Twilio.


def twilio_connected() -> bytes:
    return orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def twilio_start(
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    custom_parameters: dict[str, str] | None = None,
    sequence_number: int = 1,
) -> bytes:
    return orjson.dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": dict(custom_parameters or {}),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def twilio_media(stream_sid: str, audio: bytes, chunk: int, timestamp: int, sequence_number: int) -> bytes:
    return orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(timestamp),
                "payload": base64.b64encode(audio).decode("ascii"),
            },
        }
    )


def twilio_media_template(stream_sid: str) -> bytes:
    """``twilio_media`` as a bytes %-template, for senders of many frames (the load tester).

    ``template % (sequence_number, chunk, timestamp, base64_payload_bytes)`` is byte for byte
    what ``twilio_media`` returns, without building and serialising a dict per frame.
    """
    sid = orjson.dumps(stream_sid).replace(b"%", b"%%")
    return (
        b'{"event":"media","sequenceNumber":"%d","streamSid":' + sid + b',"media":{"track":"inbound",'
        b'"chunk":"%d","timestamp":"%d","payload":"%s"}}'
    )


def twilio_dtmf(stream_sid: str, digit: str, sequence_number: int) -> bytes:
    return orjson.dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def twilio_mark(stream_sid: str, name: str, sequence_number: int) -> bytes:
    return orjson.dumps(
        {"event": "mark", "sequenceNumber": str(sequence_number), "streamSid": stream_sid, "mark": {"name": name}}
    )


def twilio_stop(stream_sid: str, call_sid: str, account_sid: str, sequence_number: int) -> bytes:
    return orjson.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    )
