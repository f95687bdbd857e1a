"""Run ``twist voicebridge`` as a real subprocess and read its log (JSON lines), for integration tests.

Each line is one JSON object (voicebridge/observe/formats.py); the event's name, ``event`` there,
is also ``event_name`` here, the name the code logs it under. A line that is not JSON (a daemon
run with ``--log-format text``, a usage error) is ``{"raw": line}``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def twist_command() -> list[str]:
    """The installed ``twist`` script beside this interpreter, else ``python -m twisted`` (the same program)."""
    script = Path(sys.executable).with_name("twist")
    return [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]


def source_env(extra: dict | None = None) -> dict:
    """An environment where the daemon runs this checkout's code, whatever is installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "PORT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def usage_error(args: list[str]) -> str:
    """What ``twist voicebridge ARGS`` refuses its options with, from the same parser, in this process."""
    import pytest
    from twisted.python import usage

    from voicebridge.daemon.tap import Options

    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(args)
    return str(refused.value)


class DaemonFailed(RuntimeError):
    pass


class LogSince:
    """A daemon's log from a point on (``Daemon.since()``): ``named`` and ``wait`` match an event name and fields."""

    def __init__(self, daemon: Daemon, start: int):
        self.daemon = daemon
        self.start = start

    def named(self, name: str, **fields) -> list[dict]:
        return self.daemon.named(name, self.start, **fields)

    def wait(self, name: str, timeout: float = 5, **fields) -> dict:
        def matches(event):
            return event.get("event_name") == name and all(event.get(k) == v for k, v in fields.items())

        return self.daemon.wait_for(matches, timeout, self.start)


class Daemon:
    """One daemon process. ``events`` holds its parsed log events as they arrive."""

    def __init__(self, args=(), env=None, command=None, cwd=None):
        self.args = list(args)
        self.env = source_env(env)
        self.command = command or [*twist_command(), "voicebridge"]
        self.cwd = cwd or REPO
        self.events: list[dict] = []
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.ports: list[int] = []
        self._lock = threading.RLock()

    # Life cycle.

    def start(self, timeout: float = 30, wait: bool = True) -> Daemon:
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            event = self.wait_for(
                lambda e: e.get("event_name") == "service.listening" or "voicebridge listening on" in e.get("raw", ""), timeout
            )
            # JSON lines by default; a text log's banner names the bound addresses.
            self.ports = event.get("listening_ports") or [int(p) for p in re.findall(r":(\d+)[,;]", event.get("raw", ""))]
            self.port = self.ports[0] if self.ports else None
        return self

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._lock:
                self.lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    event.setdefault("event_name", event.get("event"))
                else:
                    event = {"raw": line}
                self.events.append(event)

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM; if the drain is still waiting a moment later (live calls, or calls the webhook just answered),
        SIGINT, the daemon's "second signal": exit now. Tests of the drain itself send their own signals."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                # Only while the drain waits (its handlers are ours): a signal as the process exits would kill it.
                if self.proc.poll() is None and not self.named("service.drained"):
                    self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def wait_exit(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)

    # What it said.

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def named(self, name: str, start: int = 0, **fields) -> list[dict]:
        """Events called ``name`` (from the ``start``-th on) whose ``fields`` have these values."""
        with self._lock:
            events = self.events[start:]
        return [e for e in events if e.get("event_name") == name and all(e.get(k) == v for k, v in fields.items())]

    def find(self, predicate, start: int = 0) -> dict | None:
        with self._lock:
            for event in self.events[start:]:
                if predicate(event):
                    return event
        return None

    def since(self) -> LogSince:
        """The log from now on, for a test that shares the daemon with others."""
        with self._lock:
            return LogSince(self, len(self.events))

    def wait_for(self, predicate, timeout: float = 10, start: int = 0) -> dict:
        """Block until an event matches (sync tests only: it blocks the reactor)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.find(predicate, start)
            if event is not None:
                return event
            if self.proc.poll() is not None:
                time.sleep(0.2)
                event = self.find(predicate, start)
                if event is not None:
                    return event
                raise DaemonFailed(f"daemon exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            time.sleep(0.02)
        raise DaemonFailed(f"no matching log event within {timeout}s:\n{self.output[-4000:]}")

    def wait_for_async(self, reactor, predicate, timeout: float = 10):
        """The same as ``wait_for`` for tests that run in the reactor: a Deferred of the event."""
        from twisted.internet import defer, task

        @defer.inlineCallbacks
        def poll():
            deadline = reactor.seconds() + timeout
            while reactor.seconds() < deadline:
                event = self.find(predicate)
                if event is not None:
                    return event
                yield task.deferLater(reactor, 0.02, lambda: None)
            raise DaemonFailed(f"no matching log event within {timeout}s:\n{self.output[-4000:]}")

        return poll()

    # Where it is.

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"
