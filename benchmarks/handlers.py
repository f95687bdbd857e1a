"""Cost per 20 ms frame of the handler hooks and of recording, in one process, no sockets.

    python benchmarks/handlers.py [FRAMES]

Prints microseconds per frame (and frames per second of one core; best of 5 runs) for a call dispatching Twilio
media frames: with echo alone; with echo recorded (outbound watching plus the WAV writer); with a
handler that keeps raw frames (as relay does); and echo with frame keeping forced on, to show
what calls that do not need it save. Then the recorder alone, and finishing a 10-minute recording
(interleave, header, fsync, rename).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402

from voicebridge import handlers, messages  # noqa: E402
from voicebridge.audio.recording import Recording  # noqa: E402
from voicebridge.call.registry import CallRegistry  # noqa: E402
from voicebridge.config.file import Settings  # noqa: E402
from voicebridge.handlers import Handler  # noqa: E402

SID, CALL, ACC = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32


class Sink:
    """The link, doing nothing: what is measured is the call, not the socket."""

    def send_text(self, data):
        pass

    def close(self, code, reason):
        pass


class KeepsFrames(Handler):
    wants_frames = True

    def on_media(self, audio, timestamp):
        self.frame = self.call.frame


def run(frames: list[bytes], handler: str, options=None, force_keeping=False, repeat: int = 5) -> float:
    """The best of ``repeat`` runs: the least disturbed by whatever else the machine does."""
    return min(run_once(frames, handler, options, force_keeping) for _ in range(repeat))


def run_once(frames: list[bytes], handler: str, options=None, force_keeping=False) -> float:
    handlers.BUILTIN["keepsframes"] = "__main__:KeepsFrames"
    registry = CallRegistry(Settings(listen=[], handler=handler, handler_options=options or {}), task.Clock())
    call = registry.new_call(Sink(), "127.0.0.1", {})
    call.text_received(messages.twilio_start(SID, CALL, ACC))
    if force_keeping:
        call.keeps_frames = True  # every frame the full way, kept while dispatched, as for relay
    receive = call.text_received
    start = time.perf_counter()
    for frame in frames:
        receive(frame)
    elapsed = time.perf_counter() - start
    call.text_received(messages.twilio_stop(SID, CALL, ACC, 0))
    return elapsed / len(frames) * 1e6


def report(label: str, micros: float) -> None:
    print(f"  {label:<44} {micros:7.2f} us/frame  {1e6 / micros:>10,.0f} frames/s")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    audio = bytes(range(160))
    frames = [messages.twilio_media(SID, audio, i + 1, i * 20, i + 2) for i in range(count)]
    print(f"python {sys.version.split()[0]}, {count} media frames of 160 bytes")
    with tempfile.TemporaryDirectory() as directory:
        rows = [
            ("echo", run(frames, "echo")),
            ("echo, frame keeping forced on", run(frames, "echo", force_keeping=True)),
            ("handler that keeps raw frames (relay's hook)", run(frames, "keepsframes")),
            ("record > echo (watcher + WAV writer)", run(frames, "record", {"record": {"dir": directory, "handler": "echo"}})),
        ]
        for label, micros in rows:
            report(label, micros)

        recording = Recording(directory, "bench")
        start = time.perf_counter()
        for i in range(count):
            recording.caller(audio, i * 20)
            recording.sent(audio)
        report("Recording.caller + Recording.sent", (time.perf_counter() - start) / count * 1e6)
        recording.finish({})

        ten_minutes = 30_000
        recording = Recording(directory, "ten-minutes")
        for i in range(ten_minutes):
            recording.caller(audio, i * 20)
        start = time.perf_counter()
        recording.finish({})
        size = os.path.getsize(os.path.join(directory, "ten-minutes.wav"))
        print(f"  finish a 10-minute recording ({size / 1e6:.1f} MB): {(time.perf_counter() - start) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
