"""The foundation end to end: a real ``twist voicebridge`` process, real sockets, Twilio played by the test."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.conftest import PUBLIC, TOKEN
from tests.http import call_form, post_form, request, upgrade_request
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)
STREAM_URL = "wss://voice.example.test/twilio-media"


def stream_of(twiml: bytes):
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


@pytest.fixture
def signed_daemon(start_daemon):
    return start_daemon("--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})


def test_signed_webhook_answers_stream_url_without_query_and_business_parameter(signed_daemon):
    form = call_form()
    url = f"{PUBLIC}/voice?businessId=business-1"
    status, headers, body = post_form(
        signed_daemon.port, "/voice?businessId=business-1", form, {"X-Twilio-Signature": SIGNER.sign(url, form)}
    )
    assert status == 200, body
    assert headers["content-type"].startswith("text/xml")
    stream_url, params = stream_of(body)
    assert stream_url == STREAM_URL
    assert b'<Parameter name="businessId" value="business-1" />' in body
    assert params == {
        "businessId": "business-1",
        "to": "+15550100001",
        "from": "+15557654321",
        "callSid": "CA" + "1" * 32,
    }
    event = signed_daemon.wait_for(lambda e: e.get("event_name") == "webhook.answered")
    assert event["callSid"] == "CA" + "1" * 32
    assert event["stream_url"] == STREAM_URL
    # Phone numbers are masked in the log by default.
    assert event["from_"] == "+1555*****21"
    assert "+15557654321" not in signed_daemon.output


def test_webhook_passes_plan_and_other_context_as_parameters(signed_daemon):
    form = call_form()
    path = "/voice?businessId=b-7&plan=pro&campaign=spring"
    status, _, body = post_form(signed_daemon.port, path, form, {"X-Twilio-Signature": SIGNER.sign(PUBLIC + path, form)})
    assert status == 200, body
    stream_url, params = stream_of(body)
    assert stream_url == STREAM_URL and "?" not in stream_url
    assert params["plan"] == "pro" and params["campaign"] == "spring" and params["businessId"] == "b-7"


@pytest.mark.parametrize(
    "case",
    ["unsigned", "wrong-token", "tampered-param", "other-url"],
)
def test_webhook_refuses_bad_signatures(signed_daemon, case):
    form = call_form()
    url = f"{PUBLIC}/voice?businessId=business-1"
    signature = {
        "unsigned": None,
        "wrong-token": SignatureChecker("another-token").sign(url, form),
        "tampered-param": SIGNER.sign(url, form),
        "other-url": SIGNER.sign(f"{PUBLIC}/voice?businessId=business-2", form),
    }[case]
    if case == "tampered-param":
        form = [(k, "+15550000000" if k == "From" else v) for k, v in form]
    headers = {"X-Twilio-Signature": signature} if signature else {}
    status, headers, body = post_form(signed_daemon.port, "/voice?businessId=business-1", form, headers)
    assert status == 403
    assert b"<Response>" not in body
    event = signed_daemon.wait_for(lambda e: e.get("event_name") == "webhook.refused")
    assert url in event["message"], "the log names the URL that was checked"
    assert TOKEN not in signed_daemon.output


def test_webhook_get_is_signed_over_the_url_alone(signed_daemon):
    path = "/voice?businessId=business-1&CallSid=CA9"
    status, _, body = request(signed_daemon.port, "GET", path, headers={"X-Twilio-Signature": SIGNER.sign(PUBLIC + path)})
    assert status == 200, body
    assert stream_of(body)[0] == STREAM_URL


def test_webhook_rejects_non_form_body_precisely(signed_daemon):
    status, headers, body = request(
        signed_daemon.port, "POST", "/voice", b'{"CallSid": "CA1"}', {"Content-Type": "application/json"}
    )
    assert status == 415
    assert b"application/x-www-form-urlencoded" in body


def test_stream_without_upgrade_gets_426_diagnosis(signed_daemon):
    status, headers, body = request(signed_daemon.port, "GET", "/twilio-media", headers={"Connection": "close"})
    assert status == 426
    assert headers["x-voicebridge-diagnosis"] == "upgrade-missing"
    assert b"proxy" in body and b"proxy_set_header Upgrade" in body
    event = signed_daemon.wait_for(lambda e: e.get("event_name") == "stream.upgrade_missing")
    assert event["level"] == "warn"
    request_event = signed_daemon.wait_for(lambda e: e.get("event_name") == "stream.request")
    assert request_event["upgrade"] == "-" and request_event["connection"] == "close"


def test_stream_with_upgrade_but_connection_rewritten(signed_daemon):
    status, headers, _ = upgrade_request(signed_daemon.port, headers={"Connection": "close"})
    assert status == 426
    assert headers["x-voicebridge-diagnosis"] == "connection-upgrade-missing"


@pytest.mark.parametrize("signature", [None, "bm90IGEgc2lnbmF0dXJl", "other-url"])
def test_unsigned_or_forged_handshake_gets_403(signed_daemon, signature):
    if signature == "other-url":
        signature = SIGNER.sign("wss://elsewhere.example.test/twilio-media")
    headers = {"X-Twilio-Signature": signature} if signature else {}
    status, headers, body = upgrade_request(signed_daemon.port, headers=headers)
    assert status == 403
    event = signed_daemon.wait_for(lambda e: e.get("event_name") == "handshake.refused")
    assert STREAM_URL in event["message"]


@pytest.mark.parametrize("url", [STREAM_URL, STREAM_URL + "/"])
def test_signed_handshake_is_accepted_with_and_without_trailing_slash(signed_daemon, url):
    status, headers, _ = upgrade_request(signed_daemon.port, headers={"X-Twilio-Signature": SIGNER.sign(url)})
    assert status == 101


def test_healthz_and_readyz(signed_daemon):
    assert request(signed_daemon.port, "GET", "/healthz")[0] == 200
    assert request(signed_daemon.port, "GET", "/readyz")[0] == 200
    assert request(signed_daemon.port, "GET", "/nothing-here")[0] == 404


@pytest_twisted.inlineCallbacks
def test_twenty_concurrent_signed_calls_are_echoed_frame_for_frame(signed_daemon):
    from twisted.internet import reactor

    url = signed_daemon.url("/twilio-media", "ws")
    scripts = [
        CallScript(frames=100, custom_parameters={"businessId": f"business-{i}", "callSid": f"CA{i}"}, dtmf="1#", marks=("m1",))
        for i in range(20)
    ]
    calls = [play_call(reactor, url, script, signature=SIGNER.sign(STREAM_URL)) for script in scripts]
    unsigned = play_call(reactor, url, CallScript(frames=5))
    outcomes = yield defer.gatherResults(calls + [unsigned]).addTimeout(60, reactor)
    *signed, refused = outcomes
    for outcome in signed:
        assert outcome.opened
        assert len(outcome.sent) == 100
        assert outcome.received == outcome.sent, "every frame echoed, unchanged and in order"
        assert outcome.close_code == 1000 and outcome.closed_by_server
        assert outcome.foreign == []
    assert not refused.opened and refused.received == []
    ended = yield signed_daemon.wait_for_async(reactor, lambda e: len(signed_daemon.named("call.ended")) >= 20, 10)
    assert ended
    ends = {e["callSid"]: e for e in signed_daemon.named("call.ended")}
    for script in scripts:
        end = ends[script.call_sid]
        assert (end["frames_in"], end["frames_out"], end["reason"], end["close_code"]) == (100, 100, "stop", 1000)
    starts = {e["callSid"]: e for e in signed_daemon.named("call.started")}
    assert starts[scripts[3].call_sid]["parameters"]["businessId"] == "business-3"
    assert len(signed_daemon.named("call.dtmf")) == 40
    refusals = [e for e in signed_daemon.named("handshake.refused") if e.get("reason") == "signature-missing"]
    assert len(refusals) == 1


@pytest_twisted.inlineCallbacks
def test_stream_query_string_is_merged_with_a_warning(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon()  # development mode: loopback, unsigned
    url = daemon.url("/twilio-media?businessId=b-q&plan=gold", "ws")
    outcome = yield play_call(reactor, url, CallScript(frames=3, custom_parameters={"plan": "basic"}))
    assert outcome.received == outcome.sent
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.ended")
    started = daemon.named("call.started")[0]
    assert started["parameters"]["businessId"] == "b-q"
    assert started["parameters"]["plan"] == "basic", "Twilio's customParameters win over the url's query"
    warning = daemon.named("stream.query_string")[0]
    assert "31920" in warning["message"]


def test_development_mode_is_announced_and_serves_loopback(start_daemon):
    daemon = start_daemon()
    assert daemon.named("service.development_mode")
    listening = daemon.named("service.listening")[0]
    assert listening["signatures"].startswith("NOT CHECKED")
    status, _, body = post_form(daemon.port, "/voice", call_form())
    assert status == 200
    assert stream_of(body)[0] == f"ws://127.0.0.1:{daemon.port}/twilio-media"


def test_twistd_runs_the_same_plugin(start_daemon):
    from tests.daemon import twist_command

    twistd = twist_command()[0].replace("twist", "twistd") if twist_command()[0].endswith("twist") else None
    command = [twistd] if twistd else [__import__("sys").executable, "-c", "from twisted.scripts.twistd import run; run()"]
    daemon = start_daemon(command=[*command, "-n", "--pidfile=", "voicebridge"])
    assert request(daemon.port, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--public-url", "voice.example.com"], "must be an http(s):// URL"),
        (["--handler", "nope"], "no handler named 'nope'"),
        (["--auth-token", "secret-value-123"], "never a command-line flag"),
        (["--trusted-proxy", "not-an-ip"], "not an IP address or CIDR"),
    ],
)
def test_bad_options_fail_with_a_clear_message(args, expected):
    from tests.daemon import usage_error

    message = usage_error(args)
    assert expected in message and "secret-value-123" not in message


def test_a_refused_option_stops_the_process_with_the_message_and_no_secret():
    """The parser's refusals (tested in-process above) reach the operator: one real process."""
    from tests.daemon import Daemon

    daemon = Daemon(["--auth-token", "secret-value-123"])
    daemon.start(wait=False)
    assert daemon.wait_exit(30) != 0
    assert "never a command-line flag" in daemon.output and "secret-value-123" not in daemon.output


def test_port_from_environment(start_daemon, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    daemon = start_daemon("--listen", f"tcp:{free}:interface=127.0.0.1", env={"PORT": "1"})
    assert daemon.port == free
    from tests.daemon import usage_error

    monkeypatch.setenv("PORT", "http")
    assert "PORT='http' is not a TCP port number" in usage_error([])
