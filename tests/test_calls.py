"""A Call's life and rules, driven with a fake link and a fake clock: no reactor, no sockets."""

import pytest

from tests.fakes import new_call, registry
from voicebridge import messages as m
from voicebridge.config import parse_config
from voicebridge.handlers import Handler

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
    events = []

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
    Recorder.events.clear()
    start(call)
    assert [type(x) for x in link.sent] == [m.Mark, m.Clear]
    call.text_received(m.twilio_dtmf(SID, "5", 3))
    call.text_received(m.twilio_mark(SID, "hello", 4))
    call.text_received(m.twilio_media(SID, b"a", 1, 20, 5))
    call.text_received(m.twilio_media(SID, b"a", 2, 40, 6))
    assert Recorder.events == [("start", CALL), ("dtmf", "5"), ("mark", "hello"), ("media", 20), ("media", 40), ("stop", "error")]
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
