"""The recording's timeline, format and crash safety, without a daemon: frames in, files out."""

import json
import os
import struct
import wave

import pytest

from tests.speech import reference_decode
from voicebridge.audio import recording
from voicebridge.audio.recording import Recording, safe_name

FRAME = 160


def frame(i: int) -> bytes:
    return bytes((i * 13 + k) % 256 for k in range(FRAME))


def decoded(ulaw: bytes) -> list[int]:
    return [reference_decode(c) for c in ulaw]


def read(path):
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) == (2, 2, 8000, "NONE")
        data = w.readframes(w.getnframes())
    values = struct.unpack(f"<{len(data) // 2}h", data)
    return list(values[0::2]), list(values[1::2])


def finish(rec, **extra):
    wav, sidecar = rec.finish({"callSid": "CA1", **extra})
    return read(wav), json.loads(open(sidecar).read())


def test_caller_frames_land_at_their_timestamps_with_gaps_filled(tmp_path):
    rec = Recording(str(tmp_path), "call")
    for i in (0, 1, 2, 5, 6):  # 3 and 4 were lost: Twilio skips their timestamps
        rec.caller(frame(i), i * 20)
    (left, right), meta = finish(rec)
    expected = decoded(frame(0) + frame(1) + frame(2)) + [0] * 2 * FRAME + decoded(frame(5) + frame(6))
    assert left == expected
    assert right == [0] * len(expected)
    assert (meta["gaps"], meta["gapMs"], meta["framesIn"], meta["durationMs"]) == (1, 40, 5, 140)
    assert meta["format"] == {"encoding": "pcm_s16le", "sampleRate": 8000, "channels": 2, "channelNames": ["caller", "sent"]}


def test_sent_audio_plays_from_now_and_queues_in_order(tmp_path):
    rec = Recording(str(tmp_path), "call")
    greeting = bytes(range(1, 201)) * 4  # 800 samples sent at once before any caller audio: queued
    rec.sent(greeting)
    rec.mark_sent("greeting-end")
    for i in range(3):
        rec.caller(frame(i), i * 20)
        rec.sent(frame(i))  # an echo: plays after the greeting that is still queued
    (left, right), meta = finish(rec)
    assert right[:800] == decoded(greeting)
    assert right[800:1280] == decoded(frame(0) + frame(1) + frame(2))
    assert left[:480] == decoded(frame(0) + frame(1) + frame(2)) and left[480:] == [0] * 800
    assert meta["marksSent"] == [{"name": "greeting-end", "atMs": 100}]
    assert meta["durationMs"] == 160


def test_echo_sits_one_frame_after_the_caller(tmp_path):
    rec = Recording(str(tmp_path), "call")
    for i in range(4):
        rec.caller(frame(i), i * 20)
        rec.sent(frame(i))
    (left, right), _ = finish(rec)
    assert right[FRAME:] == left[: 4 * FRAME] and right[:FRAME] == [0] * FRAME


def test_clear_drops_what_was_queued_beyond_now(tmp_path):
    rec = Recording(str(tmp_path), "call")
    rec.caller(frame(0), 0)
    rec.sent(b"\x10" * 8000)  # a second of speech, queued from 20 ms on
    rec.caller(frame(1), 20)
    rec.caller(frame(2), 40)
    rec.cleared()  # barge-in at 60 ms: Twilio drops the rest
    rec.caller(frame(3), 60)
    (left, right), meta = finish(rec)
    assert len(left) == 4 * FRAME
    assert right[FRAME : 3 * FRAME] == decoded(b"\x10" * 320) and right[3 * FRAME :] == [0] * FRAME
    assert (meta["clears"], meta["clearedMs"]) == (1, 1000 - 40)


def test_bogus_timestamps_cannot_fill_the_disk_or_overwrite(tmp_path):
    rec = Recording(str(tmp_path), "call")
    rec.caller(frame(0), 0)
    rec.caller(frame(1), 10**12)  # absurd jump: the gap is cut to MAX_GAP_MS
    rec.caller(frame(2), 10**12 + 20)  # later frames follow on, not another gap
    rec.caller(frame(3), 5)  # backwards: placed after, nothing overwritten
    (left, _), meta = finish(rec)
    gap = recording.MAX_GAP_MS * 8
    assert len(left) == 4 * FRAME + gap
    assert left[FRAME + gap :] == decoded(frame(1) + frame(2) + frame(3))
    assert (meta["gaps"], meta["gapsShortened"], meta["timestampsBackwards"]) == (1, 1, 1)


def test_audio_sent_too_far_ahead_is_dropped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(recording, "MAX_AHEAD_MS", 100)
    rec = Recording(str(tmp_path), "call")
    rec.sent(b"\x20" * 640)  # 80 ms: kept
    rec.sent(b"\x20" * 640)  # would reach 160 ms ahead: dropped
    (_, right), meta = finish(rec)
    assert len(right) == 640 and meta["droppedOutMs"] == 80


def test_written_aside_until_complete_and_streamed_not_held(tmp_path):
    rec = Recording(str(tmp_path), "CA1-MZ1")
    final, part = tmp_path / "CA1-MZ1.wav", tmp_path / ".CA1-MZ1.wav.part"
    for i in range(150):  # 3 s
        rec.caller(frame(i), i * 20)
    assert part.exists() and not final.exists() and not (tmp_path / "CA1-MZ1.json").exists()
    assert part.stat().st_size >= 44 + 2 * 8000 * 4, "whole seconds go to disk as the call goes"
    with open(part, "rb") as f:
        header = f.read(44)
    riff, data = struct.unpack_from("<I", header, 4)[0], struct.unpack_from("<I", header, 40)[0]
    assert riff >= 0xFFFFFF00 and data >= 0xFFFFFF00, "a torn file says 'read to the end', not a wrong length"
    rec.dtmf_received("4")
    rec.mark_played("m")
    (left, _), meta = finish(rec, endReason="stop")
    assert not part.exists() and final.exists() and len(left) == 150 * FRAME
    assert (meta["digits"], meta["dtmf"], meta["marksPlayed"]) == (
        "4",
        [{"digit": "4", "atMs": 3000}],
        [{"name": "m", "atMs": 3000}],
    )
    assert meta["callSid"] == "CA1" and meta["wav"] == "CA1-MZ1.wav" and meta["endReason"] == "stop"
    assert sorted(os.listdir(tmp_path)) == ["CA1-MZ1.json", "CA1-MZ1.wav"]
    for name in os.listdir(tmp_path):
        assert (tmp_path / name).stat().st_mode & 0o007 == 0, "recordings are personal data: not world-readable"


def test_abandon_leaves_nothing(tmp_path):
    rec = Recording(str(tmp_path), "call")
    rec.caller(frame(0), 0)
    rec.abandon()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "parts, name",
    [
        (("CA123", "MZ456"), "CA123-MZ456"),
        (("../../etc/passwd", None), "etcpasswd"),
        (("", "/"), "call"),
        (("a" * 99,), "a" * 64),
    ],
)
def test_names_from_the_network_are_never_paths(parts, name):
    assert safe_name(*parts) == name
