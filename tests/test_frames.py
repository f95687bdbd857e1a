"""voicebridge/fastpath/frames.py: the one frame codec of the fast path and the load tester."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from voicebridge.fastpath import frames


def _header(b0: int, length: int, form: int, mask: bytes) -> bytes:
    """A header with the length in the 7-, 16- or 64-bit form, minimal or not."""
    b1 = frames.MASK_BIT if mask else 0
    if form == 7:
        return bytes((b0, b1 | length)) + mask
    if form == 16:
        return struct.pack("!BBH", b0, b1 | 126, length) + mask
    return struct.pack("!BBQ", b0, b1 | 127, length) + mask


@given(
    b0=st.sampled_from([frames.FIN_TEXT, 0x01, 0x82, 0x88, 0x89, 0xC1, 0x80]),
    length=st.integers(0, 70000),
    form=st.sampled_from([7, 16, 64]),
    masked=st.booleans(),
    cut=st.integers(0, 16),
)
def test_text_length_agrees_with_read_header(b0, length, form, masked, cut):
    """The fast path's reader takes exactly the common frame that the general reader describes, and waits only for its header."""
    if form == 7 and length > 125 or form == 16 and length > 0xFFFF:
        return
    head = _header(b0, length, form, b"\x01\x02\x03\x04" if masked else b"")
    buf = b"xx" + head[:cut]  # at an offset, as in a read holding several frames
    got = frames.text_length(buf, 2, len(buf))
    parsed = frames.read_header(buf, 2)
    minimal = (form == 7 and length <= 125) or (form == 16 and 126 <= length <= 0xFFFF)
    common = b0 == frames.FIN_TEXT and masked and minimal and form != 64
    if parsed is not None:
        assert got == (length if common else frames.OTHER)
        assert parsed[:3] == (b0, length, len(head))
    else:
        # Cut short: OTHER only where the first two bytes already tell; never a length.
        early = len(buf) - 2 >= 2 and (b0 != frames.FIN_TEXT or not masked or form == 64)
        assert got == (frames.OTHER if early else frames.INCOMPLETE)


@given(st.lists(st.tuples(st.sampled_from([0x81, 0x82, 0x01, 0x80, 0x89, 0x88]), st.binary(max_size=300)), max_size=6))
def test_split_frames_returns_what_masked_frame_built(messages):
    stream = b"".join(frames.masked_frame(b0, payload, b"\x0a\x0b\x0c\x0d") for b0, payload in messages)
    for cut in range(0, len(stream) + 1, max(1, len(stream) // 7)):
        got = list(frames.split_frames(stream[:cut]))
        whole = [(b0, payload) for b0, payload, _ in got]
        assert whole == messages[: len(whole)]
        end = got[-1][2] if got else 0
        assert list(frames.split_frames(stream[end:cut])) == [], "what is kept back is less than a frame"


def test_close_payload_and_code():
    assert frames.close_payload(1000) == b"\x03\xe8"
    assert frames.close_code(frames.close_payload(4001, b"bye")) == 4001
    assert frames.close_code(b"") == 1005


def test_text_frame_uses_the_shortest_length():
    assert frames.text_frame(b"a" * 125)[:2] == b"\x81\x7d"
    assert frames.text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert frames.text_frame(b"a" * 70000)[:2] == b"\x81\x7f"
