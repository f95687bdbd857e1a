"""A Call's life and rules, driven with a fake link and a fake clock: no reactor, no sockets."""

import pytest

from tests.fakes import FakeLink, captured_log, new_call, registry
from voicebridge.config.file import parse_config
from voicebridge.handlers import Handler
from voicebridge.twilio import messages as m

SID, CALL, ACC = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32


def start(call, params=None):
    call.text_received(m.twilio_start(SID, CALL, ACC, params or {}))


def test_life_of_a_call_with_the_echo_handler():
    reg, clock = registry()
    call, link = new_call(reg)
    assert call.state == "handshake" and reg.active == 1
    call.text_received(m.twilio_connected())
    start(call, {"businessId": "b1"})
    assert call.state == "started" and call.handler_name == "echo" and call.parameters == {"businessId": "b1"}
    for i in range(3):
        clock.advance(0.02)
        call.text_received(m.twilio_media(SID, bytes([i]) * 160, i + 1, i * 20, i + 3))
    assert [msg.payload for msg in link.sent] == [bytes([i]) * 160 for i in range(3)]
    assert all(msg.stream_sid == SID for msg in link.sent)
    call.text_received(m.twilio_stop(SID, CALL, ACC, 9))
    assert link.closed == (1000, "stream stopped")
    assert call.state == "stopped" and reg.active == 0
    assert (call.frames_in, call.frames_out, call.end_reason) == (3, 3, "stop")
    assert call.finished.called


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([b"{oops"], "invalid-json"),
        ([b"[]"], "not-object"),
        ([m.twilio_media(SID, b"x", 1, 0, 1)], "media-before-start"),
        (["start", m.twilio_media("MZother", b"x", 1, 0, 2)], "foreign-stream-sid"),
        (["start", b'{"event":"media","streamSid":"%s","media":{"payload":"%%%%"}}' % SID.encode()], "bad-base64"),
        (["start", b'{"event":"whatever","streamSid":"x"}'], "unknown-event"),
        (["start", "start"], "duplicate-start"),
    ],
)
def test_protocol_errors_are_counted_and_never_raise(frames, reason):
    reg, _ = registry()
    call, link = new_call(reg)
    for frame in frames:
        if frame == "start":
            start(call)
        else:
            call.text_received(frame)
    assert call.errors[reason] == 1
    assert link.closed is None, "a bad frame does not end the call"


def test_repeated_errors_are_counted_each_time():
    reg, _ = registry()
    call, _ = new_call(reg)
    for _ in range(5):
        call.text_received(b"nope")
    assert call.errors["invalid-json"] == 5


def test_binary_frames_close_with_1003():
    reg, _ = registry()
    call, link = new_call(reg)
    call.binary_received(10)
    assert link.closed[0] == 1003 and call.errors["binary-frame"] == 1


def test_query_parameters_merge_under_custom_parameters():
    reg, _ = registry()
    call, _ = new_call(reg, {"businessId": "from-query", "plan": "q"})
    start(call, {"plan": "custom"})
    assert call.parameters == {"businessId": "from-query", "plan": "custom"}


class Recorder(Handler):
    def __init__(self, call, options):
        super().__init__(call, options)
        self.events = []  # this call's own: nothing carries over to another test

    def on_start(self, start):
        self.events.append(("start", start.call_sid))
        self.call.send_mark("hello")
        self.call.clear()

    def on_media(self, audio, timestamp):
        self.events.append(("media", timestamp))
        if timestamp == 40:
            raise RuntimeError("boom")

    def on_dtmf(self, digit):
        self.events.append(("dtmf", digit))

    def on_mark(self, name):
        self.events.append(("mark", name))

    def on_stop(self, reason):
        self.events.append(("stop", reason))


def test_handler_sees_every_event_and_a_failure_hangs_up(monkeypatch):
    from voicebridge import handlers

    monkeypatch.setitem(handlers.BUILTIN, "recorder", "tests.test_calls:Recorder")
    reg, _ = registry(handler="recorder")
    call, link = new_call(reg)
    start(call)
    recorder = call.handler
    assert [type(x) for x in link.sent] == [m.Mark, m.Clear]
    call.text_received(m.twilio_dtmf(SID, "5", 3))
    call.text_received(m.twilio_mark(SID, "hello", 4))
    call.text_received(m.twilio_media(SID, b"a", 1, 20, 5))
    call.text_received(m.twilio_media(SID, b"a", 2, 40, 6))
    assert recorder.events == [("start", CALL), ("dtmf", "5"), ("mark", "hello"), ("media", 20), ("media", 40), ("stop", "error")]
    assert link.closed[0] == 1011 and call.errors["handler-error"] == 1


def test_tenant_picks_the_handler_and_unknown_handler_fails_start_up():
    from voicebridge.handlers import UnknownHandler

    config = parse_config({"tenants": {"b1": {"numbers": ["+15550100"], "handler": "echo", "plan": "pro"}}})
    reg, _ = registry(config)
    call, _ = new_call(reg)
    start(call, {"to": "+15550100"})
    assert call.tenant.id == "b1"
    with pytest.raises(UnknownHandler):
        registry(parse_config({"tenants": {"b1": {"handler": "missing"}}}))


def test_close_without_stop_still_stops_the_handler():
    reg, _ = registry()
    call, link = new_call(reg)
    start(call)
    call.connection_lost(1006, "gone")
    assert call.end_reason == "closed" and call.close_code == 1006 and reg.active == 0


class Unbuildable(Handler):
    def __init__(self, call, options):
        raise RuntimeError("cannot build")


def test_a_handler_that_cannot_be_built_ends_the_call_once(monkeypatch):
    from voicebridge import handlers

    monkeypatch.setitem(handlers.BUILTIN, "unbuildable", "tests.test_calls:Unbuildable")
    reg, clock = registry(handler="unbuildable")

    class SlowLink(FakeLink):
        def close(self, code, reason):
            self.closed = (code, reason)  # the close handshake is still under way: frames keep coming

    link = SlowLink()
    call = reg.new_call(link, "127.0.0.1", {})
    call.opened()
    with captured_log() as events:
        start(call)
        for i in range(5):
            call.text_received(m.twilio_media(SID, b"a", i + 1, i * 20, i + 3))
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["event_name"] == "call.handler_error"
    assert failures[0]["log_failure"].check(RuntimeError)
    assert call.state == "stopped" and call.end_reason == "error" and link.closed[0] == 1011
    assert call.errors == {"handler-error": 1}, "the frames in flight are the ended call's, not errors"
    assert clock.getDelayedCalls() == [], "the call's timers are gone"


def test_a_start_for_no_tenant_ends_the_call_and_later_frames_are_not_errors():
    config = parse_config({"unknown_tenant": "refuse", "tenants": {"b1": {"numbers": ["+15550100"]}}})
    reg, clock = registry(config)

    class SlowLink(FakeLink):
        def close(self, code, reason):
            self.closed = (code, reason)

    link = SlowLink()
    call = reg.new_call(link, "127.0.0.1", {})
    call.opened()
    start(call, {"to": "+15559999"})
    for i in range(5):
        call.text_received(m.twilio_media(SID, b"a", i + 1, i * 20, i + 3))
    assert call.state == "stopped" and call.end_reason == "refused" and link.closed[0] == 1008
    assert call.errors == {}, "not media-before-start"
    assert clock.getDelayedCalls() == []


def test_calls_refused_at_start_are_counted_as_refused_under_their_tenant():
    config = parse_config({"unknown_tenant": "refuse", "tenants": {"small": {"numbers": ["+15550100"], "max_calls": 0}}})
    reg, _ = registry(config)
    stranger, _ = new_call(reg)
    start(stranger, {"to": "+15559999"})
    over, _ = new_call(reg)
    start(over, {"to": "+15550100"})
    never, _ = new_call(reg)
    never.connection_lost(1006, "gone")
    assert dict(reg.totals.calls) == {("none", "refused"): 1, ("small", "tenant-limit"): 1, ("none", "no-start"): 1}
    assert sum(reg.totals.duration_counts) == 0, "a refused call has no duration"


def test_sids_from_the_peer_cannot_break_a_log_line():
    reg, _ = registry()
    call, _ = new_call(reg)
    call.text_received(m.twilio_start(SID, "CA1\nforged event_name=call.ended", ACC, {}))
    assert call.errors["bad-field"] == 1 and call.state == "handshake", "a SID that is not a SID starts nothing"
    call.call_sid = "CA1\nforged"  # and were one ever to get through, the log escapes it
    assert "\n" not in call.ids["callSid"] and call.ids["callSid"].startswith("CA1\\n")


def test_tracks_from_the_peer_cannot_break_a_log_line():
    reg, _ = registry()
    call, _ = new_call(reg)
    frame = m.twilio_start(SID, CALL, ACC, {}).replace(b'"inbound"', b'"inbound\\nforged"')
    assert b"forged" in frame
    with captured_log() as events:
        call.text_received(frame)
    assert call.errors["bad-field"] == 1 and call.state == "handshake", "a track is a name: letters and '_'"
    assert not [e for e in events if e.get("event_name") == "call.started"]
    assert all("\n" not in str(e.get("detail", "")) for e in events)
