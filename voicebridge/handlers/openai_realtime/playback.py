"""What the caller has heard of the agent, from Twilio's marks: the basis of an exact barge-in.

Twilio plays the audio it is sent in order and returns a ``mark`` once the audio before it has
played. The handler sends a mark after every chunk of agent audio (``sent``); each mark that comes
back (``confirmed``) moves the played position of its item to the end of that chunk. On a
barge-in (``interrupt``) the item being played is truncated at its played position: never more
than was sent (the API refuses that) and never more than Twilio confirmed.

After a ``clear`` Twilio returns every pending mark at once, as if played: those are not heard, so
``interrupt`` forgets them, and a mark older than the oldest pending one changes nothing.

Pure: no reactor, no I/O. 8 bytes of 8 kHz mu-law are 1 ms.
"""

from __future__ import annotations

from collections import OrderedDict, deque

BYTES_PER_MS = 8
MARK_PREFIX = "vb-rt-"
MAX_PENDING = 6000  # marks awaiting Twilio: 2 minutes of 20 ms chunks; beyond, chunks go unmarked
MAX_ITEMS = 8  # items whose positions are kept (one or two play at a time)


def b64_bytes(text) -> int:
    """The length of the bytes base64 ``text`` (str or bytes, no whitespace) decodes to, without decoding it."""
    n = len(text)
    if not n:
        return 0
    pad = 2 if text[-2:] in ("==", b"==") else 1 if text[-1:] in ("=", b"=") else 0
    return n // 4 * 3 - pad


class Playback:
    def __init__(self, max_pending: int = MAX_PENDING):
        self.max_pending = max_pending
        self.seq = 0
        self.pending: deque[tuple[int, str, int]] = deque()  # (mark seq, item id, item bytes sent up to it)
        self.sent_bytes: OrderedDict[str, int] = OrderedDict()  # item id -> bytes sent to Twilio
        self.played_bytes: dict[str, int] = {}  # item id -> bytes Twilio confirmed played
        self.unmarked = 0  # chunks sent without a mark because too many were pending

    def sent(self, item_id: str, nbytes: int) -> str | None:
        """``nbytes`` of ``item_id`` went to Twilio: the name of the mark to send after them, or None (too many pending)."""
        sent = self.sent_bytes.get(item_id)
        if sent is None:
            self.sent_bytes[item_id] = sent = 0
            while len(self.sent_bytes) > MAX_ITEMS:
                old, _ = self.sent_bytes.popitem(last=False)
                self.played_bytes.pop(old, None)
        sent += nbytes
        self.sent_bytes[item_id] = sent
        if len(self.pending) >= self.max_pending:
            self.unmarked += 1  # the played position stays behind: a truncation is short, never long
            return None
        self.seq += 1
        self.pending.append((self.seq, item_id, sent))
        return f"{MARK_PREFIX}{self.seq}"

    def confirmed(self, name: str) -> bool:
        """Twilio returned mark ``name``: True if it was one of ours (pending or forgotten), else False."""
        if not name.startswith(MARK_PREFIX):
            return False
        digits = name[len(MARK_PREFIX) :]
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
            return False
        seq = int(digits)
        pending = self.pending
        while pending and pending[0][0] <= seq:
            _, item_id, end = pending.popleft()
            if item_id in self.sent_bytes:
                self.played_bytes[item_id] = end
        return True

    @property
    def playing(self) -> bool:
        """Audio was sent that Twilio has not confirmed played."""
        return bool(self.pending)

    def played_ms(self, item_id: str) -> int:
        return self.played_bytes.get(item_id, 0) // BYTES_PER_MS

    def sent_ms(self, item_id: str) -> int:
        return self.sent_bytes.get(item_id, 0) // BYTES_PER_MS

    def interrupt(self) -> tuple[str, int] | None:
        """A barge-in: (item id, audio_end_ms) to truncate the item being played at, or None if nothing plays.

        The pending marks are forgotten: Twilio returns them at once after the ``clear``, unplayed.
        """
        if not self.pending:
            return None
        item_id = self.pending[0][1]
        self.pending.clear()
        return item_id, self.played_bytes.get(item_id, 0) // BYTES_PER_MS
