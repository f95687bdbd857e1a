"""``voicebridge loadtest``: against a real daemon, and against servers that misbehave on purpose.

Counts are asserted, never timings: speed is for benchmarks/bench.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import orjson
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

from tests.conftest import PUBLIC, TOKEN
from tests.daemon import REPO, source_env
from voicebridge.tools.loadtest import FRAME_BYTES, LoadOptions, LoadTest, frame_audio, signed_url, summary
from voicebridge.twilio import messages


def loadtest(*args, env=None, timeout=120):
    command = [sys.executable, "-m", "voicebridge", "loadtest", *args]
    return subprocess.run(command, env=source_env(env), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_signed_calls_against_a_real_daemon_are_all_echoed(start_daemon, tmp_path):
    daemon = start_daemon("--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    url = daemon.url("/twilio-media", "ws")
    done = loadtest(
        url, "--calls", "6", "--duration", "1", "--json", "--public-url", PUBLIC, "--auth-token-file", str(token_file)
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["opened"] == 6 and result["handshake_failures"] == 0 and result["dropped"] == 0
    assert result["frames_sent"] >= 6 * 40, "1 s of 20 ms frames per call, at least"
    assert result["frames_echoed"] == result["frames_sent"] and result["frames_lost"] == 0
    assert result["frames_corrupt"] == 0 and result["frames_unexpected"] == 0
    assert result["rtt_ms"]["samples"] > 0 and result["rtt_ms"]["p50"] <= result["rtt_ms"]["p99"] <= result["rtt_ms"]["max"]
    assert result["close_codes"] == {"1000": 6}, "voicebridge closes each stream after Twilio's stop"
    assert result["ok"] is True
    assert "all 6 calls open" in done.stderr
    ended = daemon.wait_for(lambda e: len(daemon.named("call.ended")) >= 6, 10) and daemon.named("call.ended")
    assert sum(e["frames_in"] for e in ended) == result["frames_sent"]
    assert sum(e["frames_out"] for e in ended) == result["frames_echoed"]
    assert {e["reason"] for e in ended} == {"stop"}
    started = daemon.named("call.started")
    assert sorted(int(e["parameters"]["loadtest"]) for e in started) == list(range(6))
    assert TOKEN not in done.stdout + done.stderr


def test_the_token_comes_from_the_environment_too_and_the_text_report_reads(start_daemon):
    daemon = start_daemon("--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})
    done = loadtest(
        daemon.url("/twilio-media", "ws"), "--calls", "2", "--duration", "0.5", "--public-url", PUBLIC,
        env={"TWILIO_AUTH_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2/2 opened" in done.stdout and "lost 0" in done.stdout and "round trip" in done.stdout
    assert done.stdout.rstrip().endswith("OK")


def test_unsigned_handshakes_are_counted_as_failures(start_daemon):
    daemon = start_daemon("--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})
    done = loadtest(daemon.url("/twilio-media", "ws"), "--calls", "3", "--duration", "0.5", "--json")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["opened"] == 0 and result["handshake_failure_reasons"] == {"http-403": 3}
    assert result["frames_sent"] == 0 and result["ok"] is False


def test_a_port_nobody_listens_on():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = loadtest(f"ws://127.0.0.1:{port}/twilio-media", "--calls", "2", "--duration", "0.5", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["handshake_failure_reasons"] == {"refused": 2}


@pytest.mark.parametrize(
    "args, message",
    [
        (["http://127.0.0.1:1/x"], "is not a ws:// or wss:// URL"),
        (["ws://127.0.0.1:1/x", "--calls", "0"], "--calls must be at least 1"),
        (["ws://127.0.0.1:1/x", "--auth-token-file", "/nonexistent/token"], "cannot read --auth-token-file"),
    ],
)
def test_bad_arguments_are_refused_precisely(args, message):
    done = loadtest(*args)
    assert done.returncode == 2 and message in done.stderr


# Servers that misbehave, in this process.


class Lossy(WebSocketServerProtocol):
    """Echoes like an application would, but drops every third media frame; ``close_after`` ends calls early."""

    def onOpen(self):
        self.count = 0
        self.sid = None

    def onMessage(self, payload, isBinary):
        message = messages.parse(payload)
        if isinstance(message, messages.Start):
            self.sid = message.stream_sid
        elif isinstance(message, messages.Media):
            self.count += 1
            if self.count == self.factory.close_after:
                self.sendClose(4000, "enough")
            elif self.count % 3:
                audio = message.payload if not self.factory.corrupt else message.payload[::-1]
                self.sendMessage(messages.media(self.sid, audio))
                self.factory.tally["echoed"] += 1
                if self.count == 1:
                    self.sendMessage(messages.mark(self.sid, "unasked"))
            else:
                self.factory.tally["dropped"] += 1


@pytest.fixture
def lossy_server():
    from twisted.internet import reactor

    ports = []

    def start(close_after=None, corrupt=False):
        factory = WebSocketServerFactory()
        factory.protocol = Lossy
        factory.close_after = close_after
        factory.corrupt = corrupt
        factory.tally = Counter()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        return f"ws://127.0.0.1:{port.getHost().port}/twilio-media", factory.tally

    yield start
    for port in ports:
        port.stopListening()


def run_load(url, calls=3, duration=0.6):
    from twisted.internet import reactor

    test = LoadTest(reactor, LoadOptions(url=url, calls=calls, duration=duration, grace=0.3))
    return test.run().addTimeout(30, reactor)


@pytest_twisted.inlineCallbacks
def test_frames_never_echoed_are_counted_lost(lossy_server):
    url, tally = lossy_server()
    result = yield run_load(url)
    assert result.opened == 3 and result.frames_sent > 3 * 20
    assert tally["dropped"] > 0
    assert (result.frames_echoed, result.frames_lost) == (tally["echoed"], tally["dropped"])
    assert result.frames_sent == tally["echoed"] + tally["dropped"]
    assert result.other_messages == {"mark": 3}
    assert not result.ok


@pytest_twisted.inlineCallbacks
def test_echoes_that_differ_from_what_was_sent_are_corrupt(lossy_server):
    result = yield run_load(lossy_server(corrupt=True)[0])
    assert result.frames_corrupt > 0 and result.frames_echoed == 0
    assert not result.ok


@pytest_twisted.inlineCallbacks
def test_calls_the_server_ends_early_are_dropped_with_its_close_code(lossy_server):
    result = yield run_load(lossy_server(close_after=5)[0], calls=2)
    assert result.opened == 2 and result.dropped == 2
    assert result.close_codes == {4000: 2}
    assert not result.ok


def test_frame_ids_and_percentiles():
    assert len(frame_audio(0)) == len(frame_audio(2**40)) == FRAME_BYTES
    assert frame_audio(7) != frame_audio(8)
    stats = summary([float(i) for i in range(1, 101)])
    assert (stats["p50"], stats["p99"], stats["max"], stats["samples"]) == (50.0, 99.0, 100.0, 100)
    assert summary([]) == {"p50": None, "p99": None, "max": None, "samples": 0}


def test_signed_url_follows_the_daemons_public_url():
    assert signed_url("ws://127.0.0.1:8080/twilio-media", None) == "ws://127.0.0.1:8080/twilio-media"
    assert signed_url("ws://127.0.0.1:8080/twilio-media", "https://voice.example.com") == "wss://voice.example.com/twilio-media"
    assert signed_url("ws://127.0.0.1:8080/twilio-media", "https://example.com/vb/") == "wss://example.com/vb/twilio-media"


def test_json_output_is_one_object():
    from voicebridge.tools.loadtest import LoadResult

    result = LoadResult(url="ws://x/twilio-media", calls=1, duration=1.0)
    assert orjson.loads(orjson.dumps(result.as_dict()))["frames_lost"] == 0
    assert "result" in result.text()
