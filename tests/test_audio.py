"""The audio helpers against G.711 itself, and the resampler by what it does to a tone."""

import math
import struct

import pytest

from tests.speech import reference_decode
from voicebridge.audio import codec as audio


def samples(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def pcm(values) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def test_mu_law_decoding_is_g711_for_every_code():
    codes = bytes(range(256))
    assert samples(audio.ulaw_to_pcm16(codes)) == [reference_decode(c) for c in codes]


def test_mu_law_round_trip_is_exact_except_negative_zero():
    codes = bytes(range(256))
    back = audio.pcm16_to_ulaw(audio.ulaw_to_pcm16(codes))
    assert [i for i in range(256) if back[i] != codes[i]] == [0x7F], "0x7f (-0) encodes back as 0xff (+0)"
    assert audio.ulaw_to_pcm16(audio.ULAW_SILENCE) == b"\x00\x00"


def test_encoding_keeps_speech_close():
    tone = pcm([int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(800)])
    decoded = samples(audio.ulaw_to_pcm16(audio.pcm16_to_ulaw(tone)))
    worst = max(abs(a - b) / max(abs(a), 64) for a, b in zip(samples(tone), decoded, strict=True))
    assert worst < 0.07, "mu-law keeps each sample within a few percent"


def test_interleave_and_channel_are_inverse():
    left, right = pcm([1, -2, 3, 32767]), pcm([-32768, 5, 0, -7])
    stereo = audio.interleave(left, right)
    assert samples(stereo) == [1, -32768, -2, 5, 3, 0, 32767, -7]
    assert audio.channel(stereo, 0) == left and audio.channel(stereo, 1) == right
    with pytest.raises(ValueError, match="differ in length"):
        audio.interleave(left, right[:2])


def zero_crossings(values) -> int:
    return sum(1 for a, b in zip(values, values[1:], strict=False) if (a < 0) != (b < 0))


@pytest.mark.parametrize("to_rate", [16000, 24000, 44100])
def test_resampling_keeps_pitch_and_duration(to_rate):
    tone = pcm([int(10000 * math.sin(2 * math.pi * 300 * i / 8000)) for i in range(8000)])  # 1 s of 300 Hz
    up = audio.resample(tone, 8000, to_rate)
    assert abs(len(up) // 2 - to_rate) <= to_rate // 4000, "ratecv holds back at most a few samples"
    assert abs(zero_crossings(samples(up)) - 600) <= 2
    down = audio.resample(up, to_rate, 8000)
    assert abs(len(down) // 2 - 8000) <= 2


def test_streaming_resampler_matches_one_piece():
    tone = pcm([int(10000 * math.sin(2 * math.pi * 300 * i / 8000)) for i in range(1600)])
    whole = audio.resample(tone, 8000, 24000)
    resampler = audio.Resampler(8000, 24000)
    pieces = b"".join(resampler.convert(tone[i : i + 320]) for i in range(0, len(tone), 320))
    assert pieces == whole


@pytest.mark.parametrize("call", [lambda: audio.pcm16_to_ulaw(b"\x00"), lambda: audio.Resampler(8000, 7)])
def test_bad_input_is_refused_precisely(call):
    with pytest.raises(ValueError):
        call()
