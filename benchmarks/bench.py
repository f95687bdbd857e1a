"""CPU per call of voicebridge, a bare Autobahn echo and the seed's Fastify stack, in one run.

Each server runs pinned to one core (taskset), the load generator (``voicebridge loadtest``) to
another. For every server and every call count the same load runs: N calls, each a 160-byte
mu-law frame every 20 ms, echoed. CPU is utime+stime from /proc over the steady window (every
call open, frames flowing), summed over the server's process tree. Printed: CPU per call, the
ratio to Fastify in the same run, echo round trip p50/p99/max, frames lost, and the
generator's own CPU (a saturated generator would measure itself).

    python benchmarks/bench.py                      # 250 and 500 calls, 30 s each, all three servers
    python benchmarks/bench.py --calls 250 --duration 10 --servers voicebridge,fastify
    python benchmarks/bench.py --profile profiles/  # py-spy flame graphs of the Python servers instead

Needs Linux (/proc, taskset), Node and npm for the Fastify app (``npm ci`` runs once), py-spy
for --profile. docs/benchmarks.md records figures and how they were obtained.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOKEN = "bench-auth-token-0123456789abcdef"  # a made-up token: the daemon checks real signatures with it
PUBLIC = "https://bench.voicebridge.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("TWILIO_AUTH_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def pinned(cores: str | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", cores, *command] if cores is not None else command


# The servers under test. Each returns (command, env, loadtest extra args, cwd).


def voicebridge_server(port: int, source: Path = REPO, workers: int | None = None):
    command = [
        sys.executable,
        "-m",
        "twisted",
        "voicebridge",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--public-url",
        PUBLIC,
    ]
    if workers:
        command += ["--workers", str(workers)]
    env = source_env({"TWILIO_AUTH_TOKEN": TOKEN})
    env["PYTHONPATH"] = os.pathsep.join([str(source), *env["PYTHONPATH"].split(os.pathsep)[1:]])
    return command, env, ["--public-url", PUBLIC], source


# py-spy on PATH, or in the virtualenv running this script (whose bin/ need not be on PATH).
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))

BASELINE: Path | None = None  # --baseline: another voicebridge checkout, e.g. main before a change
WORKERS = 2  # --workers: how many worker processes the "workers" server runs


def workers_server(port: int):
    return voicebridge_server(port, workers=WORKERS)


def baseline_server(port: int):
    if BASELINE is None:
        raise SystemExit("bench: the baseline server needs --baseline DIR")
    return voicebridge_server(port, BASELINE)


def autobahn_server(port: int):
    return [sys.executable, str(HERE / "autobahn_echo.py"), "--port", str(port)], source_env(), [], REPO


def fastify_server(port: int):
    app = HERE / "fastify"
    if not (app / "node_modules").is_dir():
        print("bench: npm ci in benchmarks/fastify", file=sys.stderr, flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=app, check=True, stdout=subprocess.DEVNULL)
    return ["node", str(app / "server.js")], source_env({"PORT": str(port)}), [], app


SERVERS = {
    "voicebridge": voicebridge_server,
    "workers": workers_server,
    "baseline": baseline_server,
    "autobahn": autobahn_server,
    "fastify": fastify_server,
}
PYTHON_SERVERS = {"voicebridge", "baseline", "autobahn"}
SIGNED = {"voicebridge", "workers", "baseline"}


class Server:
    def __init__(self, name: str, cores: str | None, log_dir: Path):
        self.name = name
        self.port = free_port()
        command, self.env, self.load_args, cwd = SERVERS[name](self.port)
        self.log = open(log_dir / f"{name}.log", "wb")
        self.proc = subprocess.Popen(pinned(cores, command), env=self.env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"ws://127.0.0.1:{self.port}/twilio-media"

    def wait_ready(self, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    if self.name != "workers" or self.workers_ready():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen within {timeout}s")

    def workers_ready(self) -> bool:
        """Every worker listens: the supervisor's banner is in its log."""
        self.log.flush()
        return b'"service.listening"' in Path(self.log.name).read_bytes()

    def calls_by_worker(self) -> dict[int, int]:
        """call.started events per worker, from the server's JSON log."""
        counts: Counter = Counter()
        for line in Path(self.log.name).read_bytes().splitlines():
            if b'"call.started"' in line:
                try:
                    counts[json.loads(line.lstrip(b"\x1e")).get("worker")] += 1
                except ValueError:
                    pass
        return dict(sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0])))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (worker processes count towards the server's CPU)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of these processes, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def run_load(server: Server, calls: int, duration: float, load_core: str | None, ramp: float | None, profile: Path | None):
    """One loadtest against ``server``; returns its JSON result plus the server's CPU over the steady window."""
    command = [sys.executable, "-m", "voicebridge", "loadtest", server.url, "--calls", str(calls), "--duration", str(duration)]
    command += ["--json", *server.load_args]
    if ramp is not None:
        command += ["--ramp", str(ramp)]
    env = source_env({"TWILIO_AUTH_TOKEN": TOKEN} if server.name in SIGNED else None)
    load = subprocess.Popen(pinned(load_core, command), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks: dict[str, tuple[float, float]] = {}
    spy: list[subprocess.Popen] = []

    def watch():
        for raw in load.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if "sending for" in line:
                pids = process_tree(server.proc.pid)
                marks["steady"] = (time.monotonic(), cpu_times(pids), pids)
                if profile is not None:
                    out = profile / f"{server.name}-{calls}"
                    spy.append(
                        subprocess.Popen(
                            [
                                PY_SPY,
                                "record",
                                "--pid",
                                str(server.proc.pid),
                                "--duration",
                                str(max(1, int(duration) - 2)),
                                "--rate",
                                "250",
                                "--format",
                                "raw",
                                "--output",
                                f"{out}.txt",
                                "--nonblocking",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            elif "sending done" in line and "steady" in marks:
                marks["done"] = (time.monotonic(), cpu_times(marks["steady"][2]))
            elif line:
                print(f"    {server.name}: {line}", file=sys.stderr, flush=True)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = load.stdout.read()
    load.wait(duration + 300)
    watcher.join(10)
    for p in spy:
        p.wait(60)
    result = json.loads(out.decode()) if out.strip() else {"error": f"loadtest exited {load.returncode}"}
    if "steady" in marks and "done" in marks:
        (t0, (u0, s0), _), (t1, (u1, s1)) = marks["steady"], marks["done"]
        result["server_cpu"] = (u1 - u0 + s1 - s0) / (t1 - t0)
        result["server_cpu_user"] = (u1 - u0) / (t1 - t0)
        result["server_cpu_system"] = (s1 - s0) / (t1 - t0)
    return result


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``: lines of one function count together."""
    name, sep, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if sep else frame


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive share per function from py-spy's collapsed stacks."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_function(frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "  self%  incl%  function"]
    for frame, n in own.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}  {100 * inclusive[frame] / total:5.1f}  {frame}")
    return "\n".join(lines)


# Where a sample's time went: the innermost frame that matches decides (see docs/benchmarks.md).
SYSCALL_LEAVES = {"untilConcludes", "EPollReactor.doPoll", "_poll", "Connection.doRead", "write_now", "Connection.writeSomeData"}
CATEGORIES = [
    ("Twilio JSON and base64 (messages.py)", ("voicebridge/twilio/messages.py", "base64.py", "orjson")),
    ("Call and handler (call/call.py, handlers/)", ("voicebridge/call/call.py", "voicebridge/handlers/")),
    ("Autobahn debug-log formatting", ("autobahn/util.py", "click/", "txaio/")),
    ("Autobahn send path", ("sendMessage (autobahn", "sendFrame (autobahn", "sendData (autobahn")),
    ("Autobahn receive path", ("autobahn/",)),
    ("fast path framing (wsfast.py, wsframes.py)", ("voicebridge/fastpath/wsfast.py", "voicebridge/fastpath/frames.py")),
    ("Twisted reactor and transport", ("twisted/",)),
]


def categorize(path: Path) -> list[tuple[str, float]]:
    """Share of samples per category, from py-spy's collapsed stacks."""
    shares, total = Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_function(frame) for frame in stack.split(";")]
        leaf = frames[-1].split(" (")[0]
        name = "syscalls: epoll_wait, recv, send" if leaf in SYSCALL_LEAVES else None
        for frame in reversed(frames):
            if name:
                break
            name = next((c for c, marks in CATEGORIES if any(mark in frame for mark in marks)), None)
        shares[name or "other"] += n
    return [(name, 100 * n / total) for name, n in shares.most_common()] if total else []


def every_core(rows: list[dict], server_cores: str | None) -> None:
    """Workers against one process: CPU per call, capacity per process and per machine."""
    single = {(r["round"], r["calls"]): r for r in rows if r["server"] == "voicebridge" and r.get("cpu_per_call_ms_per_s")}
    multi = [r for r in rows if r["server"] == "workers" and r.get("cpu_per_call_ms_per_s")]
    if not multi:
        return
    print(f"\nEvery core: {WORKERS} workers against one process (the workers pinned to cores {server_cores or 'any'})")
    for r in multi:
        split = "/".join(str(n) for n in r.get("calls_by_worker", {}).values())
        line = f"  round {r['round']}, {r['calls']} calls over {WORKERS} workers (split {split or '-'}):"
        same = single.get((r["round"], r["calls"]))
        if same:
            r["cpu_per_call_vs_one_process"] = r["cpu_per_call_ms_per_s"] / same["cpu_per_call_ms_per_s"]
            line += f" CPU per call {r['cpu_per_call_vs_one_process']:.2f}x one process with the same calls"
        per_process = single.get((r["round"], r["calls"] // WORKERS))
        if per_process:
            r["cpu_per_call_vs_same_calls_per_process"] = r["cpu_per_call_ms_per_s"] / per_process["cpu_per_call_ms_per_s"]
            line += f"; {r['cpu_per_call_vs_same_calls_per_process']:.2f}x one process with {r['calls'] // WORKERS} calls"
        print(line)
    cores = os.cpu_count() or 1
    for r in rows:
        if r["server"] in ("voicebridge", "workers") and r.get("calls_per_core_est"):
            per_core = r["calls_per_core_est"]
            what = "one process" if r["server"] == "voicebridge" else f"{WORKERS} workers sharing it"
            print(
                f"  capacity, round {r['round']} at {r['calls']} calls, {what}: {per_core} calls per core at 80%, "
                f"so {per_core * cores} per {cores}-core machine with one worker per core (--workers auto)"
            )


def fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="250,500", help="comma-separated call counts (default 250,500)")
    parser.add_argument("--duration", type=float, default=30.0, help="steady seconds per run (default 30)")
    parser.add_argument("--ramp", type=float, default=None, help="seconds to open the calls (loadtest's default)")
    parser.add_argument("--servers", default="voicebridge,autobahn,fastify", help="which servers, comma-separated")
    parser.add_argument("--server-cores", default="0", help="cores the server is pinned to (taskset -c syntax)")
    parser.add_argument("--load-core", default="1", help="core the load generator is pinned to")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole rotation; figures are per round")
    parser.add_argument("--profile", metavar="DIR", help="record py-spy profiles of the Python servers into DIR")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--baseline", metavar="DIR", help="another voicebridge checkout, run as the server 'baseline'")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the server 'workers' (default 2)")
    args = parser.parse_args(argv)
    global BASELINE, WORKERS
    BASELINE = Path(args.baseline).resolve() if args.baseline else None
    WORKERS = args.workers
    if BASELINE and "baseline" not in args.servers:
        args.servers += ",baseline"

    calls_list = [int(c) for c in args.calls.split(",") if c]
    names = [n for n in args.servers.split(",") if n]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; choose from {sorted(SERVERS)}")
    server_cores, load_core = args.server_cores, args.load_core
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        print("bench: fewer than 2 cores or no taskset: running unpinned, figures are not comparable", file=sys.stderr)
        server_cores = load_core = None
    profile = Path(args.profile) if args.profile else None
    if profile:
        if PY_SPY is None:
            parser.error("--profile needs py-spy (pip install py-spy), on PATH or beside this Python")
        profile.mkdir(parents=True, exist_ok=True)

    rows = []
    log_dir = Path(tempfile.mkdtemp(prefix="vb-bench-"))
    for round_no in range(1, args.rounds + 1):
        for calls in calls_list:
            for name in names:
                print(f"bench: round {round_no}, {name}, {calls} calls, {args.duration:g} s", file=sys.stderr, flush=True)
                server = Server(name, server_cores, log_dir)
                try:
                    server.wait_ready()
                    result = run_load(
                        server, calls, args.duration, load_core, args.ramp, profile if name in PYTHON_SERVERS else None
                    )
                finally:
                    server.stop()
                if name == "workers":
                    result["calls_by_worker"] = server.calls_by_worker()
                rows.append({"round": round_no, "server": name, "calls": calls, **result})
                time.sleep(1)

    # Ratios against Fastify in the same round and call count.
    fastify = {(r["round"], r["calls"]): r.get("server_cpu") for r in rows if r["server"] == "fastify"}
    print()
    print(
        f"{'server':12} {'calls':>5} {'cpu/core':>8} {'cpu/call':>9} {'vs fastify':>10} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'lost':>5} {'hs fail':>7} {'gen cpu':>7} {'calls/core*':>11} {'user/sys':>9}"
    )
    for r in rows:
        cpu = r.get("server_cpu")
        base = fastify.get((r["round"], r["calls"]))
        r["cpu_per_call_ms_per_s"] = cpu * 1000 / r["calls"] if cpu else None
        r["ratio_vs_fastify"] = cpu / base if cpu and base else None
        r["calls_per_core_est"] = int(0.8 * r["calls"] / cpu) if cpu else None
        rtt = r.get("rtt_ms", {})
        print(
            f"{r['server']:12} {r['calls']:>5} {fmt(cpu and 100 * cpu, '.1f'):>7}% {fmt(r['cpu_per_call_ms_per_s'], '.3f'):>9} "
            f"{fmt(r['ratio_vs_fastify']):>10} {fmt(rtt.get('p50')):>7} {fmt(rtt.get('p99')):>7} {fmt(rtt.get('max')):>7} "
            f"{r.get('frames_lost', '-'):>5} {r.get('handshake_failures', '-'):>7} "
            f"{fmt(100 * r.get('generator', {}).get('cpu', 0), '.0f'):>6}% {fmt(r['calls_per_core_est'], 'd'):>11} "
            f"{fmt(r.get('server_cpu_user') and 100 * r['server_cpu_user'], '.0f'):>4}/"
            f"{fmt(r.get('server_cpu_system') and 100 * r['server_cpu_system'], '.0f')}"
        )
    print(
        "\ncpu/core: server CPU over the steady window, % of one core; cpu/call: ms of CPU per second per call;"
        "\ncalls/core*: a linear estimate of the calls one core carries at 80% CPU (one process, one core)."
    )
    every_core(rows, server_cores)
    saturated = [r for r in rows if r.get("generator", {}).get("cpu", 0) > 0.85]
    if saturated:
        print("WARNING: the load generator used >85% of its core in some runs; their round trips include its delay.")
    if profile:
        for path in sorted(profile.glob("*.txt")):
            print()
            print(summarize_profile(path))
            print("  by category:")
            for name, share in categorize(path):
                print(f"  {share:5.1f}%  {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"\nserver logs: {log_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
