"""The ``openai-realtime`` handler's options and the session it asks for: pure functions, checked at start-up.

Everything here runs without a reactor: ``check_options`` (start-up), ``render_instructions`` (per
call, from the call's ``<Parameter>``s) and ``session_update`` (the GA ``session.update`` event).
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voicebridge.handlers.api import Secret, load_trust_root, read_secret_file

DEFAULT_MESSAGE = "Sorry, this call cannot be connected right now. Please try again later."  # the relay's
FALLBACKS = ("hangup", "say")  # the relay's


def check_url(url) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError("url: expected the Realtime API's wss:// URL")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"url: {url!r} is not a ws:// or wss:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("url: must not carry credentials (user:password@)")
    if parts.fragment:
        raise ValueError(f"url: {url!r} has a fragment")
    try:
        parts.port  # noqa: B018  (raises for a port out of range)
    except ValueError as e:
        raise ValueError(f"url: {e}") from None
    return url


DEFAULT_URL = "wss://api.openai.com/v1/realtime"
KEY_VARIABLE = "OPENAI_API_KEY"
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
SERVER_VAD_KEYS = {
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "create_response",
    "interrupt_response",
    "idle_timeout_ms",
}
SEMANTIC_VAD_KEYS = {"eagerness", "create_response", "interrupt_response"}
EAGERNESS = ("low", "medium", "high", "auto")
MAX_INSTRUCTIONS = 100_000
MAX_TRANSFERS = 100

# The defaults README's options table gives (tests/test_docs.py compares them); url: DEFAULT_URL.
DEFAULTS = {
    "model": "gpt-realtime",
    "voice": "alloy",
    "turn_detection": "server_vad",
    "barge_in_min_ms": 0,
    "transcription_model": "gpt-4o-mini-transcribe",
    "connect_timeout": 5.0,
    "handshake_timeout": 5.0,
    "stall_timeout": 15.0,
    "max_pending": 600,
    "fallback": "hangup",
}

OPTIONS = {
    "url", "model", "voice", "instructions", "instructions_file", "greeting", "turn_detection", "barge_in_min_ms",
    "transcripts", "transcription_model", "api_key_file", "transfers", "fallback", "message", "connect_timeout",
    "handshake_timeout", "stall_timeout", "ca_file", "max_pending", "api_key_header",
}  # fmt: skip
KEY_HEADERS = ("authorization", "api-key")  # OpenAI's "Authorization: Bearer KEY"; Azure OpenAI's "api-key: KEY"

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, friendly voice assistant on a phone call. Keep answers short and spoken. "
    "When the caller is done, say a short goodbye and call end_call."
)

# E.164, or a SIP URI Twilio can <Dial><Sip>.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SIP = re.compile(r"sips?:[^\s<>\"']{3,255}", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def _seconds(options: dict, key: str) -> float:
    value = options.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        raise ValueError(f"{key}: expected seconds between 0 and 300, got {value!r}")
    return float(value)


def _text(options: dict, key: str, limit: int, default=None):
    value = options.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueError(f"{key}: expected text of 1 to {limit} characters")
    return value.strip()


def provider_url(url: str, model: str) -> str:
    """The URL to connect to: ``model`` is added as ``?model=`` unless the URL already names one (Azure's do)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(name == "model" for name, _ in query):
        query.append(("model", model))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def read_api_key(path: str | None, environ=os.environ) -> Secret:
    """The API key: from the file ``path`` when given, else ``OPENAI_API_KEY``; never from a flag or the config."""
    if path:
        key = read_secret_file(path, "api_key_file:")
    else:
        key = environ.get(KEY_VARIABLE, "").strip()
        if not key:
            raise ValueError(f"no API key: set {KEY_VARIABLE}, or api_key_file (--realtime-key-file FILE)")
    if any(c.isspace() or not c.isprintable() for c in key) or len(key) > 4096:
        raise ValueError("the API key holds spaces or control characters: is it the right file?")
    return Secret(key)


def check_turn_detection(value) -> dict:
    """``"server_vad"``, ``"semantic_vad"``, or a table with ``type`` and that type's settings."""
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise ValueError(f"turn_detection: expected {' or '.join(TURN_DETECTION_TYPES)}, or a table with a type")
    kind = value.get("type")
    if kind not in TURN_DETECTION_TYPES:
        raise ValueError(f"turn_detection.type: {kind!r} is not one of {', '.join(TURN_DETECTION_TYPES)}")
    allowed = SERVER_VAD_KEYS if kind == "server_vad" else SEMANTIC_VAD_KEYS
    unknown = set(value) - allowed - {"type"}
    if unknown:
        raise ValueError(
            f"turn_detection: unknown for {kind}: {', '.join(sorted(unknown))} (known: {', '.join(sorted(allowed))})"
        )
    for key in ("create_response", "interrupt_response"):
        if key in value and not isinstance(value[key], bool):
            raise ValueError(f"turn_detection.{key}: expected true or false")
    if "threshold" in value:
        t = value["threshold"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 1:
            raise ValueError(f"turn_detection.threshold: expected a number from 0 to 1, got {t!r}")
    for key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
        if key in value:
            ms = value[key]
            if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= 60_000:
                raise ValueError(f"turn_detection.{key}: expected whole milliseconds from 0 to 60000, got {ms!r}")
    if "eagerness" in value and value["eagerness"] not in EAGERNESS:
        raise ValueError(f"turn_detection.eagerness: {value['eagerness']!r} is not one of {', '.join(EAGERNESS)}")
    return dict(value)


def check_transfers(value) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError('transfers: expected a table of names to numbers or SIP URIs, e.g. { sales = "+15550100002" }')
    if len(value) > MAX_TRANSFERS:
        raise ValueError(f"transfers: at most {MAX_TRANSFERS} destinations")
    checked = {}
    for name, destination in value.items():
        if not _NAME.fullmatch(str(name)):
            raise ValueError(f"transfers.{name}: a name is 1 to 64 letters, digits, '-' or '_'")
        if not isinstance(destination, str) or not (_E164.fullmatch(destination) or _SIP.fullmatch(destination)):
            raise ValueError(f"transfers.{name}: {destination!r} is not an E.164 number (+15550100002) or a sip: URI")
        checked[str(name)] = destination
    return checked


def check_options(options: dict) -> dict:
    unknown = set(options) - OPTIONS
    if "api_key" in unknown:
        raise ValueError("api_key: the key is never an option (it would sit in a file or ps): set OPENAI_API_KEY or api_key_file")
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(OPTIONS))})")
    url = options.get("url", DEFAULT_URL)
    check_url(url)
    model = _text(options, "model", 200, DEFAULTS["model"])
    voice = _text(options, "voice", 100, DEFAULTS["voice"])
    instructions = _text(options, "instructions", MAX_INSTRUCTIONS)
    instructions_file = options.get("instructions_file")
    if instructions is not None and instructions_file is not None:
        raise ValueError("instructions and instructions_file: give one of them")
    if instructions_file is not None:
        if not isinstance(instructions_file, str):
            raise ValueError("instructions_file: expected the path of a text file")
        try:
            with open(instructions_file, encoding="utf-8") as f:
                instructions = f.read(MAX_INSTRUCTIONS + 1).strip()
        except OSError as e:
            raise ValueError(f"instructions_file: {instructions_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"instructions_file: {instructions_file} is not UTF-8 text") from None
        if not instructions or len(instructions) > MAX_INSTRUCTIONS:
            raise ValueError(f"instructions_file: {instructions_file} must hold 1 to {MAX_INSTRUCTIONS} characters")
    fallback = options.get("fallback", "say" if options.get("message") else "hangup")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback: {fallback!r} is not one of {', '.join(FALLBACKS)}")
    min_ms = options.get("barge_in_min_ms", DEFAULTS["barge_in_min_ms"])
    if isinstance(min_ms, bool) or not isinstance(min_ms, int) or not 0 <= min_ms <= 5000:
        raise ValueError(f"barge_in_min_ms: expected whole milliseconds from 0 to 5000, got {min_ms!r}")
    transcripts = options.get("transcripts", False)
    if isinstance(transcripts, str) and transcripts in ("on", "off", "true", "false"):
        transcripts = transcripts in ("on", "true")
    if not isinstance(transcripts, bool):
        raise ValueError(f"transcripts: expected true or false, got {transcripts!r}")
    max_pending = options.get("max_pending", DEFAULTS["max_pending"])
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or not 1 <= max_pending <= 100_000:
        raise ValueError(f"max_pending: expected a number of frames from 1 to 100000, got {max_pending!r}")
    key_header = options.get("api_key_header", "authorization")
    if key_header not in KEY_HEADERS:
        raise ValueError(f"api_key_header: {key_header!r} is not one of {', '.join(KEY_HEADERS)}")
    key_file = options.get("api_key_file")
    if key_file is not None and not isinstance(key_file, str):
        raise ValueError("api_key_file: expected the path of a file holding the key")
    checked = {
        "url": url,
        "model": model,
        "voice": voice,
        "instructions": instructions or DEFAULT_INSTRUCTIONS,
        "greeting": _text(options, "greeting", 2000),
        "turn_detection": check_turn_detection(options.get("turn_detection", DEFAULTS["turn_detection"])),
        "barge_in_min_ms": min_ms,
        "transcripts": transcripts,
        "transcription_model": _text(options, "transcription_model", 200, DEFAULTS["transcription_model"]),
        "transfers": check_transfers(options.get("transfers")),
        "fallback": fallback,
        "message": _text(options, "message", 1000, DEFAULT_MESSAGE),
        "connect_timeout": _seconds(options, "connect_timeout"),
        "handshake_timeout": _seconds(options, "handshake_timeout"),
        "stall_timeout": _seconds(options, "stall_timeout"),
        "max_pending": max_pending,
        "api_key": read_api_key(key_file),
        "api_key_header": key_header,
    }
    if key_file is not None:
        checked["api_key_file"] = key_file
    ca_file = options.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str):
            raise ValueError("ca_file: expected the path of a PEM file")
        checked["ca_file"] = ca_file
        checked["trust_root"] = load_trust_root(ca_file)
    return checked


def auth_headers(options: dict) -> dict[str, str]:
    """The handshake's credentials: ``Authorization: Bearer KEY`` (OpenAI), or ``api-key: KEY`` (Azure OpenAI's keys)."""
    if options["api_key_header"] == "api-key":
        return {"api-key": options["api_key"]}
    return {"Authorization": f"Bearer {options['api_key']}"}


def render_instructions(template: str, parameters: dict[str, str]) -> str:
    """``{name}`` replaced by the call's parameter ``name`` (businessId, plan, to, from, callSid, ...).

    A placeholder the call does not carry stays as written, so braces the instructions use for
    something else are left alone.
    """
    return _PLACEHOLDER.sub(lambda m: parameters.get(m.group(1), m.group(0)), template)


def tools(transfers: dict[str, str]) -> list[dict]:
    """The functions offered to the agent: ``end_call`` always, ``transfer_call`` when there is somewhere to transfer to."""
    offered = [
        {
            "type": "function",
            "name": "end_call",
            "description": "End the phone call. Say a short goodbye first; the call ends once it has played.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        }
    ]
    if transfers:
        offered.append(
            {
                "type": "function",
                "name": "transfer_call",
                "description": "Transfer the caller to a person. Tell the caller first; the transfer follows.",
                "parameters": {
                    "type": "object",
                    "properties": {"destination": {"type": "string", "enum": sorted(transfers)}},
                    "required": ["destination"],
                    "additionalProperties": False,
                },
            }
        )
    return offered


def session_update(options: dict, instructions: str) -> dict:
    """The GA ``session.update``: mu-law both ways (Twilio's audio passes untouched), voice, turn detection, tools."""
    turn_detection = dict(options["turn_detection"])
    if options["barge_in_min_ms"] and "interrupt_response" not in turn_detection:
        # The bridge decides when speech is a barge-in (and cancels then): the server must not cancel on any sound.
        turn_detection["interrupt_response"] = False
    audio_input = {"format": {"type": "audio/pcmu"}, "turn_detection": turn_detection}
    if options["transcripts"]:
        audio_input["transcription"] = {"model": options["transcription_model"]}
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": options["model"],
            "output_modalities": ["audio"],
            "instructions": instructions,
            "audio": {"input": audio_input, "output": {"format": {"type": "audio/pcmu"}, "voice": options["voice"]}},
            "tools": tools(options["transfers"]),
            "tool_choice": "auto",
        },
    }
