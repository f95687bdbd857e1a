"""Audio helpers: G.711 mu-law <-> 16-bit PCM, resampling, stereo interleaving. Pure, no I/O.

Twilio speaks 8 kHz mono mu-law. Recordings, speech engines and AI services want linear PCM,
often at another rate. ``audioop`` does the arithmetic in C: it is in the standard library up to
Python 3.12, and the ``audioop-lts`` package provides the same module from 3.13 on (setup.py
installs it there). Samples are little-endian signed 16-bit throughout.
"""

from __future__ import annotations

import sys
import warnings

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        # 3.11 and 3.12 warn that audioop leaves the standard library; audioop-lts takes over on 3.13+.
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover - exercised on 3.13+
    import audioop

RATE = 8000  # Twilio's sample rate
WIDTH = 2  # bytes per PCM16 sample
ULAW_SILENCE = b"\xff"  # mu-law for 0; 0x7f is "negative zero" and decodes to 0 as well


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode mu-law: one byte in, one 16-bit sample out. Exact (G.711's table)."""
    return audioop.ulaw2lin(data, WIDTH)


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Encode 16-bit PCM as mu-law (lossy: 14 bits of range in 8). ``data`` must hold whole samples."""
    _whole_samples(data)
    return audioop.lin2ulaw(data, WIDTH)


def silence_pcm16(samples: int) -> bytes:
    return bytes(WIDTH * samples)


def interleave(left: bytes, right: bytes) -> bytes:
    """Two mono PCM16 streams of the same length as one stereo stream, left first in each frame."""
    if len(left) != len(right):
        raise ValueError(f"channels differ in length: {len(left)} and {len(right)} bytes")
    _whole_samples(left)
    # tostereo puts each sample in one channel and 0 in the other; adding 0 is exact.
    return audioop.add(audioop.tostereo(left, WIDTH, 1, 0), audioop.tostereo(right, WIDTH, 0, 1), WIDTH)


def channel(stereo: bytes, index: int) -> bytes:
    """One channel (0 left, 1 right) of interleaved stereo PCM16."""
    if index not in (0, 1):
        raise ValueError("channel index is 0 or 1")
    if len(stereo) % (2 * WIDTH):
        raise ValueError(f"{len(stereo)} bytes is not whole stereo frames")
    return audioop.tomono(stereo, WIDTH, 1 - index, index)


class Resampler:
    """Streaming rate conversion of mono PCM16 (``audioop.ratecv``): feed chunks, keep the filter state.

    One instance per stream: the state carries the fraction of a sample between chunks, so a stream
    converted in 20 ms pieces matches the stream converted in one piece.
    """

    def __init__(self, from_rate: int, to_rate: int):
        for rate in (from_rate, to_rate):
            if not isinstance(rate, int) or not 1000 <= rate <= 192000:
                raise ValueError(f"sample rate {rate!r} is not an integer between 1000 and 192000")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._state = None

    def convert(self, data: bytes) -> bytes:
        _whole_samples(data)
        if self.from_rate == self.to_rate:
            return bytes(data)
        converted, self._state = audioop.ratecv(data, WIDTH, 1, self.from_rate, self.to_rate, self._state)
        return converted


def resample(data: bytes, from_rate: int, to_rate: int) -> bytes:
    """Convert a whole mono PCM16 buffer from one rate to another."""
    return Resampler(from_rate, to_rate).convert(data)


def _whole_samples(data: bytes) -> None:
    if len(data) % WIDTH:
        raise ValueError(f"{len(data)} bytes is not whole 16-bit samples")
