"""The daemon notices answered calls whose stream never comes, and names the layer (issue 14, part 1).

Real ``twist voicebridge`` processes on loopback, one per scenario, driven at once by a module
fixture (a missing stream takes the reservation's 30 s to be declared, so the scenarios share
that wait): nothing reaches /twilio-media; a real nginx strips the upgrade; handshakes signed with
another token; streams that open and close before ``start``. Then a stream that does start ends
the episode, and /metrics shows the funnel.
"""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from tests.conftest import PUBLIC, TOKEN
from tests.daemon import Daemon
from tests.http import call_form, post_form, request, upgrade_request
from tests.nginx import Nginx, free_port, nginx_binary
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)
STREAM = PUBLIC.replace("https://", "wss://") + "/twilio-media"
WAIT = 45  # the reservation's 30 s, and room for a busy machine


def sid(scenario: str, i: int) -> str:
    return "CA" + f"{scenario}{i}".encode().hex().ljust(32, "0")[:32]


def answer(daemon: Daemon, call_sid: str, signed: bool = True) -> None:
    form = call_form(call_sid)
    headers = {"X-Twilio-Signature": SIGNER.sign(PUBLIC + "/voice", form)} if signed else {}
    status, _, body = post_form(daemon.port, "/voice", form, headers)
    assert status == 200 and b"<Connect>" in body, body


def start_message(call_sid: str) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZ" + "0" * 32,
            "start": {
                "streamSid": "MZ" + "0" * 32,
                "accountSid": "AC" + "2" * 32,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


class Scenarios:
    def __init__(self, directory):
        signed = ["--public-url", PUBLIC, "--listen", "tcp:0:interface=127.0.0.1"]
        env = {"TWILIO_AUTH_TOKEN": TOKEN}
        self.daemons = {
            "nothing": Daemon(signed, env=env),
            "stripped": Daemon([*signed, "--trusted-proxy", "127.0.0.1"], env=env),
            "signature": Daemon(signed, env=env),
            "closed": Daemon(["--listen", "tcp:0:interface=127.0.0.1"]),
        }
        self.nginx = None
        try:
            for daemon in self.daemons.values():
                daemon.start()
            nginx_binary()
            self.proxy = free_port()
            body = (
                f"server {{ listen 127.0.0.1:{self.proxy}; location / {{ "
                f"proxy_pass http://127.0.0.1:{self.daemons['stripped'].port}; proxy_http_version 1.1; "
                "proxy_set_header Host $host; proxy_set_header X-Forwarded-Proto https; } }"
            )
            self.nginx = Nginx(directory / "nginx", body, [self.proxy]).start()
            self.drive()
        except BaseException:
            self.stop()
            raise

    def drive(self):
        for i in range(3):
            answer(self.daemons["nothing"], sid("n", i))
            answer(self.daemons["stripped"], sid("s", i))
            status, _, _ = upgrade_request(
                self.proxy, headers={"Host": "voice.example.test", "X-Twilio-Signature": SIGNER.sign(STREAM)}
            )
            assert status == 426  # the daemon's answer to a request that lost its Upgrade in nginx
            answer(self.daemons["signature"], sid("g", i))
            status, _, _ = upgrade_request(
                self.daemons["signature"].port,
                headers={"Host": "voice.example.test", "X-Twilio-Signature": SignatureChecker("another-token").sign(STREAM)},
            )
            assert status == 403
            closed = self.daemons["closed"]
            answer(closed, sid("c", i), signed=False)
            with connect(f"ws://127.0.0.1:{closed.port}/twilio-media") as ws:
                ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))

    def stop(self):
        if self.nginx is not None:
            self.nginx.stop()
        for daemon in self.daemons.values():
            daemon.stop()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    site = Scenarios(tmp_path_factory.mktemp("streams"))
    yield site
    site.stop()


def episode(daemon: Daemon) -> dict:
    return daemon.wait_for(lambda e: e.get("event_name") == "service.streams_not_arriving", WAIT)


def test_nothing_reaching_the_endpoint_names_the_stream_host_and_the_probe(scenarios):
    daemon = scenarios.daemons["nothing"]
    error = episode(daemon)
    missing = daemon.named("call.stream_missing")
    assert [m["callSid"] for m in missing] == [sid("n", i) for i in range(3)]
    assert all(m["stream_url"] == STREAM and m["seen"] == "nothing" and m["waited"] >= 30 for m in missing)
    assert error["layer"] == "nothing-arrived" and "voice.example.test" in error["explanation"]
    assert error["probe"] == "TWILIO_AUTH_TOKEN=... voicebridge probe https://voice.example.test/voice"
    assert len(daemon.named("service.streams_not_arriving")) == 1

    # A stream that starts ends the episode.
    answer(daemon, sid("n", 9))
    with connect(
        f"ws://127.0.0.1:{daemon.port}/twilio-media",
        additional_headers={"X-Twilio-Signature": SIGNER.sign(STREAM)},
    ) as ws:
        ws.send(start_message(sid("n", 9)))
        arriving = daemon.wait_for(lambda e: e.get("event_name") == "service.streams_arriving", 10)
    assert arriving["callSid"] == sid("n", 9)
    _, _, body = request(daemon.port, "GET", "/metrics")
    text = body.decode()
    assert 'voicebridge_streams_missing_total{tenant="none"} 3.0' in text
    for stage, count in (("answered", 4), ("requested", 1), ("upgraded", 1), ("started", 1), ("missing", 3)):
        assert f'voicebridge_call_funnel_total{{stage="{stage}"}} {count}.0' in text, text


def test_a_proxy_stripping_the_upgrade_is_named_with_the_nginx_lines(scenarios):
    daemon = scenarios.daemons["stripped"]
    error = episode(daemon)
    assert error["layer"] == "upgrade-stripped"
    assert "proxy_set_header Upgrade $http_upgrade" in error["explanation"]
    assert all("without Upgrade" in m["seen"] for m in daemon.named("call.stream_missing"))


def test_refused_signatures_name_the_url_checked(scenarios):
    daemon = scenarios.daemons["signature"]
    error = episode(daemon)
    assert error["layer"] == "handshake-signature-invalid"
    assert STREAM in error["explanation"] and "--public-url" in error["explanation"]


def test_streams_closed_before_start(scenarios):
    daemon = scenarios.daemons["closed"]
    error = episode(daemon)
    assert error["layer"] == "closed-before-start"
    assert error["probe"].endswith("voicebridge probe http://127.0.0.1:%d/voice --local" % daemon.port)


def test_under_workers_a_stream_started_on_another_worker_is_not_missing(start_daemon):
    """The webhook and the stream land on either worker; a start on one frees the other's expectation."""
    daemon = start_daemon("--workers", "2", "--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})
    crossed = []
    for i in range(20):  # until one webhook and its stream landed on different workers (each does with p = 1/2)
        call_sid = sid("w", i)
        answer(daemon, call_sid)
        with connect(
            f"ws://127.0.0.1:{daemon.port}/twilio-media", additional_headers={"X-Twilio-Signature": SIGNER.sign(STREAM)}
        ) as ws:
            ws.send(start_message(call_sid))
            started = daemon.wait_for(lambda e, s=call_sid: e.get("event_name") == "call.started" and e.get("callSid") == s, 10)
        answered = daemon.wait_for(lambda e, s=call_sid: e.get("event_name") == "webhook.answered" and e.get("callSid") == s, 10)
        if answered["worker"] != started["worker"]:
            crossed.append(call_sid)
            break
    assert crossed, "twenty calls and never a stream on the other worker"
    # One more call, never streamed: its warning is the marker that every earlier lapse has been decided.
    answer(daemon, sid("w", 99))
    daemon.wait_for(lambda e: e.get("event_name") == "call.stream_missing", WAIT)
    assert [e["callSid"] for e in daemon.named("call.stream_missing")] == [sid("w", 99)]
