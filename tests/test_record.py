"""The record handler in a real daemon: real speech in, a WAV out that matches it sample for sample."""

from __future__ import annotations

import json
import signal
import struct
import wave

import pytest_twisted
from twisted.internet import defer, task

from tests.speech import reference_decode, speech  # noqa: F401  (speech is a fixture)
from voicebridge.tools.twiliosim import CallScript, play_call

FRAME = 160
WAV_HEADER = 44


def read_wav(path):
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        data = w.readframes(w.getnframes())
    values = struct.unpack(f"<{len(data) // 2}h", data)
    return list(values[0::2]), list(values[1::2])


def decoded(frames) -> list[int]:
    return [reference_decode(c) for frame in frames for c in frame]


@defer.inlineCallbacks
def part_file_holding(directory, size: int, timeout: float = 15):
    """The call's partial WAV once it holds more than ``size`` bytes (polled: the daemon writes about once a second)."""
    from twisted.internet import reactor

    for _ in range(int(timeout / 0.05)):
        parts = list(directory.glob(".*.wav.part"))
        if len(parts) == 1 and parts[0].stat().st_size > size:
            return parts[0]
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"no partial recording over {size} bytes in {directory}: {list(directory.iterdir())}")


def saved(daemon, call_sid):
    return lambda e: e.get("event_name") == "record.saved" and e.get("callSid") == call_sid


@pytest_twisted.inlineCallbacks
def test_speech_is_recorded_sample_for_sample_with_lost_packets_as_silence(start_daemon, tmp_path, speech):  # noqa: F811
    from twisted.internet import reactor

    daemon = start_daemon("--handler", "record", "--record-dir", str(tmp_path), "--record-handler", "echo")
    lost = {40, 41, 42, 120}
    script = CallScript(
        frames=len(speech),
        frame=lambda i: speech[i],
        lost=frozenset(lost),
        interval=0.005,  # faster than real time: the timeline comes from Twilio's timestamps, not the clock
        dtmf="12#",
        marks=("m1",),
        custom_parameters={"businessId": "b-rec", "campaign": "spring"},
    )
    outcome = yield play_call(reactor, daemon.url("/twilio-media", "ws"), script)
    assert outcome.close_code == 1000
    assert outcome.received == outcome.sent, "the recorded handler (echo) ran as if alone"
    event = yield daemon.wait_for_async(reactor, saved(daemon, script.call_sid), 10)

    left, right = read_wav(event["wav"])
    expected = decoded([b"\xff" * FRAME if i in lost else speech[i] for i in range(len(speech))])
    assert left[: len(expected)] == expected, "the caller's channel is Twilio's audio, sample for sample, gaps silent"
    assert left[len(expected) :] == [0] * FRAME, "the echo of the last frame ends the recording"
    assert right[:FRAME] == [0] * FRAME and right[FRAME:] == expected, "what was sent back, one frame after the caller"

    meta = json.loads(open(event["sidecar"]).read())
    assert meta["callSid"] == script.call_sid and meta["streamSid"] == script.stream_sid
    assert meta["parameters"] == {"businessId": "b-rec", "campaign": "spring"}
    assert (meta["framesIn"], meta["framesOut"]) == (len(speech) - len(lost), len(speech) - len(lost))
    assert (meta["gaps"], meta["gapMs"]) == (2, 80)
    assert meta["digits"] == "12#" and [m["name"] for m in meta["marksPlayed"]] == ["m1"]
    assert meta["endReason"] == "stop" and meta["startedAt"] <= meta["stoppedAt"]
    assert meta["durationMs"] == (len(speech) + 1) * 20
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([meta["wav"], meta["wav"][:-4] + ".json"])


def long_call(speech, **kwargs):  # noqa: F811
    return CallScript(frames=100_000, frame=lambda i: speech[i % len(speech)], send_stop=False, **kwargs)


@pytest_twisted.inlineCallbacks
def test_kill_9_mid_call_leaves_no_file_under_a_final_name(start_daemon, tmp_path, speech):  # noqa: F811
    from twisted.internet import reactor

    daemon = start_daemon("--handler", "record", "--record-dir", str(tmp_path))
    call = play_call(reactor, daemon.url("/twilio-media", "ws"), long_call(speech, interval=0.005))
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "record.started", 10)
    part = yield part_file_holding(tmp_path, WAV_HEADER)  # audio is on disk, past the header
    daemon.signal(signal.SIGKILL)
    outcome = yield call.addTimeout(10, reactor)
    assert outcome.was_clean is False
    assert list(tmp_path.glob("*.wav")) == [] and list(tmp_path.glob("*.json")) == []
    assert part.exists(), "the partial recording stays aside, for salvage"


@pytest_twisted.inlineCallbacks
def test_shutdown_mid_call_still_saves_a_complete_recording(start_daemon, tmp_path, speech):  # noqa: F811
    from twisted.internet import reactor

    # A drain that times out while the call goes on: the call is cut with 1001 and must still be saved.
    daemon = start_daemon("--handler", "record", "--record-dir", str(tmp_path), "--drain-timeout", "0.5")
    script = long_call(speech, interval=0.01)
    call = play_call(reactor, daemon.url("/twilio-media", "ws"), script)
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "record.started", 10)
    yield part_file_holding(tmp_path, WAV_HEADER)  # a second of call is on disk (one flush)
    daemon.signal(signal.SIGTERM)
    outcome = yield call.addTimeout(15, reactor)
    assert outcome.close_code == 1001
    code = yield defer.maybeDeferred(daemon.wait_exit, 15)
    assert code == 0, "a drained daemon exits 0"
    event = daemon.wait_for(saved(daemon, script.call_sid), 5)
    meta = json.loads(open(event["sidecar"]).read())
    assert meta["endReason"] == "shutdown" and meta["framesIn"] > 20
    left, right = read_wav(event["wav"])
    assert left == decoded(outcome.sent[: meta["framesIn"]]), "every frame the daemon took is in the file"
    assert right == [0] * len(left)
    assert list(tmp_path.glob(".*.part")) == []
