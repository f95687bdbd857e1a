"""What a worker wrote outside its log before it was up, as one bounded log line.

A worker that cannot start (a broken config edit, a bad option) writes twist's error and then its
whole usage text, about 70 lines, and is restarted every 1 to 30 s: relayed line by line that is
70 log lines per retry, for ever. Gathered here instead (at most ``MAX_LINES`` lines and
``MAX_BYTES`` bytes kept) and told as one line naming the error, with how much was left out.
"""

from __future__ import annotations

MAX_LINES = 200
MAX_BYTES = 16384
SUMMARY_CHARS = 500


class StartupOutput:
    """Lines a worker wrote before it was ready: kept bounded, summarised once."""

    def __init__(self):
        self.lines: list[str] = []
        self.total = 0  # lines seen, kept or not
        self._bytes = 0

    def add(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip("\x1e\r\n")
        if not text.strip():
            return
        self.total += 1
        if len(self.lines) < MAX_LINES and self._bytes + len(text) <= MAX_BYTES:
            self.lines.append(text)
            self._bytes += len(text)

    def summary(self) -> str | None:
        """The line that says why (``Error: ...``, a traceback's last line), else the first; None if nothing."""
        if not self.total:
            return None
        chosen = _telling(self.lines) if self.lines else "(output too long to keep)"
        chosen = chosen.strip()[:SUMMARY_CHARS]
        others = self.total - 1
        return chosen + (f" (and {others} more line{'s' if others != 1 else ''} of output)" if others else "")

    def clear(self) -> None:
        self.lines, self.total, self._bytes = [], 0, 0


def _telling(lines: list[str]) -> str:
    for line in lines:
        if line.lstrip().lower().startswith(("error:", "usage error", "fatal")):
            return line
    if any(line.startswith("Traceback") for line in lines):
        unindented = [line for line in lines if line and not line[0].isspace()]
        if unindented:
            return unindented[-1]  # the exception, after the frames
    return lines[0]
