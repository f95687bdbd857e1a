"""A call's bounds in time and memory, and the daemon's in calls: fake link, fake clock, no reactor."""

from tests.fakes import FakeLink, new_call, registry
from voicebridge.call.capacity import RESERVATION_SECONDS
from voicebridge.config.file import parse_config
from voicebridge.config.limits import Limits
from voicebridge.twilio import messages as m

SID, CALL, ACC = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32


def start(call, call_sid=CALL, params=None):
    call.text_received(m.twilio_start(SID, call_sid, ACC, params or {}))


def media(call, i=0):
    call.text_received(m.twilio_media(SID, b"\x7f" * 160, i + 1, i * 20, i + 3))


def test_no_start_within_the_start_timeout_closes_with_1008():
    reg, clock = registry(limits=Limits(start_timeout=10))
    call, link = new_call(reg)
    clock.advance(9.9)
    assert link.closed is None
    clock.advance(0.1)
    assert link.closed[0] == 1008 and link.closed[1].startswith("start-timeout")
    assert call.end_reason == "start-timeout" and reg.active == 0
    assert clock.getDelayedCalls() == [], "every timer is cancelled when the call ends"


def test_start_in_time_disarms_the_start_timeout():
    reg, clock = registry(limits=Limits(start_timeout=10, idle_timeout=30))
    call, link = new_call(reg)
    clock.advance(5)
    start(call)
    clock.advance(6)
    assert link.closed is None and call.guards.pending == ["duration", "idle"]


def test_media_keeps_the_call_alive_and_silence_ends_it_after_the_idle_timeout():
    reg, clock = registry(limits=Limits(idle_timeout=30))
    call, link = new_call(reg)
    start(call)
    for i in range(100):  # 50 s of media, 0.5 s apart
        clock.advance(0.5)
        media(call, i)
    assert link.closed is None
    clock.advance(29.9)
    assert link.closed is None
    clock.advance(0.1)
    assert link.closed[0] == 1008 and call.end_reason == "idle-timeout"
    assert "no media for 30.0s" in link.closed[1]
    assert clock.getDelayedCalls() == []


def test_junk_frames_do_not_count_as_media():
    reg, clock = registry(limits=Limits(idle_timeout=5))
    call, link = new_call(reg)
    start(call)
    for _ in range(10):
        clock.advance(1)
        call.text_received(b"{junk")
        call.text_received(b'{"event":"media","streamSid":"MZother","media":{"payload":""}}')
    assert call.end_reason == "idle-timeout" and link.closed[0] == 1008


def test_max_duration_ends_even_a_busy_call():
    reg, clock = registry(limits=Limits(max_duration=60, idle_timeout=30))
    call, link = new_call(reg)
    start(call)
    for i in range(2999):
        clock.advance(0.02)
        media(call, i)
    assert link.closed is None
    clock.advance(0.1)
    assert call.end_reason == "max-duration" and link.closed[0] == 1008
    assert call.frames_out == 2999


def test_every_timer_is_cancelled_however_the_call_ends():
    for end in ("stop", "closed", "hangup", "binary"):
        reg, clock = registry()
        call, link = new_call(reg)
        start(call)
        assert clock.getDelayedCalls()
        if end == "stop":
            call.text_received(m.twilio_stop(SID, CALL, ACC, 9))
        elif end == "closed":
            call.connection_lost(1006, "gone")
        elif end == "hangup":
            call.hangup()
        else:
            call.binary_received(3)
        assert clock.getDelayedCalls() == [], end
    reg, clock = registry()
    call, _ = new_call(reg)  # never started
    call.connection_lost(1006, "gone")
    assert clock.getDelayedCalls() == []


def test_a_peer_that_stops_reading_is_cut_off_past_the_send_buffer_limit():
    reg, clock = registry(limits=Limits(max_send_buffer=16 * 1024))
    call, link = new_call(reg)
    start(call)
    call.guards.pauseProducing()  # the transport's own buffer is full
    sent_before = len(link.sent)
    i = 0
    while link.closed is None and i < 1000:
        media(call, i)
        i += 1
    frame_size = len(m.media(SID, b"\x7f" * 160))
    assert call.end_reason == "slow-reader" and link.closed[0] == 1008
    assert len(link.sent) - sent_before == (16 * 1024) // frame_size, "queued up to the limit, not one frame more"


def test_a_peer_that_catches_up_starts_a_fresh_count():
    reg, _ = registry(limits=Limits(max_send_buffer=16 * 1024))
    call, link = new_call(reg)
    start(call)
    for _ in range(5):
        call.guards.pauseProducing()
        for i in range(40):  # about 12 KiB each time
            media(call, i)
        call.guards.resumeProducing()
    assert link.closed is None and call.frames_out == 200


def test_websocket_failures_are_protocol_errors_with_a_reason():
    reg, _ = registry()
    call, _ = new_call(reg)
    start(call)
    call.connection_lost(1009, b"received WebSocket message size 70000 exceeds payload limit of 65536 octets", failed=True)
    assert call.errors["message-too-big"] == 1 and call.end_reason == "message-too-big"
    reg, _ = registry()
    call, _ = new_call(reg)
    call.connection_lost(1009, "the peer said so")  # the peer closing with 1009 is not our failure
    assert call.errors == {} and call.end_reason == "closed"


def test_frames_in_flight_after_this_side_ended_the_call_are_not_errors():
    reg, clock = registry(limits=Limits(idle_timeout=1))

    class SlowLink(FakeLink):
        def close(self, code, reason):
            self.closed = (code, reason)  # the close handshake is still under way

    call = reg.new_call(SlowLink(), "127.0.0.1", {})
    call.opened()
    start(call)
    clock.advance(1)
    assert call.end_reason == "idle-timeout"
    media(call)
    assert call.errors == {}


# Capacity.

TENANTS = parse_config({"tenants": {"small": {"numbers": ["+15550100"], "max_calls": 2}, "big": {"numbers": ["+15550200"]}}})
SMALL = TENANTS.tenants["small"]
BIG = TENANTS.tenants["big"]


def test_webhook_reserves_and_the_limit_counts_reservations():
    reg, _ = registry(TENANTS, limits=Limits(max_calls=3))
    cap = reg.capacity
    assert [cap.reserve(f"CA{i}", BIG) for i in range(3)] == [None, None, None]
    assert "limit of 3 calls" in cap.reserve("CA3", BIG)
    assert cap.reserve("CA1", BIG) is None, "Twilio asking again for a call that holds a slot"


def test_tenant_limit_at_the_webhook():
    reg, _ = registry(TENANTS)
    cap = reg.capacity
    assert cap.reserve("CA1", SMALL) is None and cap.reserve("CA2", SMALL) is None
    assert "tenant small" in cap.reserve("CA3", SMALL)
    assert cap.reserve("CA3", BIG) is None, "another tenant is not affected"


def test_reservations_lapse():
    reg, clock = registry(limits=Limits(max_calls=1))
    assert reg.capacity.reserve("CA1", None) is None
    assert reg.capacity.reserve("CA2", None) is not None
    clock.advance(RESERVATION_SECONDS)
    assert reg.capacity.reserve("CA2", None) is None


def test_without_a_limit_reservations_are_kept_but_bounded(monkeypatch):
    """A drain needs them (the streams of calls just answered), so they are kept; they lapse, and are capped."""
    from voicebridge.call import capacity

    reg, clock = registry()
    for i in range(1000):
        assert reg.capacity.reserve(f"CA{i}", None) is None
    assert reg.capacity.counts() == (0, 0, 1000)
    clock.advance(RESERVATION_SECONDS)
    assert reg.capacity.counts() == (0, 0, 0) and reg.capacity.last_answered() is None
    monkeypatch.setattr(capacity, "MAX_RESERVATIONS", 10)
    for i in range(20):
        reg.capacity.reserve(f"CA{i}", None)
    assert reg.capacity.counts() == (0, 0, 10)


def test_handshakes_count_and_are_refused_when_full():
    reg, _ = registry(limits=Limits(max_calls=2))
    cap = reg.capacity
    assert cap.admit_handshake() is None
    a, _ = new_call(reg)
    assert cap.admit_handshake() is None
    b, _ = new_call(reg)
    assert "limit of 2 calls" in cap.admit_handshake(), "calls in handshake state hold a slot"
    start(a, "CAa")
    assert cap.admit_handshake() is not None
    a.connection_lost(1000, "")
    assert cap.admit_handshake() is None


def test_a_handshake_is_taken_for_the_stream_of_a_reservation():
    reg, _ = registry(limits=Limits(max_calls=2))
    cap = reg.capacity
    assert cap.reserve("CA1", None) is None and cap.reserve("CA2", None) is None
    first, _ = new_call(reg)  # admitted: one of the two answered calls
    assert cap.admit_handshake() is None
    second, _ = new_call(reg)
    assert cap.admit_handshake() is not None, "a third stream while two were answered and are connecting"
    start(first, "CA1")
    start(second, "CA2")
    assert cap.counts() == (2, 0, 0)
    assert cap.reserve("CA3", None) is not None


def test_start_over_the_tenant_limit_closes_the_stream():
    reg, clock = registry(TENANTS)
    calls = [new_call(reg) for _ in range(3)]
    for i, (call, _) in enumerate(calls):
        start(call, f"CA{i}", {"to": "+15550100"})
    (_, l0), (_, l1), (third, l2) = calls
    assert l0.closed is None and l1.closed is None
    assert l2.closed[0] == 1008 and l2.closed[1].startswith("tenant-limit")
    assert third.end_reason == "tenant-limit" and third.handler is None
    assert clock.getDelayedCalls() != [] and len(third.guards.pending) == 0


def test_a_reservation_is_taken_by_its_own_start():
    reg, _ = registry(TENANTS)
    cap = reg.capacity
    assert cap.reserve("CA1", SMALL) is None and cap.reserve("CA2", SMALL) is None
    call, link = new_call(reg)
    start(call, "CA1", {"to": "+15550100"})
    assert link.closed is None
    intruder, link = new_call(reg)
    start(intruder, "CAnotanswered", {"to": "+15550100"})
    assert link.closed[0] == 1008, "CA2 still holds the tenant's second slot"


def test_a_tenant_with_no_calls_allowed():
    config = parse_config({"tenants": {"off": {"numbers": ["+15550300"], "max_calls": 0}}})
    reg, _ = registry(config)
    assert reg.capacity.reserve("CA1", config.tenants["off"]) is not None


def test_frames_a_relay_forwards_count_against_the_send_buffer_too():
    reg, _ = registry(limits=Limits(max_send_buffer=16 * 1024))
    call, link = new_call(reg)
    start(call)
    call.guards.pauseProducing()
    frame = m.media(SID, b"\x7f" * 160)
    message = m.parse_outbound(frame)
    for _ in range(1000):
        if link.closed is not None:
            break
        call.forward(message, frame)
    assert call.end_reason == "slow-reader" and link.closed[0] == 1008
    assert len(link.sent) == (16 * 1024) // len(frame), "queued up to the limit, not one frame more"
