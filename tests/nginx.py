"""A real nginx, started by a test with a config it writes, on free loopback ports.

Without nginx the test is skipped with the reason, except under CI=true, where ``.ci/run``
installs nginx and a missing one is a failure.
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


def nginx_binary() -> str:
    path = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed, and CI=true requires it (.ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install nginx); these tests need a real nginx")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(names) -> dict:
    """A free port for each of ``names``, all different: each is held until every one is chosen.
    (Calling free_port() once per name can hand out one port twice: nginx then merges the two
    servers on it, and a plain-HTTP server answered with another's TLS certificate.)"""
    held = []
    try:
        for _ in names:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return {name: s.getsockname()[1] for name, s in zip(names, held, strict=True)}
    finally:
        for s in held:
            s.close()


def wait_listening(port: int, timeout: float = 10, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


class Nginx:
    """nginx in the foreground with ``http_body`` as the inside of its ``http { }`` block."""

    def __init__(self, directory: Path, http_body: str, ports: list[int]):
        self.directory = Path(directory)
        self.http_body = http_body
        self.ports = ports
        self.proc = None

    def start(self) -> Nginx:
        binary = nginx_binary()
        for sub in ("logs", "tmp"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.directory / "nginx.conf"
        conf.write_text(
            f"""{user}worker_processes 1;
daemon off;
pid {self.directory}/nginx.pid;
error_log {self.directory}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {self.directory}/logs/access.log;
    client_body_temp_path {self.directory}/tmp/body;
    proxy_temp_path {self.directory}/tmp/proxy;
    fastcgi_temp_path {self.directory}/tmp/fastcgi;
    uwsgi_temp_path {self.directory}/tmp/uwsgi;
    scgi_temp_path {self.directory}/tmp/scgi;
{self.http_body}
}}
"""
        )
        test = subprocess.run([binary, "-t", "-p", str(self.directory), "-c", str(conf)], capture_output=True, text=True)
        if test.returncode != 0:
            raise RuntimeError(f"nginx rejected its config:\n{test.stderr}\n{conf.read_text()}")
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.directory), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for port in self.ports:
            wait_listening(port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def error_log(self) -> str:
        path = self.directory / "logs" / "error.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def start_nginx(tmp_path):
    """``start_nginx(http_body, ports)``: a real nginx, stopped after the test."""
    started = []

    def start(http_body: str, ports: list[int]) -> Nginx:
        server = Nginx(tmp_path / f"nginx{len(started)}", http_body, ports)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
