"""The small things an operator reads (issue 14, part 3): the load test's report, the access log
behind a trusted proxy, the drain's duration. Real daemons on loopback; pure helpers without."""

from __future__ import annotations

import signal

from tests.conftest import PUBLIC, TOKEN
from tests.http import call_form, post_form
from tests.test_loadtest import loadtest
from voicebridge.tools.loadtest import _ms, failure_hints, generator_warnings


def test_unsigned_load_gets_a_hint_and_no_none_figures(start_daemon):
    daemon = start_daemon("--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})
    done = loadtest(daemon.url("/twilio-media", "ws"), "--calls", "2", "--duration", "0.5")
    assert done.returncode == 1
    assert "None" not in done.stdout, done.stdout
    assert "round trip   no samples" in done.stdout and "handshake    no samples" in done.stdout
    assert "hint         http-403" in done.stdout and "TWILIO_AUTH_TOKEN" in done.stdout


def test_the_generator_warning_says_which_limit():
    assert generator_warnings(0.17, 3.0) == []
    [busy] = generator_warnings(0.17, 40.0)
    assert "busy" in busy and "17%" in busy and "near its limit" not in busy
    [limit] = generator_warnings(0.95, 40.0)
    assert "near its limit" in limit
    assert _ms({"p50": None, "p99": None, "max": None, "samples": 0}) == "no samples"
    assert _ms({"p50": 1.0, "p99": 2.0, "max": 3.0, "samples": 5}) == "p50 1.0 ms, p99 2.0 ms, max 3.0 ms"
    assert failure_hints({"closed-before-response": 2}) == []


def test_behind_a_trusted_proxy_the_access_log_names_the_caller_as_the_refusal_does(start_daemon):
    daemon = start_daemon("--public-url", PUBLIC, "--trusted-proxy", "127.0.0.1", env={"TWILIO_AUTH_TOKEN": TOKEN})
    status, _, _ = post_form(daemon.port, "/voice", call_form(), {"X-Forwarded-For": "203.0.113.9"})
    assert status == 403
    refused = daemon.wait_for(lambda e: e.get("event_name") == "webhook.refused")
    access = daemon.wait_for(lambda e: e.get("event_name") == "http.access" and e.get("uri") == "/voice")
    assert refused["client"] == access["client"] == "203.0.113.9"
    assert access["peer"] == "127.0.0.1"


def test_the_drain_duration_is_rounded(start_daemon):
    daemon = start_daemon()
    daemon.signal(signal.SIGTERM)
    drained = daemon.wait_for(lambda e: e.get("event_name") == "service.drained")
    assert drained["duration"] == round(drained["duration"], 3)
    assert "e-" not in str(drained["duration"]) and len(str(drained["duration"]).split(".")[-1]) <= 3
