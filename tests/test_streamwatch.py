"""Missing streams and their episodes, decided without a reactor (voicebridge/call/streamwatch.py)."""

from __future__ import annotations

from voicebridge.call import streamwatch as sw
from voicebridge.call.streamwatch import StreamWatch

URL = "wss://voice.example.test/twilio-media"


def names(events):
    return [e.name for e in events]


def test_a_call_whose_stream_starts_is_not_missing():
    watch = StreamWatch(30)
    watch.answered("CA1", "t1", URL, now=0)
    watch.saw(sw.REQUEST)
    watch.saw(sw.ACCEPTED)
    assert watch.started("CA1") == []
    assert watch.due(100) == []
    assert watch.funnel() == {"answered": 1, "requested": 1, "upgraded": 1, "started": 0, "missing": 0}


def test_a_lapsed_call_is_one_warning_with_what_the_endpoint_saw_meanwhile():
    watch = StreamWatch(30)
    watch.saw(sw.REQUEST)  # before the answer: not this call's
    watch.answered("CA1", "t1", URL, now=10)
    assert watch.next_due() == 40
    assert watch.due(39.9) == []
    watch.saw(sw.REQUEST)
    watch.saw(sw.NO_UPGRADE)
    [event] = watch.due(40)
    assert event.name == "call.stream_missing" and event.level == "warn"
    assert event.fields["callSid"] == "CA1" and event.fields["stream_url"] == URL
    assert event.fields["waited"] == 30 and event.fields["seen"] == "1 request(s) (1 without Upgrade)"
    assert watch.missing_by_tenant == {"t1": 1}


def test_three_in_a_row_is_one_episode_then_a_start_ends_it():
    watch = StreamWatch(30)
    for i in range(5):
        watch.answered(f"CA{i}", None, URL, now=i)
    events = watch.due(100)
    assert names(events) == ["call.stream_missing"] * 3 + ["service.streams_not_arriving"] + ["call.stream_missing"] * 2
    error = events[3]
    assert error.level == "error" and error.fields["layer"] == "nothing-arrived"
    assert "voice.example.test" in error.fields["explanation"]
    assert error.fields["probe"] == "TWILIO_AUTH_TOKEN=... voicebridge probe https://voice.example.test/voice"
    watch.answered("CA9", None, URL, now=101)
    assert names(watch.started("CA9")) == ["service.streams_arriving"]
    assert watch.started("CA9") == []  # once


def test_most_calls_in_the_window_missing_is_an_episode_without_a_streak():
    watch = StreamWatch(30)
    outcomes = [False, True, False, True, False]  # never three in a row; 3 of 5 missing
    events = []
    for i, came in enumerate(outcomes):
        watch.answered(f"CA{i}", None, URL, now=i * 100)
        if came:
            events += watch.started(f"CA{i}")
        events += watch.due(i * 100 + 31)
    assert names(events).count("service.streams_not_arriving") == 1
    assert names(events)[-1] == "service.streams_not_arriving"


def test_a_few_lost_among_many_good_calls_is_no_episode():
    watch = StreamWatch(30)
    events = []
    for i in range(20):
        watch.answered(f"CA{i}", None, URL, now=i * 100)
        if i % 4:
            events += watch.started(f"CA{i}")
        events += watch.due(i * 100 + 31)
    assert "service.streams_not_arriving" not in names(events)


def episode(*seen, details=None):
    watch = StreamWatch(30)
    for i in range(3):
        watch.answered(f"CA{i}", None, URL, now=i)
    for kind in seen:
        watch.saw(*kind)
    for key, text in (details or {}).items():
        watch.details[key] = text
    return next(e for e in watch.due(100) if e.name == "service.streams_not_arriving").fields


def test_the_layer_is_named_from_what_reached_the_endpoint():
    stripped = episode((sw.REQUEST,), (sw.NO_UPGRADE,))
    assert stripped["layer"] == "upgrade-stripped" and "proxy_set_header Upgrade $http_upgrade" in stripped["explanation"]
    assert "X-Forwarded-Proto $scheme" in stripped["explanation"]
    signature = episode((sw.REQUEST,), (sw.REFUSED, "signature-invalid", "matches none of wss://x/twilio-media"))
    assert signature["layer"] == "handshake-signature-invalid"
    assert "wss://x/twilio-media" in signature["explanation"] and URL in signature["explanation"]
    full = episode((sw.REQUEST,), (sw.REFUSED, "over-capacity", "limit of 2 calls"))
    assert full["layer"] == "handshake-over-capacity" and "--max-calls" in full["explanation"]
    draining = episode((sw.REQUEST,), (sw.REFUSED, "draining", "draining"))
    assert draining["layer"] == "handshake-draining" and "ready" in draining["explanation"]
    closed = episode((sw.REQUEST,), (sw.ACCEPTED,), (sw.CLOSED_BEFORE_START,))
    assert closed["layer"] == "closed-before-start"
    assert episode()["layer"] == "nothing-arrived"


def test_calls_without_a_callsid_are_counted_but_not_awaited():
    watch = StreamWatch(30)
    watch.answered(None, None, URL, now=0)
    assert watch.next_due() is None and watch.funnel()["answered"] == 1


def test_pending_calls_are_bounded():
    watch = StreamWatch(30)
    for i in range(sw.MAX_PENDING + 50):
        watch.answered(f"CA{i}", None, URL, now=0)
    assert len(watch.pending) == sw.MAX_PENDING


def test_the_probe_command_names_the_daemons_public_webhook():
    assert (
        sw.probe_command("wss://h.example/vb/twilio-media")
        == "TWILIO_AUTH_TOKEN=... voicebridge probe https://h.example/vb/voice"
    )
    assert sw.probe_command("ws://127.0.0.1:8080/twilio-media").endswith("probe http://127.0.0.1:8080/voice --local")


def test_a_refused_upgrade_outranks_plain_gets_and_a_rewritten_connection_is_stripping():
    mixed = episode((sw.REQUEST,), (sw.NO_UPGRADE,), (sw.REFUSED, "signature-invalid", "matches none of wss://i/twilio-media"))
    assert mixed["layer"] == "handshake-signature-invalid"  # the upgrade headers pass; the plain GET was someone else's
    rewritten = episode((sw.REQUEST,), (sw.REFUSED, "connection-upgrade-missing", "Connection: close"))
    assert rewritten["layer"] == "upgrade-stripped"
    wrong_method = episode((sw.REQUEST,), (sw.REFUSED, "method-not-allowed", "POST"))
    assert wrong_method["layer"] == "streams-lost"


def test_the_rules_are_pure_and_the_webhook_imports_no_tool():
    import subprocess
    import sys

    from tests.daemon import REPO, source_env

    pure = (
        "import sys, importlib\n"
        "for name in ('voicebridge.twilio.urls', 'voicebridge.call.streamwatch', 'voicebridge.tools.diagnosis'):\n"
        "    importlib.import_module(name)\n"
        "assert 'twisted' not in sys.modules, 'pure modules imported Twisted'\n"
    )
    daemon = (
        "import sys, voicebridge.web.webhook, voicebridge.web.site, voicebridge.daemon.tap\n"
        "assert not [m for m in sys.modules if m.startswith('voicebridge.tools')], 'the daemon imported a tool'\n"
    )
    for code in (pure, daemon):
        out = subprocess.run([sys.executable, "-c", code], env=source_env(), cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def test_a_long_callsid_is_kept_bounded_and_still_matched():
    watch = StreamWatch(30)
    long_sid = "CA" + "x" * 5000
    watch.answered(long_sid, None, URL, now=0)
    assert all(len(sid) <= sw.MAX_SID for sid in watch.pending)
    watch.started(long_sid)
    assert watch.due(100) == []


def test_the_log_escapes_the_peers_callsid():
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from voicebridge.call.streamlog import WatchedStreams

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        clock = Clock()
        streams = WatchedStreams(clock, wait=30)
        streams.answered("CA1\nforged line", None, URL)
        clock.advance(31)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    [event] = [e for e in seen if e.get("event_name") == "call.stream_missing"]
    assert "\n" not in event["callSid"] and event["waited"] >= 30


def test_nothing_arriving_at_a_stream_url_twilio_cannot_open_says_why():
    watch = StreamWatch(30)
    for i in range(3):
        watch.answered(f"CA{i}", None, "ws://127.0.0.1:8080/twilio-media", now=i)
    error = next(e for e in watch.due(100) if e.name == "service.streams_not_arriving").fields
    assert error["layer"] == "nothing-arrived"
    assert "31922" in error["explanation"] and "loopback" in error["explanation"] and "--public-url" in error["explanation"]
