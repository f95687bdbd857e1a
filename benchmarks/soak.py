"""Soak: churn calls through a real ``twist voicebridge`` and watch its memory, fds and Call objects.

    python benchmarks/soak.py [--minutes 6] [--concurrency 20] [--frames 50] [--every 30] [--cpu N] [--no-gc]

Starts the daemon (echo handler, development mode, loopback), then keeps ``--concurrency`` calls
going for ``--minutes``: each opens the stream as Twilio does, sends ``--frames`` 20 ms frames, a
DTMF digit and a mark, and ends with ``stop`` (every fourth call instead just closes its socket,
as a dropped call does); a new call starts as soon as one ends. Every ``--every`` seconds it prints
the calls churned, the daemon's resident memory (``/proc/PID/status`` VmRSS), its open fds, and
``voicebridge_call_objects`` from ``/metrics`` (every Call object still in memory: it stays near
the live calls unless ended calls wait for the cycle collector or leak).

``--no-gc`` runs the daemon with Python's cycle collector switched off (``gc.disable()`` before
twist starts): memory then stays flat only if every ended call is freed by reference counting.
``--source DIR`` runs another checkout's code (say, an older commit from ``git archive``) for a
comparison. Both processes are pinned to ``--cpu`` (taskset), one core of a shared machine.
Prints figures; asserts nothing. The summary compares RSS after the first minute with the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon import Daemon  # noqa: E402

GC_OFF_BOOT = "import gc, sys; gc.disable(); from twisted.application.twist._twist import Twist; Twist.main(sys.argv)"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def start_daemon(args) -> Daemon:
    python = [sys.executable, "-c", GC_OFF_BOOT] if args.no_gc else [sys.executable, "-m", "twisted"]
    command = ["taskset", "-c", str(args.cpu), *python, "voicebridge"]
    daemon = Daemon(["--listen", "tcp:0:interface=127.0.0.1", "--idle-timeout", "10"], command=command, cwd=args.source)
    if args.source:  # first on the path (``python -c`` puts the working directory before it)
        daemon.env["PYTHONPATH"] = os.pathsep.join([args.source, daemon.env.get("PYTHONPATH", "")])
    return daemon.start()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--frames", type=int, default=50, help="20 ms frames per call (default 50: one second)")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument(
        "--cpu", type=int, default=max(os.sched_getaffinity(0)), help="the core both processes are pinned to (default: the last)"
    )
    parser.add_argument("--no-gc", action="store_true", help="the daemon runs with the cycle collector off")
    parser.add_argument("--source", help="run this checkout's voicebridge instead (a comparison)")
    parser.add_argument("--json", action="store_true", help="print the samples as one JSON object at the end")
    args = parser.parse_args(argv)

    os.sched_setaffinity(0, {args.cpu})
    daemon = start_daemon(args)
    pid, port = daemon.proc.pid, daemon.port

    from twisted.internet import defer, reactor, task, threads

    from voicebridge.tools.twiliosim import CallScript, play_call

    url = f"ws://127.0.0.1:{port}/twilio-media"
    counts = {"churned": 0, "failed": 0, "echo_missing": 0}
    samples = []
    began = time.monotonic()
    deadline = began + args.minutes * 60
    serial = [0]

    @defer.inlineCallbacks
    def caller():
        while time.monotonic() < deadline:
            serial[0] += 1
            dropped = serial[0] % 4 == 0
            script = CallScript(frames=args.frames, linger=0.2, dtmf="1", marks=("m",), send_stop=not dropped, close_after=0.1)
            try:
                outcome = yield play_call(reactor, url, script, timeout=10).addTimeout(60, reactor)
            except Exception:
                counts["failed"] += 1
                yield task.deferLater(reactor, 1, lambda: None)
                continue
            counts["churned"] += 1
            if not outcome.opened:
                counts["failed"] += 1
            elif len(outcome.received) < len(outcome.sent):
                counts["echo_missing"] += 1

    @defer.inlineCallbacks
    def sample():
        objects = yield threads.deferToThread(metric, port, "voicebridge_call_objects")
        active = yield threads.deferToThread(metric, port, "voicebridge_calls_active")
        row = {
            "seconds": round(time.monotonic() - began),
            "churned": counts["churned"],
            "rss_mb": round(rss_mb(pid), 1),
            "fds": fds(pid),
            "calls_active": int(active or 0),
            "call_objects": int(objects or 0),
        }
        samples.append(row)
        print(
            f"{row['seconds']:>6}s  churned {row['churned']:>6}  active {row['calls_active']:>3}  "
            f"call objects {row['call_objects']:>5}  rss {row['rss_mb']:>6.1f} MB  fds {row['fds']:>4}",
            flush=True,
        )

    @defer.inlineCallbacks
    def run():
        try:
            yield sample()
            sampler = task.LoopingCall(lambda: sample().addErrback(lambda f: print("sample failed:", f.value)))
            sampler.start(args.every, now=False)
            yield defer.DeferredList([caller() for _ in range(args.concurrency)])
            sampler.stop()
            yield task.deferLater(reactor, 2, lambda: None)  # the last calls close
            yield sample()
        finally:
            reactor.stop()

    print(
        f"soak: pid {pid}, {args.concurrency} concurrent calls of {args.frames} frames for {args.minutes:g} min, "
        f"cpu {args.cpu}, cycle collector {'OFF' if args.no_gc else 'on'}" + (f", source {args.source}" if args.source else ""),
        flush=True,
    )
    reactor.callWhenRunning(run)
    reactor.run()
    daemon.stop()

    after_minute = [s for s in samples if s["seconds"] >= 60] or samples
    first, last = after_minute[0], samples[-1]
    peak = max(s["rss_mb"] for s in after_minute)
    elapsed = max(last["seconds"], 1)
    summary = {
        "calls_churned": counts["churned"],
        "calls_failed": counts["failed"],
        "calls_with_missing_echo": counts["echo_missing"],
        "calls_per_second": round(counts["churned"] / elapsed, 1),
        "rss_mb_at_1min": first["rss_mb"],
        "rss_mb_at_end": last["rss_mb"],
        "rss_mb_peak_after_1min": peak,
        "rss_growth_mb_per_hour_after_1min": round(
            (last["rss_mb"] - first["rss_mb"]) * 3600 / max(last["seconds"] - first["seconds"], 1), 1
        ),
        "call_objects_at_end": last["call_objects"],
        "fds_at_start": samples[0]["fds"],
        "fds_at_end": last["fds"],
        "no_gc": args.no_gc,
    }
    print("summary: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    if args.json:
        print(json.dumps({"summary": summary, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
