"""The fuzz target (fuzz/fuzz_messages.py) runs clean for a bounded time, with and without atheris."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

from tests.daemon import REPO, source_env

TARGET = str(REPO / "fuzz" / "fuzz_messages.py")


def test_the_stdlib_driver_finds_nothing_in_thousands_of_mutated_twilio_messages():
    done = subprocess.run(
        [sys.executable, TARGET, "--runs", "3000", "--seed", "16"], capture_output=True, text=True, env=source_env(), timeout=300
    )
    assert done.returncode == 0 and "ok: 3000 inputs" in done.stdout, done.stdout + done.stderr


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed (pip install atheris)")
def test_atheris_finds_nothing_in_a_short_run(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(REPO / "fuzz" / "corpus", corpus)
    done = subprocess.run(
        [sys.executable, TARGET, "-runs=4000", "-max_len=8192", f"-dict={REPO / 'fuzz' / 'messages.dict'}", str(corpus)],
        capture_output=True,
        text=True,
        env=source_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0 and "Done 4000 runs" in done.stderr, done.stderr[-3000:]
