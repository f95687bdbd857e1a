"""RFC 6455 framing for the frame that carries nearly every byte of a call: one unfragmented text frame.

Pure functions, no I/O. The daemon's fast path (``voicebridge.fastpath.wsfast``) and the load tester's
lean client (``voicebridge.tools.loadtest``) share them; everything rarer (control frames,
fragments, close handshakes, extensions) is Autobahn's business on the server.
"""

from __future__ import annotations

import base64
import hashlib
import struct

FIN = 0x80  # the first byte's FIN bit: the last frame of a message
OPCODE = 0x0F  # the first byte's opcode bits
FIN_TEXT = 0x81  # FIN=1, RSV=0, opcode 1 (text)
MASK_BIT = 0x80
MAX_SHORT = 125  # the longest payload whose length fits the second header byte
MAX_16BIT = 0xFFFF

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def accept_key(key: str | bytes) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    if isinstance(key, str):
        key = key.encode("ascii")
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode("ascii")


def unmask_python(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated, in Python: where websockets' C masker is missing.

    One big-integer XOR: for the few hundred bytes of a media frame this is about four times
    faster than Autobahn's native masker, whose per-call set-up costs more than the XOR.
    """
    n = len(data)
    if not n:
        return b""
    repeat = _REPEAT.get(n)
    if repeat is None:
        if n > _REPEAT_CACHED:
            key = (mask * ((n >> 2) + 1))[:n]
            return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
        repeat = _REPEAT[n] = (sum(1 << (32 * i) for i in range((n + 3) // 4)), (1 << (8 * n)) - 1)
    key = (int.from_bytes(mask, "little") * repeat[0]) & repeat[1]  # the mask, repeated over n bytes
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


# Per payload length: (the integer whose product with a 32-bit mask repeats it, the n-byte mask).
# Media frames have a few hundred bytes; the cache stays small (at most ~1 MB) whatever peers send.
_REPEAT_CACHED = 1024
_REPEAT: dict[int, tuple[int, int]] = {}

try:
    # websockets' C masker (SSE2 where there is SSE2): 0.09 us for a 370-byte media frame,
    # against 0.97 us for the big-integer XOR. websockets built without its C extension
    # (no wheel for the platform, no compiler) has no ``speedups``: the Python one stands in.
    from websockets.speedups import apply_mask as unmask
except ImportError:  # pragma: no cover - depends on how websockets was installed
    unmask = unmask_python


def header(b0: int, length: int, mask: bytes = b"") -> bytes:
    """A frame header with the shortest length encoding (RFC 6455 5.2), masked when ``mask`` is given."""
    bit = MASK_BIT if mask else 0
    if length <= MAX_SHORT:
        head = bytes((b0, bit | length))
    elif length <= MAX_16BIT:
        head = LEN16.pack(b0, bit | 126, length)
    else:
        head = _LEN64.pack(b0, bit | 127, length)
    return head + mask


def text_frame(payload: bytes) -> bytes:
    """An unmasked text frame (what a server sends)."""
    return header(FIN_TEXT, len(payload)) + payload


def masked_frame(b0: int, payload: bytes, mask: bytes) -> bytes:
    """A masked frame (what a client sends): ``b0`` is FIN/RSV/opcode, ``mask`` four bytes."""
    return header(b0, len(payload), mask) + unmask(payload, mask)


INCOMPLETE = -1  # text_length: the header is not all in yet
OTHER = -2  # text_length: not the common frame


def text_length(buf: bytes, pos: int, end: int) -> int:
    """The payload length of the common frame whose header starts at ``buf[pos]``, else OTHER or INCOMPLETE.

    ``end`` is ``len(buf)``. The common frame: FIN, no RSV bits, text, masked, at most 65535
    bytes, the length in its shortest encoding; its header is 6 bytes when the length is at
    most 125 (MAX_SHORT), else 8. OTHER as soon as the first two bytes show it is any other
    frame (or, once the header is all in, its length is not in the shortest encoding);
    INCOMPLETE while a header that may still be one is cut short. The daemon's fast path reads
    every frame of a call with this, so it is written for instructions, the commonest case
    (a media frame: 16-bit length) first: one call, a few comparisons. ``read_header``, which
    reads any frame, costs 4% more per echoed frame (benchmarks/instructions.py).
    """
    avail = end - pos
    if avail < 2:
        return INCOMPLETE
    if buf[pos] != 0x81:  # FIN_TEXT
        return OTHER
    b1 = buf[pos + 1]
    if b1 == 0xFE:  # masked, a 16-bit length
        if avail < 8:
            return INCOMPLETE
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        return length if length > 125 else OTHER  # else not the shortest encoding
    if b1 < 0x80 or b1 == 0xFF:  # unmasked, or a 64-bit length
        return OTHER
    return b1 - 0x80 if avail >= 6 else INCOMPLETE


def read_header(buf: bytes, pos: int = 0) -> tuple[int, int, int, bytes] | None:
    """Parse the frame header at ``buf[pos:]``: (b0, payload length, header length, mask or b"").

    None while the header is incomplete. The caller judges what the header means.
    """
    avail = len(buf) - pos
    if avail < 2:
        return None
    b0, b1 = buf[pos], buf[pos + 1]
    length = b1 & 0x7F
    size = 2
    if length == 126:
        size = 4
        if avail < size:
            return None
        length = (buf[pos + 2] << 8) | buf[pos + 3]
    elif length == 127:
        size = 10
        if avail < size:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
    if b1 & MASK_BIT:
        if avail < size + 4:
            return None
        return b0, length, size + 4, buf[pos + size : pos + size + 4]
    return b0, length, size, b""


def split_frames(buf: bytes, pos: int = 0):
    """The complete frames at ``buf[pos:]``, in order: (b0, unmasked payload, end offset) each.

    Stops at the first incomplete frame; the caller keeps ``buf[end:]`` of the last one (or
    ``buf[pos:]`` when none was complete) for the next read.
    """
    size = len(buf)
    while True:
        head = read_header(buf, pos)
        if head is None:
            return
        b0, length, header_len, mask = head
        end = pos + header_len + length
        if end > size:
            return
        payload = buf[pos + header_len : end]
        if mask:
            payload = unmask(payload, mask)
        yield b0, payload, end
        pos = end


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """A close frame's payload: the 2-byte status code, then the UTF-8 reason."""
    return _CODE.pack(code) + reason


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload; 1005 (no status received) when it has none."""
    return _CODE.unpack_from(payload)[0] if len(payload) >= 2 else 1005


_CODE = struct.Struct("!H")
