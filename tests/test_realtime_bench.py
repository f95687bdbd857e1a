"""benchmarks/realtime.py and realtime_instructions.py keep working: tiny runs. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.daemon import REPO


def test_a_tiny_run_carries_ai_calls_through_the_fake_provider():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "realtime.py"), "--calls", "3", "--duration", "1.5", "--json"]
        + ["--server-core", "", "--load-core", ""],  # not pinned: any machine
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout)
    assert [(r["handler"], r["calls"]) for r in rows] == [("echo", 3), ("openai-realtime", 3)]
    for row in rows:
        assert row["frames_lost"] == 0 and row["dropped"] == 0 and row["frames_sent"] > 0 and row["cpu"] is not None
    ai = rows[1]
    assert ai["other_messages"] == {"mark": ai["frames_sent"]}, "a mark after every chunk of agent audio"
    assert ai["bridge_p99_ms"] is not None and ai["ratio_to_echo"] is not None


def test_the_instruction_programs_carry_every_frame():
    for variant in ("openai-realtime", "openai-realtime-autobahn", "provider"):
        done = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "realtime_instructions.py"), "--run", variant, "50"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, variant + done.stdout + done.stderr
