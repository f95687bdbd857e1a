"""Fuzz target: Twilio's Media Streams messages into the parser, its fast path and a Call.

What must hold for any bytes a peer sends as one text frame (issue 16):

- ``messages.parse`` returns a message or raises ``MessageError`` with a known reason, nothing
  else (no RecursionError, no TypeError); a message holds only flat, bounded values;
- ``messages.media_fields`` accepts only what ``parse`` accepts, with the same values;
- a started ``Call`` given the frame raises nothing, and every log line it writes can be written
  (twisted's JSON) and stays under 16 KB.

With atheris (coverage-guided; ``pip install atheris``)::

    mkdir -p /tmp/corpus && cp fuzz/corpus/* /tmp/corpus/
    python fuzz/fuzz_messages.py -max_total_time=300 -max_len=8192 -dict=fuzz/messages.dict /tmp/corpus

Without it, the same checks over random mutations of Twilio's own messages (JSON-aware: a field
replaced by any value, nested up to 1,100 deep, multiplied; and raw byte flips)::

    python fuzz/fuzz_messages.py --seconds 300 [--seed N]
    python fuzz/fuzz_messages.py --runs 20000 --seed 1

A failure prints the input (and atheris writes it to ``crash-*``); exit status 1.
tests/test_fuzz.py runs both for a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    import atheris
except ImportError:  # the stdlib driver below
    atheris = None

from twisted.internet import task  # noqa: E402
from twisted.logger import eventAsJSON, globalLogPublisher  # noqa: E402


def _import():
    from voicebridge.call.registry import CallRegistry
    from voicebridge.config.file import Config, Settings
    from voicebridge.twilio import messages

    return CallRegistry, Config, Settings, messages


if atheris is not None and "--seconds" not in sys.argv and "--runs" not in sys.argv:
    with atheris.instrument_imports(include=["voicebridge"]):  # coverage of the parser and the Call
        CallRegistry, Config, Settings, messages = _import()
else:
    CallRegistry, Config, Settings, messages = _import()

REASONS = {
    "invalid-json",
    "not-object",
    "missing-event",
    "missing-field",
    "bad-field",
    "bad-base64",
    "too-deep",
    "too-many-parameters",
    "parameter-too-long",
}
MAX_LINE = 16384
SID, CALL, ACC = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32


class Link:
    def __init__(self):
        self.call = None

    def send_text(self, data: bytes) -> None:
        pass

    def close(self, code, reason) -> None:
        if self.call is not None:
            call, self.call = self.call, None
            call.connection_lost(code, reason)


_REGISTRY = CallRegistry(Settings(listen=[], config=Config()), task.Clock())
_LINES: list = []
globalLogPublisher.addObserver(_LINES.append)


def _flat(value) -> bool:
    scalar = (str, int, float, bool, bytes, type(None))
    if isinstance(value, dict):
        return all(isinstance(k, str) and isinstance(v, scalar) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, scalar) for v in value)
    return isinstance(value, scalar)


def check(data: bytes) -> None:
    """The properties above, for one frame; an AssertionError (or any other exception) is a finding."""
    try:
        message = messages.parse(data)
    except messages.MessageError as e:
        assert e.reason in REASONS, e.reason
        assert len(str(e)) < 400, "a short detail"
        message = None
    if message is not None:
        for name in message.__dataclass_fields__:
            assert name == "raw" or _flat(getattr(message, name)), name
        if isinstance(message, messages.Start):
            assert len(message.custom_parameters) <= messages.MAX_PARAMETERS
    fast = messages.media_fields(data)
    if fast is not None:
        assert isinstance(message, messages.Media), "media_fields took what parse refused"
        assert fast == (message.stream_sid, message.payload, message.timestamp)
    link = Link()
    call = _REGISTRY.new_call(link, "127.0.0.1", {})
    link.call = call
    call.opened()
    del _LINES[:]
    call.text_received(messages.twilio_start(SID, CALL, ACC, {"businessId": "b"}))
    call.text_received(data)
    call.text_received(data)
    link.close(1000, "done")
    for event in _LINES:
        assert "log_failure" not in event, event.get("log_failure")
        assert len(eventAsJSON(event)) < MAX_LINE, event.get("event_name")
    del _LINES[:]


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    check(data)


# The stdlib driver: mutations of Twilio's own messages.

SEEDS = [
    messages.twilio_connected(),
    messages.twilio_start(SID, CALL, ACC, {"businessId": "business-1", "to": "+15550100001"}),
    messages.twilio_media(SID, bytes(range(160)), 1, 0, 2),
    messages.twilio_dtmf(SID, "5", 3),
    messages.twilio_mark(SID, "greeting", 4),
    messages.twilio_stop(SID, CALL, ACC, 5),
    b'{"event":"transcription","streamSid":"%s","text":"hi"}' % SID.encode(),
]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12)
    if kind == 0:
        level = rng.choice([2, 8, 9, 100, 990, 1021, 1100])
        inner = rng.choice([[], {}, "x", 1])
        for _ in range(level):
            inner = [inner] if rng.random() < 0.5 else {"a": inner}
        return inner
    if kind == 1 and depth < 3:
        return {
            rng.choice(["a", "x" * rng.randrange(600), "to", "From"]): _value(rng, depth + 1) for _ in range(rng.randrange(6))
        }
    if kind == 2 and depth < 3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    if kind == 3:
        return {f"p{i}": "v" * rng.randrange(3) for i in range(rng.choice([31, 32, 33, 500, 4000]))}
    if kind == 4:
        return rng.choice([None, True, False, 0, -1, 2**63 - 1, 1.5, 10**18])
    if kind == 5:
        return (
            "".join(chr(rng.randrange(0x30000)) for _ in range(rng.randrange(8)))
            .encode("utf-8", "replace")
            .decode("utf-8", "replace")
        )
    if kind == 6:
        return rng.choice(["", "MZ1&", "====", "inbound", "1", "12", "#", "AAAA", "+15557654321", "x" * 500, "a\nb"])
    return rng.choice(["MZ1", SID, "5", "-1", "AAAA", "inbound_track"])


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))


def mutate(rng: random.Random, seed: bytes) -> bytes:
    if rng.random() < 0.15:  # raw bytes
        data = bytearray(seed)
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(data))
            choice = rng.randrange(3)
            if choice == 0:
                data[at] = rng.randrange(256)
            elif choice == 1:
                del data[at]
            else:
                data[at:at] = rng.choice([b"[", b"{", b'"', b"\\", b"]]]", b'{"a":'])
        return bytes(data)
    obj = json.loads(seed)
    for _ in range(rng.randrange(1, 4)):
        path = rng.choice(list(_paths(obj)))
        if not path:
            obj[rng.choice(["x", "event", "streamSid", "sequenceNumber"])] = _value(rng)
            continue
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.2:
            parent[rng.choice(["new", "x", path[-1] + "2"])] = _value(rng)
        else:
            parent[path[-1]] = _value(rng)
    try:
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError):
        return seed


def run(runs: int | None, seconds: float | None, seed: int) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds if seconds else None
    done = 0
    while (runs is None or done < runs) and (deadline is None or time.monotonic() < deadline):
        data = mutate(rng, rng.choice(SEEDS))
        try:
            check(data)
        except Exception as e:
            print(f"FAILED after {done} inputs (seed {seed}): {type(e).__name__}: {e}\ninput: {data[:2000]!r}")
            return 1
        done += 1
    print(f"ok: {done} inputs (seed {seed})")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--runs" in argv or "--seconds" in argv or atheris is None:
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--runs", type=int)
        parser.add_argument("--seconds", type=float)
        parser.add_argument("--seed", type=int, default=0)
        args, _ = parser.parse_known_args(argv)
        if args.runs is None and args.seconds is None:
            args.seconds = 60
        return run(args.runs, args.seconds, args.seed)
    atheris.Setup([sys.argv[0], *argv], TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
