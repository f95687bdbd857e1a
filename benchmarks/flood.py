"""Echo latency of good calls, quiet and under a flood of bad handshakes and junk frames.

    python benchmarks/flood.py [--calls 10] [--seconds 5] [--bad-handshakes 2000] [--junk-frames 30000]

Starts a real ``twist voicebridge`` on loopback, plays ``--calls`` signed calls at Twilio's pace
(a 160-byte frame every 20 ms) and measures, frame by frame, the time from sending media to
receiving its echo. Then it does the same while another process floods the daemon (bad
handshakes of five kinds, and signed streams that send nothing but junk frames). Prints the
figures; asserts nothing. The flood is bounded by its counts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import hostile  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from voicebridge.twilio.signatures import SignatureChecker  # noqa: E402

TOKEN = "benchmark-token-0123456789"
PUBLIC = "https://voice.example.test"
STREAM_URL = "wss://voice.example.test/twilio-media"
SIGNER = SignatureChecker(TOKEN)


def flood(port: int, bad_handshakes: int, junk_frames: int, workers: int, result) -> None:
    """In a child process: the flood, from ``workers`` threads; puts its counts and duration in ``result``."""
    per_stream = 500
    streams = max(1, junk_frames // per_stream)
    kinds = hostile.BAD_HANDSHAKES
    began = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        handshakes = pool.map(lambda i: hostile.bad_handshake(port, kinds[i % len(kinds)]), range(bad_handshakes))
        junk = pool.map(
            lambda i: hostile.junk_stream(port, SIGNER.sign(STREAM_URL), per_stream, f"CAjunk{i:05d}"), range(streams)
        )
        answered = sum(1 for status in handshakes if status is not None)
        sent = sum(junk)
    result.put({"handshakes": bad_handshakes, "answered": answered, "junk": sent, "seconds": time.monotonic() - began})


def play(port: int, calls: int, seconds: float) -> list:
    """Play ``calls`` concurrent good calls; returns their outcomes."""
    from twisted.internet import defer, reactor

    from voicebridge.tools.twiliosim import CallScript, play_call

    frames = int(seconds / 0.02)
    outcomes = []

    @defer.inlineCallbacks
    def run():
        try:
            results = yield defer.gatherResults(
                [
                    play_call(reactor, f"ws://127.0.0.1:{port}/twilio-media", CallScript(frames=frames), SIGNER.sign(STREAM_URL))
                    for _ in range(calls)
                ]
            )
            outcomes.extend(results)
        finally:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    return outcomes


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(label: str, outcomes: list, wall: float, cpu: float) -> None:
    sent = sum(len(o.sent) for o in outcomes)
    echoed = sum(len(o.received) for o in outcomes)
    intact = all(o.received == o.sent for o in outcomes)
    latencies = sorted(
        (r - s) * 1000 for o in outcomes for s, r in zip(o.sent_at, o.received_at, strict=False) if len(o.received) == len(o.sent)
    )

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else float("nan")

    print(
        f"{label:6} calls={len(outcomes)} frames sent={sent} echoed={echoed} intact={intact} "
        f"latency ms p50={pct(50):.2f} p95={pct(95):.2f} p99={pct(99):.2f} max={max(latencies, default=float('nan')):.2f} "
        f"mean={statistics.fmean(latencies) if latencies else float('nan'):.2f}; daemon cpu {cpu:.2f}s over {wall:.1f}s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each good call")
    parser.add_argument("--bad-handshakes", type=int, default=2000)
    parser.add_argument("--junk-frames", type=int, default=30000)
    parser.add_argument("--workers", type=int, default=4, help="flood threads")
    args = parser.parse_args()

    daemon = Daemon(["--public-url", PUBLIC, "--listen", "tcp:0:interface=127.0.0.1"], env={"TWILIO_AUTH_TOKEN": TOKEN})
    daemon.start()
    try:
        pid = daemon.proc.pid
        # A forked child plays the calls (a reactor runs once per process); another one floods.
        for label, flooding in (("quiet", False), ("flood", True)):
            result = multiprocessing.Queue()
            flooder = None
            if flooding:
                flooder = multiprocessing.Process(
                    target=flood, args=(daemon.port, args.bad_handshakes, args.junk_frames, args.workers, result)
                )
            outcomes_q = multiprocessing.Queue()
            player = multiprocessing.Process(target=_player, args=(daemon.port, args.calls, args.seconds, outcomes_q))
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            if flooder:
                flooder.start()
            player.start()
            outcomes = outcomes_q.get(timeout=args.seconds * 10 + 60)
            player.join(30)
            if flooder:
                flooder.join(300)
            wall, cpu = time.monotonic() - wall0, cpu_seconds(pid) - cpu0
            report(label, outcomes, wall, cpu)
            if flooding:
                f = result.get(timeout=10)
                print(
                    f"flood  bad handshakes={f['handshakes']} (answered {f['answered']}) junk frames={f['junk']} "
                    f"in {f['seconds']:.1f}s: {f['handshakes'] / f['seconds']:.0f} handshakes/s, "
                    f"{f['junk'] / f['seconds']:.0f} junk frames/s"
                )
        healthz = hostile.exchange(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        print(f"healthz after: {hostile.status_of(healthz)}")
    finally:
        daemon.stop()
    return 0


def _player(port, calls, seconds, out):
    outcomes = play(port, calls, seconds)
    # Outcomes hold only lists and numbers: they pickle.
    out.put(outcomes)


if __name__ == "__main__":
    sys.exit(main())
