"""The log as the daemon writes it, from real ``twist voicebridge`` processes: JSON lines in a pipe,
text on a terminal or when asked, journald's priorities read by a real journald, and the
workers' lines relayed by the supervisor."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import signal
import socket
import subprocess
import threading

import pytest_twisted

from tests.conftest import PUBLIC, TOKEN
from tests.daemon import Daemon, source_env, twist_command
from tests.http import call_form, post_form, request, upgrade_request
from tests.journald import Journald
from tests.nginx import free_port, wait_listening
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)
STREAM_URL = "wss://voice.example.test/twilio-media"
STANDARD = ["time", "level", "event", "message", "logger"]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_LINE = re.compile(r"^(\S+Z) (debug|info |warn |error|critical) (\S+) (.*)$")
SIGNED = {"TWILIO_AUTH_TOKEN": TOKEN}


def a_signed_call(reactor, daemon):
    """A webhook and its call, signed as Twilio signs them; fires with the call's outcome."""
    form = call_form()
    status, _, body = post_form(daemon.port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice", form)})
    assert status == 200, body
    script = CallScript(frames=5, call_sid="CA" + "1" * 32)
    return play_call(reactor, daemon.url("/twilio-media", "ws"), script, signature=SIGNER.sign(STREAM_URL))


def accepted_handshake(port: int) -> None:
    """A signed WebSocket handshake, then gone: ``handshake.accepted`` and nothing else of note."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /twilio-media HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Twilio-Signature: {SIGNER.sign(STREAM_URL)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer


@pytest_twisted.inlineCallbacks
def test_in_a_pipe_every_line_is_one_flat_json_object(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--public-url", PUBLIC, env=SIGNED)
    outcome = yield a_signed_call(reactor, daemon)
    assert outcome.received == outcome.sent
    assert upgrade_request(daemon.port)[0] == 403, "unsigned: refused"
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.ended")
    assert daemon.stop() == 0

    assert daemon.lines and "\x1e" not in daemon.output
    records = [json.loads(line) for line in daemon.lines]  # every line, or this fails
    for record in records:
        assert isinstance(record, dict) and list(record)[:5] == STANDARD, record
        assert TIME.match(record["time"]) and record["level"] in ("debug", "info", "warn", "error", "critical")
        assert not [k for k in record if k.startswith("log_") or k == "event_name"], record
    assert "__class_uuid__" not in daemon.output and "unpersistable" not in daemon.output
    by_event = {r["event"]: r for r in records}
    assert {"service.listening", "webhook.answered", "call.started", "call.ended", "handshake.refused"} <= set(by_event)
    ended = by_event["call.ended"]
    assert ended["callSid"] == "CA" + "1" * 32 and ended["frames_in"] == 5 and ended["logger"].startswith("voicebridge.")
    assert ended["message"].startswith("call ended callSid=CA"), "the message is rendered"
    assert by_event["handshake.refused"]["level"] == "warn"
    assert by_event["webhook.answered"]["from_"] == "+1555*****21", "numbers masked"
    reactor_line = next(r for r in records if r["message"] == "Starting reactor...")
    assert reactor_line["event"] == "twisted.log" and reactor_line["logger"].startswith("twisted."), "Twisted's lines too"


@pytest_twisted.inlineCallbacks
def test_text_lines_carry_time_level_and_event_name(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--public-url", PUBLIC, "--log-format", "text", env=SIGNED)  # the banner names the port
    outcome = yield a_signed_call(reactor, daemon)
    assert outcome.received == outcome.sent
    yield daemon.wait_for_async(reactor, lambda e: " call.ended " in e.get("raw", ""))
    daemon.signal(signal.SIGTERM)  # (Daemon.stop reads the JSON log to tell a drain from an exit)
    assert daemon.wait_exit(20) == 0
    parsed = [TEXT_LINE.match(line) for line in daemon.lines]
    assert all(parsed), [line for line, m in zip(daemon.lines, parsed, strict=True) if not m]
    events = [m.group(3) for m in parsed]
    assert {"service.listening", "webhook.answered", "handshake.accepted", "call.started", "call.ended"} <= set(events)
    assert "twisted.log" in events
    started = next(m for m in parsed if m.group(3) == "call.started")
    assert started.group(2) == "info " and "callSid=CA" + "1" * 32 in started.group(4)
    accepted = next(m for m in parsed if m.group(3) == "handshake.accepted")
    assert accepted.group(4).count("conn=") == 1, "conn= once: the message has it already"


def test_on_a_terminal_auto_is_text():
    master, slave = pty.openpty()
    port = free_port()
    proc = subprocess.Popen(
        [*twist_command(), "voicebridge", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=source_env(),
    )
    os.close(slave)
    output = bytearray()
    reader = threading.Thread(target=lambda: _drain(master, output), daemon=True)
    reader.start()
    try:
        wait_listening(port, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    lines = output.decode().splitlines()
    assert any(" service.listening voicebridge listening on tcp 127.0.0.1:" in line for line in lines), lines
    assert all(TEXT_LINE.match(line) for line in lines), lines


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        into.extend(chunk)
    os.close(fd)


def test_journald_gets_each_lines_priority():
    """A journald namespace reads the daemon's stdout as systemd connects a unit's; ``journalctl -p
    warning`` shows the refused handshake and not the accepted one: exactly the warnings and worse."""
    journal = Journald(f"voicebridge-test-{os.getpid()}").start()
    try:
        stream = journal.stream("voicebridge")
        port = free_port()
        env = source_env({**SIGNED, "JOURNAL_STREAM": Journald.journal_stream(stream)})
        args = ["voicebridge", "--listen", f"tcp:{port}:interface=127.0.0.1", "--public-url", PUBLIC]
        proc = subprocess.Popen([*twist_command(), *args], stdout=stream, stderr=stream, stdin=subprocess.DEVNULL, env=env)
        stream.close()  # the daemon holds it now, as a unit does
        try:
            wait_listening(port, 30)
            assert upgrade_request(port)[0] == 403
            accepted_handshake(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0

        journal.journalctl("--sync")
        everything = [json.loads(line) for line in journal.journalctl("-t", "voicebridge", "-o", "json").splitlines()]
        warnings = journal.journalctl("-t", "voicebridge", "-p", "warning", "-o", "cat").splitlines()
        print(journal.journalctl("-t", "voicebridge", "-p", "warning"))  # the check's output, for the record
        messages = [e["MESSAGE"] for e in everything]
        assert any(m.startswith("info  handshake.accepted ") for m in messages), messages
        assert not [m for m in messages if m.startswith("<")], "journald took the prefix as the priority"
        assert any(line.startswith("warn  handshake.refused ") for line in warnings), warnings
        assert not [line for line in warnings if "handshake.accepted" in line]
        worse = [e["MESSAGE"] for e in everything if int(e["PRIORITY"]) <= 4]
        assert warnings == worse and worse == [m for m in messages if m.split(" ", 1)[0] in ("warn", "error", "critical")]
        priorities = {e["MESSAGE"].split()[1]: e["PRIORITY"] for e in everything}
        assert priorities["handshake.refused"] == "4" and priorities["service.listening"] == "6"
    finally:
        journal.stop()


def test_workers_lines_carry_the_worker_in_both_formats(tmp_path):
    for fmt in ("json", "text"):
        port = free_port()
        daemon = Daemon(["--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1", "--log-format", fmt])
        try:
            daemon.start()  # once every worker is ready: the supervisor's banner
            for _ in range(6):
                assert request(port, "GET", "/healthz")[0] == 200
            if fmt == "json":
                relayed = daemon.wait_for(lambda e: e.get("event_name") == "http.access" and "worker_pid" in e, 20)
                assert relayed["worker"] in (0, 1) and relayed["logger"].startswith("voicebridge.")
            else:
                daemon.wait_for(lambda e: " http.access " in e.get("raw", "") and " worker=" in e.get("raw", ""), 20)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait_exit(30) == 0
        finally:
            daemon.stop()
        if fmt == "json":
            records = [json.loads(line) for line in daemon.lines]
            assert {r["event"] for r in records} >= {"supervisor.starting", "worker.ready", "service.listening"}
            assert not [r for r in records if any(k.startswith("log_") for k in r)]
        else:
            assert all(TEXT_LINE.match(line) for line in daemon.lines), daemon.output[-3000:]


def test_a_peer_cannot_forge_a_json_line(start_daemon):
    forged = '\n{"time":"2026-01-01T00:00:00.000Z","level":"info","event":"call.ended","message":"forged"}\n'
    daemon = start_daemon()  # development mode: loopback, unsigned
    assert post_form(daemon.port, "/voice", call_form(call_sid="CA1" + forged))[0] == 200
    assert upgrade_request(daemon.port, "/twilio-media", {"X-Forwarded-Host": forged.strip()})[0] in (101, 400, 403)
    daemon.wait_for(lambda e: e.get("event_name") == "webhook.answered")
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.lines]
    assert not [r for r in records if r["time"].startswith("2026-01-01") or r["message"] == "forged"]
    (answered,) = [r for r in records if r["event"] == "webhook.answered"]
    assert answered["callSid"].startswith('CA1\\n{"time":"2026-01-01'), "it is there: escaped, bounded, inside a field"
