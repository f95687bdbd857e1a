"""benchmarks/bench.py keeps working: a tiny run, and its accounting helpers. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.daemon import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402


def test_a_tiny_run_measures_every_python_server(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--calls", "4", "--duration", "1.5"]
        + ["--servers", "voicebridge,autobahn", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [(r["server"], r["calls"]) for r in rows] == [("voicebridge", 4), ("autobahn", 4)]
    for row in rows:
        assert row["opened"] == 4 and row["frames_lost"] == 0 and row["handshake_failures"] == 0
        assert row["server_cpu"] is not None and row["server_cpu"] >= 0
        assert row["ratio_vs_fastify"] is None, "no Fastify in this run"
    assert "voicebridge" in done.stdout and "cpu/call" in done.stdout


def test_cpu_is_read_for_a_whole_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in bench.process_tree(os.getpid())
        assert bench.cpu_seconds([os.getpid()]) > 0
    finally:
        child.kill()
        child.wait()


def test_profiles_are_summarized_by_function_and_category(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(
        "mainLoop (twisted/internet/base.py:1);_poll (voicebridge/fastpath/leanloop.py:40) 30\n"
        "mainLoop (twisted/internet/base.py:1);dataReceived (voicebridge/fastpath/wsfast.py:60);"
        "media_fields (voicebridge/twilio/messages.py:200) 50\n"
        "mainLoop (twisted/internet/base.py:1);dataReceived (voicebridge/fastpath/wsfast.py:61) 20\n"
    )
    shares = dict(bench.categorize(path))
    assert shares == {
        "Twilio JSON and base64 (messages.py)": 50.0,
        "syscalls: epoll_wait, recv, send": 30.0,
        "fast path framing (wsfast.py, wsframes.py)": 20.0,
    }
    text = bench.summarize_profile(path)
    assert "100 samples" in text and "dataReceived (voicebridge/fastpath/wsfast.py)" in text


def test_the_instruction_counts_programs_echo_every_frame():
    """benchmarks/instructions.py's measured programs run to the end (the counting needs valgrind and is not asserted)."""
    from instructions import VARIANTS  # benchmarks/ is on sys.path (above)

    for variant in VARIANTS:
        done = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "instructions.py"), "--run", variant, "200"],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


def test_the_frame_path_benchmark_runs_the_daemons_path():
    """benchmarks/framepath.py checks itself that every frame reached the Call and was echoed; no timing is asserted."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "framepath.py"), "--frames", "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("full path", "handler does nothing", "framing only", "real send", "send side"):
        assert row in done.stdout
