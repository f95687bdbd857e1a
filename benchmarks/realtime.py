"""CPU per AI call (the ``openai-realtime`` handler against a local fake provider) against echo, in one run.

The daemon runs pinned to one core (taskset); the load generator (``voicebridge loadtest``) and the
fake provider (``benchmarks/fake_provider.py``) to another. Each simulated call sends a 160-byte
frame every 20 ms; under ``echo`` the daemon sends it back; under ``openai-realtime`` it goes to
the fake as ``input_audio_buffer.append``, which answers with a 20 ms delta of the same audio,
which the daemon sends to the call as ``media`` plus a ``mark``: one provider message each way per
frame, the worst case for per-message cost. CPU is utime+stime from /proc over the steady window.

Printed per handler and call count: the daemon's CPU (share of its core) and per call, the ratio
of an AI call to an echoed one, the round trip the generator timed (for AI calls: Twilio -> bridge
-> provider -> bridge -> Twilio, an upper bound of what the bridge adds, both hops), the daemon's
own bridge-added histogram (delta read -> frame written, from /metrics: a bucket bound), frames lost.

    python benchmarks/realtime.py                       # 100 calls, 30 s, cores 0 (daemon) and 1 (load + fake)
    python benchmarks/realtime.py --calls 50,100 --duration 20
    python benchmarks/realtime.py --handlers echo,openai-realtime,openai-realtime-autobahn  # the lean client path's worth

Needs Linux (/proc, taskset). Asserts nothing: docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the shared harness: Server, run_load, pinning, /proc CPU)

KEY = "sk-bench-not-a-real-key"


def parse_histogram(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Prometheus histogram in /metrics text."""
    out = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    return out


def quantile(buckets: list[tuple[float, float]], q: float):
    if not buckets or not buckets[-1][1]:
        return None
    rank = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= rank:
            return bound
    return float("inf")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="100", help="comma-separated call counts (default 100)")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--server-core", default="0", help='the daemon\'s core (taskset); "" for none')
    parser.add_argument("--load-core", default="1", help='the core of the load generator and the fake provider; "" for none')
    parser.add_argument("--handlers", default="echo,openai-realtime")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.server_core = args.server_core or None  # "": not pinned
    args.load_core = args.load_core or None
    log_dir = Path(tempfile.mkdtemp(prefix="vb-realtime-bench-"))
    provider_port = bench.free_port()
    provider = subprocess.Popen(
        bench.pinned(args.load_core, [sys.executable, str(HERE / "fake_provider.py"), "--port", str(provider_port)]),
        env=bench.source_env(),
        stdout=open(log_dir / "provider.log", "wb"),
        stderr=subprocess.STDOUT,
    )

    def daemon(handler: str):
        def make(port: int):
            command, env, load_args, cwd = bench.voicebridge_server(port)
            command += ["--handler", handler.replace("-autobahn", "")]
            if handler == "openai-realtime-autobahn":  # the provider link on Autobahn's general client path
                command[1:3] = [str(HERE / "autobahn_client_path.py")]
            if handler.startswith("openai-realtime"):
                command += ["--realtime-url", f"ws://127.0.0.1:{provider_port}/v1/realtime"]
                env = {**env, "OPENAI_API_KEY": KEY}
            return command, env, load_args, cwd

        return make

    rows = []
    try:
        for handler in args.handlers.split(","):
            bench.SERVERS[handler] = daemon(handler)
            bench.SIGNED.add(handler)
            for calls in (int(c) for c in args.calls.split(",")):
                server = bench.Server(handler, args.server_core, log_dir)
                try:
                    server.wait_ready()
                    print(f"realtime bench: {handler}, {calls} calls, {args.duration:g} s", file=sys.stderr, flush=True)
                    provider_before, started = bench.cpu_seconds([provider.pid]), time.monotonic()
                    result = bench.run_load(server, calls, args.duration, args.load_core, None, None)
                    provider_cpu = (bench.cpu_seconds([provider.pid]) - provider_before) / (time.monotonic() - started)
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as r:
                            metrics = r.read().decode()
                    except OSError as e:  # a saturated daemon may not answer in time
                        print(f"    {handler}: /metrics: {e}", file=sys.stderr, flush=True)
                        metrics = ""
                finally:
                    server.stop()
                bridge = parse_histogram(metrics, "voicebridge_realtime_bridge_latency_seconds")
                cpu = result.get("server_cpu")
                rows.append(
                    {
                        "handler": handler,
                        "calls": calls,
                        "cpu": cpu,
                        "cpu_per_call": cpu / calls if cpu is not None else None,
                        "rtt_ms": result.get("rtt_ms"),
                        "frames_lost": result.get("frames_lost"),
                        "frames_sent": result.get("frames_sent"),
                        "dropped": result.get("dropped"),
                        "generator_cpu": (result.get("generator") or {}).get("cpu"),
                        "provider_cpu": provider_cpu if handler != "echo" else None,
                        "bridge_p50_ms": (quantile(bridge, 0.5) or 0) * 1000 if bridge else None,
                        "bridge_p99_ms": (quantile(bridge, 0.99) or 0) * 1000 if bridge else None,
                        "other_messages": result.get("other_messages"),
                    }
                )
                print(f"    {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
                time.sleep(1)
    finally:
        provider.terminate()
        provider.wait(10)
    echo = {r["calls"]: r["cpu_per_call"] for r in rows if r["handler"] == "echo"}
    for r in rows:
        base = echo.get(r["calls"])
        r["ratio_to_echo"] = r["cpu_per_call"] / base if base and r["cpu_per_call"] else None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'handler':16} {'calls':>5} {'core%':>6} {'%/call':>7} {'x echo':>6} {'rtt p50':>8} {'rtt p99':>8} "
        f"{'bridge p99':>10} {'lost':>6} {'gen%':>5} {'fake%':>5}"
    )
    for r in rows:
        rtt = r["rtt_ms"] or {}
        bridge = f"<={r['bridge_p99_ms']:g} ms" if r["bridge_p99_ms"] is not None else "-"
        print(
            f"{r['handler']:16} {r['calls']:>5} {100 * (r['cpu'] or 0):>6.1f} {100 * (r['cpu_per_call'] or 0):>7.3f} "
            f"{(r['ratio_to_echo'] or 0):>6.2f} {rtt.get('p50', 0):>8.2f} {rtt.get('p99', 0):>8.2f} {bridge:>10} "
            f"{r['frames_lost']!s:>6} {100 * (r['generator_cpu'] or 0):>5.1f} {100 * (r['provider_cpu'] or 0):>5.1f}"
        )
    print(f"logs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
