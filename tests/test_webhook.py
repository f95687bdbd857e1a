"""The voice webhook and the ``<Connect action>`` as Twilio sends them, POST or GET, against a real daemon."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest

from tests import hostile
from tests.conftest import PUBLIC, TOKEN
from tests.http import call_form, post_form, request
from tests.test_operators import scrape, value
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)

CONFIG = """
[tenants.business-1]
numbers = ["+15550100001"]
plan = "pro"
max_calls = 1
"""


@pytest.fixture
def daemon(start_daemon, tmp_path):
    config = tmp_path / "vb.toml"
    config.write_text(CONFIG)
    return start_daemon("--public-url", PUBLIC, "--config", str(config), env={"TWILIO_AUTH_TOKEN": TOKEN})


def signed_get(daemon, path: str):
    return request(daemon.port, "GET", path, headers={"X-Twilio-Signature": SIGNER.sign(PUBLIC + path)})


def parameters_of(body: bytes) -> dict:
    stream = ET.fromstring(body).find("./Connect/Stream")
    assert stream is not None, body
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def get_path(call_sid: str, to: str = "+15550100001", **extra) -> str:
    form = dict(call_form(call_sid=call_sid, to=to))
    return "/voice?" + urlencode({**extra, **form})


def test_a_get_webhook_keeps_the_calls_context(daemon):
    """Twilio's fields come in the query: the tenant, the parameters and the reservation all see them."""
    call_sid = "CA" + "6" * 32
    status, _, body = signed_get(daemon, get_path(call_sid, campaign="spring"))
    assert status == 200, body
    assert parameters_of(body) == {
        "businessId": "business-1",  # the tenant that owns To
        "plan": "pro",
        "to": "+15550100001",
        "from": "+15557654321",
        "callSid": call_sid,
        "campaign": "spring",  # the webhook URL's own parameter; none of Twilio's fields twice
    }
    answered = daemon.wait_for(lambda e: e.get("event_name") == "webhook.answered")
    assert (answered["callSid"], answered["tenant"], answered["to"], answered["status"]) == (
        call_sid,
        "business-1",
        "+1555*****01",
        "ringing",
    )
    # The tenant allows one call: it is reserved for this CallSid, so another call is busy and a retry is not.
    assert ET.fromstring(signed_get(daemon, get_path("CA" + "7" * 32))[2]).find("./Reject").get("reason") == "busy"
    assert parameters_of(signed_get(daemon, get_path(call_sid))[2])["callSid"] == call_sid
    busy = daemon.wait_for(lambda e: e.get("event_name") == "webhook.busy")
    assert busy["callSid"] == "CA" + "7" * 32


def test_a_get_webhook_is_signed_over_the_url_alone(daemon):
    path = get_path("CA" + "8" * 32)
    forged = request(daemon.port, "GET", path, headers={"X-Twilio-Signature": SIGNER.sign(PUBLIC + path, [("To", "x")])})
    assert forged[0] == 403
    refused = daemon.wait_for(lambda e: e.get("event_name") == "webhook.refused")
    assert refused["callSid"] == "CA" + "8" * 32 and refused["reason"] == "signature-invalid"
    assert "+15557654321" not in daemon.output and "%2B15557654321" not in daemon.output, "numbers masked in the URL"


REFUSALS = {
    # name: (raw request, status, reason, callSid in the log)
    "bad-form": (
        b"POST /voice HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b'Content-Length: 17\r\n\r\n{"CallSid":"CA1"}',
        415,
        "bad-form",
        "-",
    ),
    "too-many-fields": (
        b"GET /voice?CallSid=CA2&" + b"&".join(b"f%d=" % i for i in range(600)) + b" HTTP/1.1\r\nHost: h\r\n"
        b"Connection: close\r\n\r\n",
        400,
        "too-many-fields",
        "-",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unreadable_webhooks_are_refused_logged_and_counted(daemon, case):
    raw, status, reason, call_sid = REFUSALS[case]
    answer = hostile.exchange(daemon.port, raw)
    assert hostile.status_of(answer) == status and b"X-Voicebridge-Diagnosis: " + reason.encode() in answer
    refused = daemon.wait_for(lambda e: e.get("event_name") == "webhook.refused")
    assert (refused["status"], refused["reason"], refused["callSid"]) == (status, reason, call_sid)
    assert value(scrape(daemon.port), "voicebridge_webhook_refusals_total", endpoint="voice", reason=reason) == 1


def test_a_bad_host_is_refused_with_the_callsid(start_daemon):
    daemon = start_daemon(env={"TWILIO_AUTH_TOKEN": TOKEN})  # no --public-url: the URL comes from Host
    raw = b"GET /voice?CallSid=CA3 HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"
    assert hostile.status_of(hostile.exchange(daemon.port, raw)) == 400
    refused = daemon.wait_for(lambda e: e.get("event_name") == "webhook.refused")
    assert (refused["reason"], refused["callSid"]) == ("bad-host", "CA3")
    assert value(scrape(daemon.port), "voicebridge_webhook_refusals_total", endpoint="voice", reason="bad-host") == 1


def test_connect_action_has_its_own_refusal_event_and_answers_get(daemon):
    action = call_form(call_sid="CA" + "9" * 32, CallStatus="in-progress")
    status, _, _ = post_form(daemon.port, "/connect-action", action, {"X-Twilio-Signature": "forged"})
    assert status == 403
    refused = daemon.wait_for(lambda e: e.get("event_name") == "connect_action.refused")
    assert (refused["callSid"], refused["reason"]) == ("CA" + "9" * 32, "signature-invalid")
    assert not daemon.named("webhook.refused")
    samples = scrape(daemon.port)
    assert value(samples, "voicebridge_webhook_refusals_total", endpoint="connect-action", reason="signature-invalid") == 1
    # <Connect method="GET">: the fields in the query, the signature over the URL alone.
    path = "/connect-action?" + urlencode(action)
    status, _, body = request(daemon.port, "GET", path, headers={"X-Twilio-Signature": SIGNER.sign(PUBLIC + path)})
    assert status == 200 and [child.tag for child in ET.fromstring(body)] == ["Hangup"]
    after = daemon.wait_for(lambda e: e.get("event_name") == "call.after_stream")
    assert after["callSid"] == "CA" + "9" * 32


@pytest.mark.parametrize(
    "public, kinds",
    [
        ("https://voice.example.test:8443", ["port"]),
        ("https://10.0.0.7", ["host"]),
        ("http://voice.example.test", ["scheme"]),
        (PUBLIC, []),
    ],
)
def test_the_webhook_warns_about_stream_urls_as_the_probe_judges_them(start_daemon, public, kinds):
    daemon = start_daemon("--public-url", public, env={"TWILIO_AUTH_TOKEN": TOKEN})
    form = call_form()
    url = public + "/voice"
    for _ in range(2):
        assert post_form(daemon.port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(url, form)})[0] == 200
    daemon.wait_for(lambda e: e.get("event_name") == "webhook.answered")
    warned = daemon.named("webhook.stream_url")
    assert [e["kind"] for e in warned] == kinds, "each problem once per url"
