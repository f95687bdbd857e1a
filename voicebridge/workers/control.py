"""The messages between a supervisor and its workers (``--workers``): one JSON object per line.

Pure: ``encode``, ``LineDecoder`` and ``problem`` do no I/O and import no Twisted, so both ends (a
pipe pair each way, set up by ``spawnProcess``) and the tests share them; ``peers.deliver`` logs
what they find wrong. Messages are rare (per
call, per scrape, per signal), never per frame.

Worker to supervisor: ``ready``, ``census`` (its started and handshaking calls, per tenant),
``reserve`` and ``claim`` (a webhook's slot for a CallSid, taken by that call's ``start``),
``metrics-request`` and ``metrics`` (a scrape gathering every worker's families), ``drained``.
Supervisor to worker: ``peers`` (the other workers' census), ``reserve`` and ``claim`` relayed,
``metrics-request`` and ``metrics``, ``drain``, ``cut``, ``exit`` and ``reload``.
"""

from __future__ import annotations

import orjson

# A scrape's families from a worker with many tenants fit easily; anything longer is a broken peer.
MAX_LINE = 16 * 1024 * 1024


def encode(message: dict) -> bytes:
    return orjson.dumps(message) + b"\n"


def _count(value) -> bool:
    return type(value) is int and value >= 0


def _tenants(value) -> bool:
    return type(value) is dict and all(type(k) is str and _count(v) for k, v in value.items())


def _sid(value) -> bool:
    return type(value) is str and 0 < len(value) <= 200


def _seconds(value) -> bool:
    return type(value) in (int, float) and 0 <= value <= 3600


# op -> field -> check. Every message is checked before either end acts on it, so a message
# that is not what the other end sends is dropped and reported, never half acted on.
# A worker's calls (``census``), or the other workers' summed (``peers``).
CENSUS = {"started": _count, "handshaking": _count, "tenants": _tenants}
NO_CENSUS = {"started": 0, "handshaking": 0, "tenants": {}}

SCHEMA = {
    "ready": {"addresses": lambda v: type(v) is list and all(type(a) is str for a in v)},
    "census": CENSUS,
    "peers": CENSUS,
    "reserve": {"sid": _sid, "tenant": lambda v: v is None or type(v) is str, "seconds": _seconds},
    "claim": {"sid": _sid},
    "metrics-request": {"id": lambda v: type(v) is int},
    "metrics": {"id": lambda v: type(v) is int, "families": lambda v: type(v) is list},
    "drained": {},
    "drain": {},
    "cut": {},
    "exit": {},
    "reload": {},
}


def problem(message) -> str | None:
    """Why ``message`` is not a control message, or None."""
    if type(message) is not dict or type(message.get("op")) is not str:
        return "not a control message (an object with an 'op')"
    fields = SCHEMA.get(message["op"])
    if fields is None:
        return f"unknown op {message['op'][:40]!r}"
    for name, ok in fields.items():
        if name not in message or not ok(message[name]):
            return f"{message['op']}: bad or missing {name!r}"
    return None


class Lines:
    """Bytes as they arrive -> whole lines (without the newline). A line past ``max_line`` is dropped."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._buffer = bytearray()
        self.dropped = 0  # lines dropped for their length

    def feed(self, data: bytes) -> list[bytes]:
        end = data.rfind(b"\n")
        if end < 0:
            self._buffer += data
            if len(self._buffer) > self.max_line:
                self._buffer.clear()
                self.dropped += 1
            return []
        whole = bytes(self._buffer) + data[:end]
        self._buffer = bytearray(data[end + 1 :])
        return whole.split(b"\n")

    def rest(self) -> bytes:
        """What arrived after the last newline (at the end of the stream: an unterminated last line)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest


class LineDecoder:
    """Bytes as they arrive -> (whole messages, what was wrong with the lines that were not)."""

    def __init__(self, max_line: int = MAX_LINE):
        self.lines = Lines(max_line)

    def feed(self, data: bytes) -> tuple[list[dict], list[str]]:
        messages, problems = [], []
        dropped = self.lines.dropped
        lines = self.lines.feed(data)
        if self.lines.dropped > dropped:
            problems.append(f"a line longer than {self.lines.max_line} bytes, dropped")
        for line in lines:
            if not line.strip():
                continue
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                problems.append(f"not JSON ({e})")
                continue
            wrong = problem(message)
            if wrong is None:
                messages.append(message)
            else:
                problems.append(wrong)
        return messages, problems
