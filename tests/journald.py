"""A real systemd-journald for tests: a journal namespace of its own, run outside PID 1.

A unit's stdout reaches journald through its stdout-stream socket: systemd connects to it, writes
a header (identifier, unit, priority, whether lines carry a ``<N>`` priority prefix, forwarding)
and hands the socket to the service as stdout, with ``JOURNAL_STREAM`` naming it. ``stream``
does the same for a test's subprocess, and ``journalctl`` reads what journald stored.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

CANDIDATES = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")


def journald_binary() -> str:
    path = next((p for p in CANDIDATES if os.path.exists(p)), None)
    problem = None
    if path is None or shutil.which("journalctl") is None:
        problem = "systemd-journald is not installed (apt-get install systemd)"
    elif os.geteuid() != 0:
        problem = "systemd-journald needs root for /run/systemd and /var/log/journal"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}, and CI=true requires it")
        pytest.skip(problem)
    return path


class Journald:
    def __init__(self, namespace: str):
        self.namespace = namespace
        self.runtime = Path(f"/run/systemd/journal.{namespace}")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> Journald:
        self.proc = subprocess.Popen(
            [journald_binary(), self.namespace], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                message = f"systemd-journald exited with {self.proc.returncode}: {self.proc.stdout.read().decode()[-2000:]}"
                if os.environ.get("CI") == "true":
                    pytest.fail(message)
                pytest.skip(message)
            try:
                self.stream("probe").close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"systemd-journald {self.namespace}: no stdout socket after {timeout}s")

    def stream(self, identifier: str, priority: int = 6, level_prefix: bool = True) -> socket.socket:
        """A connected stdout stream, as systemd makes one for a unit (journald-stream.c's header)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.runtime / "stdout"))
            sock.shutdown(socket.SHUT_RD)
            # identifier, unit id, priority, level prefix, forward to syslog, to kmsg, to the console
            sock.sendall(f"{identifier}\n\n{priority}\n{int(level_prefix)}\n0\n0\n0\n".encode())
        except OSError:
            sock.close()
            raise
        return sock

    @staticmethod
    def journal_stream(sock: socket.socket) -> str:
        """``JOURNAL_STREAM`` for a process whose stdout is ``sock``, as systemd sets it."""
        st = os.fstat(sock.fileno())
        return f"{st.st_dev}:{st.st_ino}"

    def journalctl(self, *args: str) -> str:
        return subprocess.run(
            ["journalctl", f"--namespace={self.namespace}", "--no-pager", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        machine = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
        for path in (Path(f"/var/log/journal/{machine}.{self.namespace}"), Path(f"/run/log/journal/{machine}.{self.namespace}")):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.runtime, ignore_errors=True)
