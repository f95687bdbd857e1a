"""What fleet mode (``--redis``) costs against the embedded default, in one run on one machine.

Two daemons, the same flags (signatures on, one tenant with a limit no call reaches), one of them
with ``--redis`` on a local redis-server (no persistence). For each, in turn:

1. **Webhook to admission**: ``--webhooks`` signed webhooks, one at a time, each a new CallSid;
   the round trip is timed at the client (on loopback it is the daemon's time plus ~0.1 ms).
   With Redis, the webhook waits for its reservation script.
2. **CPU per call**: ``voicebridge loadtest`` plays ``--calls`` calls for ``--duration`` seconds
   (each call: handshake, ``start``, 20 ms frames echoed, ``stop``). The daemon's CPU (utime +
   stime from /proc) over the whole load, start to end, divided by the calls: with Redis it
   includes each call's claim and release and the lease renewals. redis-server's own CPU is
   printed beside it.

Prints figures; asserts nothing. Needs redis-server (Debian: redis-server).

    python benchmarks/fleet.py                              # 500 webhooks, 200 calls x 20 s
    python benchmarks/fleet.py --webhooks 200 --calls 100 --duration 10
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

TOKEN = "bench-auth-token-0123456789abcdef"  # made up: the daemon checks real signatures with it
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONFIG = '[tenants.b1]\nnumbers = ["+15550100001"]\nmax_calls = 100000\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def env(extra=None) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH", "")) if p)
    e.update(extra or {})
    return e


def percentile(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Daemon:
    def __init__(self, name: str, directory: Path, extra: list[str]):
        self.name = name
        self.port = free_port()
        self.public = f"http://127.0.0.1:{self.port}"
        config = directory / "bench.toml"
        config.write_text(CONFIG)
        twist = Path(sys.executable).with_name("twist")
        command = [str(twist)] if twist.exists() else [sys.executable, "-m", "twisted"]
        self.proc = subprocess.Popen(
            [*command, "voicebridge", "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--public-url", self.public,
             "-c", str(config), *extra],
            env=env({"TWILIO_AUTH_TOKEN": TOKEN}), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port)
        time.sleep(1.0)  # connected to Redis, settled

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def webhooks(daemons: list[Daemon], count: int, warm_up: int = 50) -> dict[str, list[float]]:
    """Signed webhooks, one at a time, to each daemon in turn (the same machine load for both): ms each."""
    from voicebridge.tools.probe import twilio_form
    from voicebridge.twilio.signatures import SignatureChecker

    signer = SignatureChecker(TOKEN)
    conns = {d.name: http.client.HTTPConnection("127.0.0.1", d.port, timeout=10) for d in daemons}
    times: dict[str, list[float]] = {d.name: [] for d in daemons}
    for n in range(warm_up + count):
        for daemon in daemons:
            url = f"{daemon.public}/voice"
            sid = f"CA{daemon.name[:4]}{n:028d}"
            form = twilio_form(sid, "AC" + "2" * 32, [("To", "+15550100001"), ("From", "+15557654321")])
            headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signer.sign(url, form)}
            started = time.perf_counter()
            conns[daemon.name].request("POST", "/voice", body=urlencode(form), headers=headers)
            answer = conns[daemon.name].getresponse().read()
            if n >= warm_up:
                times[daemon.name].append((time.perf_counter() - started) * 1000)
            if b"<Connect>" not in answer:
                raise RuntimeError(f"{daemon.name}: webhook not answered <Connect>: {answer[:200]!r}")
    for conn in conns.values():
        conn.close()
    return times


def server_webhook_ms(daemon: Daemon) -> float:
    """The daemon's own mean time to answer a webhook (voicebridge_webhook_seconds), warm-up included."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("voicebridge_webhook_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("voicebridge_webhook_seconds_count"):
            count += float(line.split()[-1])
    return total / count * 1000 if count else float("nan")


def load(daemon: Daemon, calls: int, duration: float, redis_pid: int | None) -> dict:
    token = Path(tempfile.mkstemp()[1])
    token.write_text(TOKEN)
    command = [sys.executable, "-m", "voicebridge", "loadtest", f"ws://127.0.0.1:{daemon.port}/twilio-media",
               "--public-url", daemon.public, "--auth-token-file", str(token), "--calls", str(calls),
               "--duration", str(duration), "--json"]
    before, redis_before, started = cpu(daemon.proc.pid), cpu(redis_pid) if redis_pid else 0.0, time.monotonic()
    out = subprocess.run(command, env=env(), cwd=REPO, capture_output=True, timeout=duration + 300).stdout
    time.sleep(1.0)  # the last closes and releases
    result = json.loads(out) if out.strip() else {"ok": False}
    result["cpu_s"] = cpu(daemon.proc.pid) - before
    result["redis_cpu_s"] = (cpu(redis_pid) - redis_before) if redis_pid else 0.0
    result["wall_s"] = time.monotonic() - started
    token.unlink()
    return result


def script_costs(redis_port: int, count: int) -> dict:
    """In this process, through the daemon's own client: each call's three scripts (reserve, claim,
    release) one after another, and a renewal of 1,000 calls. -> latency and this process's CPU."""
    from twisted.internet import defer, reactor, task

    from voicebridge.fleet import slots
    from voicebridge.fleet.client import Redis, parse_redis_url

    keys, out = slots.Keys("bench"), {}
    client = Redis(parse_redis_url(f"redis://127.0.0.1:{redis_port}/0"), reactor)

    @defer.inlineCallbacks
    def measure():
        client.start()
        while not client.available:
            yield task.deferLater(reactor, 0.01, lambda: None)
        reserve_ms, cpu_started = [], time.process_time()
        for n in range(count):
            sid = f"CAbench{n:026d}"
            started = time.perf_counter()
            yield client.run(*slots.reserve_call(keys, sid, "b1", None, 100_000, 30_000, "m1"), 2.0)
            reserve_ms.append((time.perf_counter() - started) * 1000)
            yield client.run(*slots.claim_call(keys, sid, "b1", None, 100_000, 15_000, "m2"), 2.0)
            yield client.run(*slots.release_call(keys, "m2", [sid]), 2.0)
        out["lifecycle_cpu_us"] = (time.process_time() - cpu_started) / count * 1e6
        out["reserve_ms"] = reserve_ms
        held = [(f"CAheld{n:027d}", "b1", 1000) for n in range(1000)]
        started_cpu, started = time.process_time(), time.perf_counter()
        yield client.run(*slots.renew_call(keys, "m1", 15_000, ["b1"], held, []), 5.0)
        out["renew_1000_ms"] = (time.perf_counter() - started) * 1000
        out["renew_1000_cpu_ms"] = (time.process_time() - started_cpu) * 1000
        yield client.stop()

    def done(result):
        reactor.stop()
        return result

    measure().addBoth(done)
    reactor.run()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=500)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="loadtests per daemon, alternating (default 2)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no",
             "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_listening(redis_port)
        results = {"default": {"cpu_s": 0.0, "redis_cpu_s": 0.0, "ok": True},
                   "fleet": {"cpu_s": 0.0, "redis_cpu_s": 0.0, "ok": True}}
        daemons = []
        try:
            daemons = [
                Daemon("default", directory, []),
                Daemon("fleet", directory, ["--redis", f"redis://127.0.0.1:{redis_port}/0"]),
            ]
            for name, times in webhooks(daemons, args.webhooks).items():
                results[name]["webhook"] = times
            for daemon in daemons:
                results[daemon.name]["server_ms"] = server_webhook_ms(daemon)
            for _ in range(args.rounds):  # alternately, so both meet the same machine load
                for daemon in daemons:
                    r = load(daemon, args.calls, args.duration, redis.pid if daemon.name == "fleet" else None)
                    total = results[daemon.name]
                    total["cpu_s"] += r["cpu_s"]
                    total["redis_cpu_s"] += r["redis_cpu_s"]
                    total["ok"] = total["ok"] and bool(r.get("ok"))
            scripts = script_costs(redis_port, args.webhooks)
        finally:
            for daemon in daemons:
                daemon.stop()
            redis.terminate()
            redis.wait(10)

    print(f"voicebridge fleet benchmark: {args.webhooks} webhooks one at a time to each; "
          f"{args.rounds} x {args.calls} calls x {args.duration:g} s on each")
    print(f"{'':10} {'webhook p50':>12} {'p99':>8} {'mean':>8} {'in daemon':>10}   {'CPU/call':>10} {'redis CPU/call':>15} "
          f"{'calls ok':>9}")
    calls = args.calls * args.rounds
    for name, r in results.items():
        w, load_result = r["webhook"], r
        per_call = load_result["cpu_s"] / calls * 1000
        redis_per_call = load_result["redis_cpu_s"] / calls * 1000
        print(
            f"{name:10} {statistics.median(w):10.2f}ms {percentile(w, 0.99):6.2f}ms {statistics.mean(w):6.2f}ms"
            f" {r['server_ms']:8.2f}ms"
            f"   {per_call:8.1f}ms {redis_per_call:13.2f}ms {str(load_result.get('ok')):>9}"
        )
    d, f = results["default"], results["fleet"]
    extra = (f["cpu_s"] - d["cpu_s"]) / calls * 1000
    print(f"fleet mode: +{statistics.median(f['webhook']) - statistics.median(d['webhook']):.2f} ms per webhook (p50), "
          f"{extra:+.1f} ms of daemon CPU per {args.duration:g}-second call "
          f"({f['cpu_s'] / max(d['cpu_s'], 1e-9):.3f}x the default)")
    r = scripts["reserve_ms"]
    print(f"the reservation script alone (this process, the daemon's client): p50 {statistics.median(r):.3f} ms, "
          f"p99 {percentile(r, 0.99):.3f} ms; a call's reserve + claim + release: {scripts['lifecycle_cpu_us']:.0f} us of "
          f"client CPU; renewing 1,000 calls: {scripts['renew_1000_ms']:.1f} ms, "
          f"{scripts['renew_1000_cpu_ms']:.1f} ms of client CPU (every lease/3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
