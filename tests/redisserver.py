"""A real ``redis-server``, started by a test in its own directory on a free loopback port, with no persistence.

Without redis-server the test is skipped with the reason, except under CI=true, where ``.ci/run``
installs it and a missing one is a failure. ``RedisServer.command`` is a tiny blocking RESP
client, for the test's own look at what the fleet wrote (the daemons use voicebridge/fleet/client.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.nginx import free_port, wait_listening


def redis_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed, and CI=true requires it (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server); the fleet tests need a real one")
    return path


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, unix: bool = False, extra=()):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.socket_path = str(self.directory / "redis.sock") if unix else None
        self.extra = list(extra)
        self.proc = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}" if self.socket_path else f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            redis_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)
        return self

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        """Stopped and started again on the same port: with no persistence, everything it held is gone."""
        self.stop(signal.SIGKILL)
        self.start()

    # A blocking RESP2 client, for the test's own reads.

    def command(self, *args):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            out = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                out.append(b"$%d\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"".join(out))
            return _read(sock.makefile("rb"))

    def live_slots(self, key: str = "{voicebridge}:slots") -> list[str]:
        """CallSids whose deadline (on Redis's clock) has not passed."""
        seconds, micros = self.command("TIME")
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return [m.decode() for m in self.command("ZRANGEBYSCORE", key, now_ms, "+inf")]

    def calls(self) -> dict:
        import json

        flat = self.command("HGETALL", "{voicebridge}:calls")
        return {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}


def _read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise RuntimeError(f"not RESP: {line!r}")


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for this test, stopped after it."""
    servers = []

    def start(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it is true; returns (its value, seconds waited), or raises."""
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(interval)
