"""Real speech as test audio: a sentence espeak-ng said, as Twilio sends it (tests/data/speech.ulaw).

The file is kept in the repository (tests/data/README.md has the command that made it), so the
tests need neither espeak-ng nor sox.

Twilio's media is 8 kHz mono G.711 mu-law in 20 ms frames of 160 bytes. ``reference_decode`` is
G.711's decoding written out from the standard, so tests check voicebridge's decoding against
the standard rather than against the same library.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FRAME = 160
SPEECH = Path(__file__).resolve().parent / "data" / "speech.ulaw"


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
def speech() -> list[bytes]:
    """A spoken sentence (3.6 s) as Twilio's 160-byte mu-law frames."""
    frames = split_frames(SPEECH.read_bytes())
    assert len(frames) == 179, "tests/data/speech.ulaw is not the file tests/data/README.md describes"
    return frames
