"""One call on disk: a stereo WAV (the caller left, what was sent back right) and a JSON sidecar.

The format: RIFF WAV, 16-bit signed PCM, 8 kHz, two channels, decoded from Twilio's mu-law.
Decoding mu-law is exact, so the left channel holds exactly the audio Twilio sent, and any player
or tool reads it (mu-law WAV is not universally supported).

Both channels share one timeline of 8 kHz samples counted from the stream's start:

- The caller's audio sits where Twilio's ``media.timestamp`` (ms since the stream began) puts it.
  Twilio skips timestamps for packets it lost; the gap is filled with silence, so the speech after
  it stays at its true time. A single gap longer than ``MAX_GAP_MS`` is cut to that length (a
  bogus timestamp cannot fill the disk) and later audio is shifted accordingly; a timestamp that
  goes backwards does not overwrite earlier audio, it is placed after it.
- Audio sent back is placed where Twilio plays it. Twilio queues what it is sent and plays it in
  order, starting as soon as it arrives. "Now" on the timeline is the end of the caller's latest
  frame: Twilio's timestamps are the only clock both directions share, and that estimate is at
  most one frame (20 ms) late. So sent audio starts at ``max(now, end of what is still queued)``,
  and a ``clear`` drops what was queued beyond now, as Twilio does (counted in the sidecar).

Writing is crash-safe: the WAV is written as it comes to ``.NAME.wav.part`` beside the final name
(its header says "as long as the file" until the end, so even a killed process leaves audio that
sox or ffmpeg can read), and at the end the header is completed, the file fsynced and renamed to
``NAME.wav``, after ``NAME.json`` was written the same way. A name that exists is therefore
complete, and a WAV always has its sidecar. Memory
stays small however long the call: about a second of audio is held before it is written, plus
sent audio queued ahead of playback (bounded by ``MAX_AHEAD_MS``).
"""

from __future__ import annotations

import json
import os
import re
import wave

from voicebridge.audio import codec as audio

RATE = audio.RATE
SAMPLES_PER_MS = RATE // 1000
FLUSH_SAMPLES = RATE  # write about once a second of call
MAX_GAP_MS = 10_000
MAX_AHEAD_MS = 600_000  # sent audio queued more than 10 minutes ahead of playback is dropped
MAX_EVENTS = 10_000  # DTMF digits and marks kept for the sidecar; beyond, only counted
PART_SUFFIX = ".part"
FILE_MODE = 0o640
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
# The largest data length a RIFF header can state: "read to the end of the file" to most tools.
_UNKNOWN_FRAMES = (0xFFFFFFFF - 36) // (2 * audio.WIDTH)


def safe_name(*parts: str) -> str:
    """A file name from Twilio's ids: only letters, digits, '_' and '-', never a path."""
    cleaned = [_SAFE.sub("", part or "")[:64] for part in parts]
    return "-".join(p for p in cleaned if p) or "call"


def part_path(path: str) -> str:
    """Where ``path`` is written until it is complete: a hidden file beside it."""
    head, tail = os.path.split(path)
    return os.path.join(head, "." + tail + PART_SUFFIX)


class Recording:
    """Streams one call to disk. Not thread-safe: events come from the reactor; ``finish`` may run in a thread
    once ``finishing`` is set, after which events are no-ops."""

    def __init__(self, directory: str, name: str):
        self.wav_path = os.path.join(directory, name + ".wav")
        self.json_path = os.path.join(directory, name + ".json")
        self.part = part_path(self.wav_path)
        self._file = open(self.part, "wb", opener=_private)
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(2)
        self._wav.setsampwidth(audio.WIDTH)
        self._wav.setframerate(RATE)
        self._wav.setnframes(_UNKNOWN_FRAMES)  # wave patches the real length in at close()
        self._wav.writeframesraw(b"")  # the header goes out now
        # The timeline, in samples. Written: [0, written). Held: caller [written, now), sent [written, sent_end).
        self.written = 0
        self.now = 0
        self._caller = bytearray()  # mu-law
        self._sent = bytearray()  # mu-law
        self._shift = 0  # samples the caller's timestamps are moved by (long gaps, backwards steps)
        self.counts = {
            "framesIn": 0,
            "bytesIn": 0,
            "framesOut": 0,
            "bytesOut": 0,
            "gaps": 0,
            "gapMs": 0,
            "gapsShortened": 0,
            "timestampsBackwards": 0,
            "clears": 0,
            "clearedMs": 0,
            "droppedOutMs": 0,
            "eventsNotKept": 0,
        }
        self.dtmf: list[dict] = []
        self.marks_sent: list[dict] = []
        self.marks_played: list[dict] = []
        # Set on the reactor's thread before ``finish`` goes to a thread: from then on every event is
        # ignored, so nothing touches the buffers ``finish`` is writing.
        self.finishing = False
        self.closed = False

    @property
    def sent_end(self) -> int:
        return self.written + len(self._sent)

    @property
    def now_ms(self) -> int:
        return self.now // SAMPLES_PER_MS

    # The caller.

    def caller(self, ulaw: bytes, timestamp_ms: int) -> None:
        if self.finishing:
            return
        counts = self.counts
        counts["framesIn"] += 1
        counts["bytesIn"] += len(ulaw)
        at = timestamp_ms * SAMPLES_PER_MS - self._shift
        if at > self.now:
            gap = at - self.now
            limit = MAX_GAP_MS * SAMPLES_PER_MS
            if gap > limit:
                counts["gapsShortened"] += 1
                self._shift += gap - limit
                gap = limit
            counts["gaps"] += 1
            counts["gapMs"] += gap // SAMPLES_PER_MS
            self._caller += audio.ULAW_SILENCE * gap
            self.now += gap
        elif at < self.now:
            counts["timestampsBackwards"] += 1
            self._shift += at - self.now
        self._caller += ulaw
        self.now += len(ulaw)
        if self.now - self.written >= FLUSH_SAMPLES:
            self._flush(self.now)

    def dtmf_received(self, digit: str) -> None:
        if self.finishing:
            return
        self._event(self.dtmf, {"digit": digit, "atMs": self.now_ms})

    def mark_played(self, name: str) -> None:
        if self.finishing:
            return
        self._event(self.marks_played, {"name": name, "atMs": self.now_ms})

    # What was sent back.

    def sent(self, ulaw: bytes) -> None:
        if self.finishing:
            return
        counts = self.counts
        counts["framesOut"] += 1
        counts["bytesOut"] += len(ulaw)
        start = max(self.now, self.sent_end)
        if start + len(ulaw) - self.now > MAX_AHEAD_MS * SAMPLES_PER_MS:
            counts["droppedOutMs"] += len(ulaw) // SAMPLES_PER_MS
            return
        if start > self.sent_end:
            self._sent += audio.ULAW_SILENCE * (start - self.sent_end)
        self._sent += ulaw

    def mark_sent(self, name: str) -> None:
        if self.finishing:
            return
        self._event(self.marks_sent, {"name": name, "atMs": max(self.now, self.sent_end) // SAMPLES_PER_MS})

    def cleared(self) -> None:
        if self.finishing:
            return
        self.counts["clears"] += 1
        queued = self.sent_end - self.now
        if queued > 0:
            self.counts["clearedMs"] += queued // SAMPLES_PER_MS
            del self._sent[self.now - self.written :]

    # The end.

    def finish(self, sidecar: dict) -> tuple[str, str]:
        """Write what is held, complete the WAV, fsync; write the sidecar, then give the WAV its name.
        Blocking: call it off the reactor.

        The sidecar is encoded before anything is renamed, and renamed before the WAV: a WAV that
        exists is complete and has its sidecar beside it; a sidecar that cannot be written leaves
        neither (``abandon`` removes the partial files). Set ``finishing`` on the reactor's thread
        first (``RecordHandler`` does): events after it are ignored.
        """
        self.finishing = True
        end = max(self.now, self.sent_end)
        document = {
            **sidecar,
            "wav": os.path.basename(self.wav_path),
            "format": {"encoding": "pcm_s16le", "sampleRate": RATE, "channels": 2, "channelNames": ["caller", "sent"]},
            "durationMs": end // SAMPLES_PER_MS,
            **self.counts,
            "dtmf": self.dtmf,
            "digits": "".join(d["digit"] for d in self.dtmf),
            "marksSent": self.marks_sent,
            "marksPlayed": self.marks_played,
        }
        encoded = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
        self._flush(end)
        self._wav.close()  # patches the RIFF and data lengths
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.closed = True
        write_atomically(self.json_path, encoded)
        os.replace(self.part, self.wav_path)
        sync_directory(os.path.dirname(self.wav_path))
        return self.wav_path, self.json_path

    def abandon(self) -> None:
        """Give up (the disk failed, the sidecar could not be encoded): close and remove the partial
        files, never leaving one under a final name."""
        if not self.closed:
            self.closed = True
            for close in (self._wav.close, self._file.close):
                try:
                    close()
                except (OSError, ValueError):
                    pass
        for path in (self.part, part_path(self.json_path)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # Internals.

    def _event(self, events: list, entry: dict) -> None:
        """Kept for the sidecar up to MAX_EVENTS per list; a name is at most messages.MAX_MARK_NAME
        characters (the parser refuses longer), so the sidecar stays within a few megabytes."""
        if len(events) < MAX_EVENTS:
            events.append(entry)
        else:
            self.counts["eventsNotKept"] += 1

    def _flush(self, upto: int) -> None:
        """Write the timeline up to ``upto`` (caller audio is padded with silence only at the very end)."""
        n = upto - self.written
        if n <= 0:
            return
        caller = self._caller[:n]
        if len(caller) < n:
            caller += audio.ULAW_SILENCE * (n - len(caller))
        sent = self._sent[:n]
        if len(sent) < n:
            sent += audio.ULAW_SILENCE * (n - len(sent))
        self._wav.writeframesraw(audio.interleave(audio.ulaw_to_pcm16(caller), audio.ulaw_to_pcm16(sent)))
        del self._caller[:n]
        del self._sent[:n]
        self.written = upto


def write_atomically(path: str, data: bytes) -> None:
    """``path`` appears complete or not at all: written aside, fsynced, renamed."""
    part = part_path(path)
    with open(part, "wb", opener=_private) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def _private(path: str, flags: int) -> int:
    """Recordings are personal data: owner and group may read them (the umask may narrow it), others never."""
    return os.open(path, flags, FILE_MODE)


def sync_directory(directory: str) -> None:
    """Make renames in ``directory`` durable (POSIX: fsync the directory itself)."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
