"""sd_notify: READY=1 once listening, STOPPING=1 when the drain begins, on a real datagram socket."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.http import request
from voicebridge.daemon import notify


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """A socket bound where systemd would bind it; yields (NOTIFY_SOCKET value, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = value = str(tmp_path / "notify")
    else:
        name = f"voicebridge-test-{os.getpid()}-{os.urandom(4).hex()}"
        address, value = "\0" + name, "@" + name
    sock.bind(address)
    sock.settimeout(15)
    yield value, sock
    sock.close()


def _messages(sock, until: str) -> list[dict]:
    """Datagrams as dicts, up to and including the first that sets ``until``."""
    received = []
    while True:
        data = sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        received.append(fields)
        if until in fields:
            return received


def test_ready_after_listening_and_stopping_when_draining(start_daemon, notify_socket):
    value, sock = notify_socket
    daemon = start_daemon(env={"NOTIFY_SOCKET": value})
    (ready,) = _messages(sock, "READY")
    assert ready["READY"] == "1"
    assert f"127.0.0.1:{daemon.port}" in ready["STATUS"]
    assert request(daemon.port, "GET", "/healthz")[0] == 200, "READY=1 came after the port was bound"
    daemon.signal(signal.SIGTERM)
    (stopping,) = _messages(sock, "STOPPING")
    assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("draining")
    assert daemon.wait_exit(15) == 0


def test_notify_is_a_no_op_outside_systemd():
    assert notify.notify("READY=1", environ={}) is False


def test_notify_failure_is_not_fatal(tmp_path):
    assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False
    assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_notify_address_forms():
    assert notify.notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify.notify_address({"NOTIFY_SOCKET": "@abstract"}) == "\0abstract"
    assert notify.notify_address({}) is None
