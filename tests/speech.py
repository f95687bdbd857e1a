"""Real speech as test audio: espeak-ng says a sentence, sox turns it into what Twilio sends.

Twilio's media is 8 kHz mono G.711 mu-law in 20 ms frames of 160 bytes. ``reference_decode`` is
G.711's decoding written out from the standard, so tests check voicebridge's decoding against
the standard rather than against the same library.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FRAME = 160
SENTENCE = "Thank you for calling. Please leave your message after the tone, and we will call you back tomorrow."


def make_speech(directory: Path, text: str = SENTENCE) -> bytes:
    """The sentence as raw 8 kHz mu-law (sox resamples espeak-ng's 22 kHz PCM and encodes it)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; .ci/run installs it (apt-get install espeak-ng sox)")
    wav, raw = directory / "speech.wav", directory / "speech.ulaw"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(wav), "-r", "8000", "-c", "1", "-e", "mu-law", "-b", "8", "-t", "raw", str(raw)],
        check=True,
        capture_output=True,
    )
    return raw.read_bytes()


def split_frames(audio: bytes, size: int = FRAME) -> list[bytes]:
    """20 ms frames; the last is padded with mu-law silence, as a real stream never sends a short frame."""
    frames = [audio[i : i + size] for i in range(0, len(audio), size)]
    if frames and len(frames[-1]) < size:
        frames[-1] += b"\xff" * (size - len(frames[-1]))
    return frames


def reference_decode(code: int) -> int:
    """ITU-T G.711 mu-law to linear (the 16-bit scaling every telephony tool uses)."""
    u = ~code & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return -(magnitude - 0x84) if u & 0x80 else magnitude - 0x84


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> list[bytes]:
    """A spoken sentence (about 5 s) as Twilio's 160-byte mu-law frames."""
    frames = split_frames(make_speech(tmp_path_factory.mktemp("speech")))
    assert len(frames) > 150, "espeak-ng produced less speech than expected"
    return frames
