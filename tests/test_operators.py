"""What operators see on the daemon: /metrics, /readyz, /healthz and the start-up banner."""

from __future__ import annotations

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, threads

from tests import hostile
from tests.conftest import PUBLIC, TOKEN
from tests.fakes import new_call, registry
from tests.http import call_form, post_form, request, upgrade_request
from voicebridge.call.stats import CallTotals
from voicebridge.config.limits import Limits
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio import messages as m
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)
STREAM_URL = "wss://voice.example.test/twilio-media"
SID, CALL, ACC = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32

CONFIG = """
[default]
plan = "basic"

[tenants.business-1]
numbers = ["+15550100001"]

[tenants.business-2]
numbers = ["+15550100002"]
"""


def scrape(port: int) -> dict:
    """{(name, sorted labels): value} of one /metrics answer."""
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def tenant_daemon(start_daemon, tmp_path):
    config = tmp_path / "voicebridge.toml"
    config.write_text(CONFIG)
    return start_daemon("--public-url", PUBLIC, "--config", str(config), env={"TWILIO_AUTH_TOKEN": TOKEN})


@pytest_twisted.inlineCallbacks
def test_metrics_count_calls_refusals_media_and_webhooks(tenant_daemon):
    from twisted.internet import reactor

    port = tenant_daemon.port
    before = yield threads.deferToThread(scrape, port)
    assert value(before, "voicebridge_calls_active") == 0
    assert value(before, "voicebridge_build_info", version="0.1.0") == 1
    assert value(before, "voicebridge_draining") == 0
    assert ("process_cpu_seconds_total", ()) in before

    form = call_form(to="+15550100001")
    status, _, _ = yield threads.deferToThread(
        post_form, port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(PUBLIC + "/voice", form)}
    )
    assert status == 200
    yield threads.deferToThread(upgrade_request, port)  # unsigned: 403 signature-missing
    yield threads.deferToThread(request, port, "GET", "/twilio-media")  # no Upgrade: 426

    url = tenant_daemon.url("/twilio-media", "ws")
    signature = SIGNER.sign(STREAM_URL)
    short = [
        play_call(reactor, url, CallScript(frames=10, custom_parameters={"businessId": "business-1"}), signature)
        for _ in range(3)
    ]
    yield defer.gatherResults(short)
    yield tenant_daemon.wait_for_async(reactor, lambda e: len(tenant_daemon.named("call.ended")) >= 3)
    # One call stays open while /metrics is scraped: 100 of its frames in and echoed, then the scrape.
    long_call = yield threads.deferToThread(hostile.RawStream, port, headers={"X-Twilio-Signature": signature})
    assert long_call.status == 101, long_call.response
    yield threads.deferToThread(media_echoed, long_call, 0, 100, start={"businessId": "business-2"})
    during = yield threads.deferToThread(scrape, port)
    assert value(during, "voicebridge_calls_active") == 1
    assert value(during, "voicebridge_calls_active_by_tenant", tenant="business-2") == 1
    assert value(during, "voicebridge_calls_total", tenant="business-1", outcome="stop") == 3
    live_frames = value(during, "voicebridge_media_frames_total", direction="in")
    assert live_frames == 30 + 100, "the live call's frames are counted while it goes on"

    yield threads.deferToThread(media_echoed, long_call, 100, 150, stop=True)
    yield tenant_daemon.wait_for_async(reactor, lambda e: len(tenant_daemon.named("call.ended")) >= 4)
    after = yield threads.deferToThread(scrape, port)
    assert value(after, "voicebridge_calls_active") == 0
    assert value(after, "voicebridge_calls_total", tenant="business-2", outcome="stop") == 1
    assert value(after, "voicebridge_media_frames_total", direction="in") == 280 >= live_frames, "counters only go up"
    assert value(after, "voicebridge_media_frames_total", direction="out") == 280
    assert value(after, "voicebridge_media_bytes_total", direction="in") == 280 * 160
    assert value(after, "voicebridge_handshake_refusals_total", reason="signature-missing") == 1
    assert value(after, "voicebridge_handshake_refusals_total", reason="upgrade-missing") == 1
    assert value(after, "voicebridge_call_duration_seconds_count") == 4
    assert value(after, "voicebridge_call_duration_seconds_bucket", le="+Inf") == 4
    assert value(after, "voicebridge_webhook_seconds_count", status="200") == 1
    assert value(after, "voicebridge_calls_dropped_total", tenant="business-1") == 0


def media_echoed(stream, first: int, count: int, start: dict | None = None, stop: bool = False) -> None:
    """On a raw stream (blocking): ``start`` first if given, then ``count`` media frames, each echoed before the next."""
    if start is not None:
        stream.text(m.twilio_connected())
        stream.text(m.twilio_start(SID, CALL, ACC, start))
    for i in range(first, first + count):
        stream.text(m.twilio_media(SID, bytes([i % 256]) * 160, i + 1, i * 20, i + 3))
        opcode, echo = stream.next_message()
        assert m.parse_outbound(echo).payload == bytes([i % 256]) * 160
    if stop:
        stream.text(m.twilio_stop(SID, CALL, ACC, first + count + 3))
        assert stream.until_close(10)[0] == 1000
        stream.sock.close()


def test_call_totals_keep_outcomes_drops_errors_and_durations():
    reg, clock = registry(limits=Limits(idle_timeout=3600))  # a 42 s silence is this test's, not a timeout
    stopped, link = new_call(reg)
    stopped.text_received(m.twilio_start(SID, CALL, ACC, {}))
    clock.advance(42)
    stopped.text_received(m.twilio_media(SID, b"\xff" * 160, 1, 0, 2))
    stopped.text_received(b"{oops")
    stopped.text_received(m.twilio_stop(SID, CALL, ACC, 3))
    dropped, link = new_call(reg)
    dropped.text_received(m.twilio_start("MZ" + "9" * 32, CALL, ACC, {}))
    dropped.connection_lost(1006, "gone")
    never, link = new_call(reg)
    never.connection_lost(1000, None)
    totals: CallTotals = reg.totals
    assert totals.calls == {("none", "stop"): 1, ("none", "closed"): 1, ("none", "no-start"): 1}
    assert totals.dropped == {"none": 1}
    assert totals.errors == {"invalid-json": 1}
    assert (totals.frames_in, totals.frames_out, totals.bytes_in) == (1, 1, 160)
    assert dict(totals.durations)[60.0] == 2 and dict(totals.durations)[30.0] == 1
    assert totals.duration_sum == 42


@pytest_twisted.inlineCallbacks
def test_readyz_answers_503_while_draining_and_healthz_stays_200():
    from twisted.internet import reactor

    from voicebridge.web.admission import Admission
    from voicebridge.web.publicurl import PublicURLs, TrustedProxies
    from voicebridge.web.site import build_site

    reg, _ = registry()
    site = build_site(reg.settings, reg, Admission(reg.settings), PublicURLs(None, TrustedProxies()))
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    port = listening.getHost().port
    try:
        ready = yield threads.deferToThread(request, port, "GET", "/readyz")
        reg.draining = True
        draining = yield threads.deferToThread(request, port, "GET", "/readyz")
        health = yield threads.deferToThread(request, port, "GET", "/healthz")
        metrics = yield threads.deferToThread(scrape, port)
    finally:
        yield listening.stopListening()
    assert (ready[0], ready[2]) == (200, b"ready\n")
    assert (draining[0], draining[2]) == (503, b"draining\n")
    assert health[0] == 200
    assert value(metrics, "voicebridge_draining") == 1


def test_banner_names_everything_an_operator_checks(tenant_daemon):
    banner = tenant_daemon.named("service.listening")[0]
    assert banner["addresses"] == f"tcp 127.0.0.1:{tenant_daemon.port}"
    assert banner["public_url"] == PUBLIC
    assert banner["stream_url"] == STREAM_URL
    assert banner["signatures"] == "enforced"
    assert banner["handler"] == "echo"
    assert banner["tenants"] == "business-1, business-2"
    assert not tenant_daemon.named("service.development_mode")


def test_banner_with_a_path_prefix_and_without_a_public_url(start_daemon):
    prefixed = start_daemon("--public-url", "https://example.test/vb", env={"TWILIO_AUTH_TOKEN": TOKEN})
    banner = prefixed.named("service.listening")[0]
    assert banner["stream_url"] == "wss://example.test/vb/twilio-media"
    derived = start_daemon()
    banner = derived.named("service.listening")[0]
    assert banner["public_url"] == "not set"
    assert banner["stream_url"].startswith("derived per request from Host")
    assert banner["tenants"] == "none"
    assert banner["signatures"].startswith("NOT CHECKED")


def test_unknown_paths_are_marked_as_voicebridge_404s(start_daemon):
    daemon = start_daemon()
    status, headers, body = request(daemon.port, "GET", "/twilio-media-elsewhere")
    assert status == 404
    assert headers["x-voicebridge-diagnosis"] == "not-found"
    assert b"/metrics" in body
