"""Hostile input from peers: whatever is published on a machine's Redis channel, and whatever a relayed
call-control request or reply carries, is checked once (``slots.parse_message``) and dropped with a
warning when it is not the fleet's; nothing escapes to the subscriber connection, and every HTTP request
of the control API finishes with a precise status.
"""

from __future__ import annotations

import base64
import json
import signal
from types import SimpleNamespace

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from tests.redisserver import redis_server, wait_until  # noqa: F401  (a fixture)
from tests.test_fleet import CONTROL_TOKEN, fleet, in_thread, sleep  # noqa: F401  (a fixture)
from voicebridge.fleet import slots
from voicebridge.fleet.client import parse_redis_url
from voicebridge.fleet.control import CallControl, CallsResource, ControlError, act_on
from voicebridge.fleet.leases import Fleet

pytestmark = pytest.mark.fleet
KEYS = slots.Keys()
SID = "CA" + "a" * 32


# The validator, pure.


def bad(raw, reason):
    with pytest.raises(slots.BadMessage) as e:
        slots.parse_message(raw, KEYS)
    assert e.value.reason == reason, e.value
    assert len(str(e.value)) < 300, "the reason is short, whatever the message"
    return e.value


def test_the_fleets_own_messages_pass():
    assert slots.parse_message(json.dumps({"op": "claimed", "sid": SID, "by": "host-1.example:4242"}), KEYS) == {
        "op": "claimed", "sid": SID, "by": "host-1.example:4242"}
    assert slots.parse_message(b'{"op": "claimed", "sid": "CA1"}', KEYS)["by"] is None
    request = {"op": "control", "id": "h:1/7", "sid": SID, "action": "play",
               "args": {"audio": base64.b64encode(b"\x55" * 48_000).decode(), "mark": "done"},
               "reply": "{voicebridge}:m:h:1"}
    assert slots.parse_message(json.dumps(request), KEYS) == request
    reply = {"op": "control-reply", "id": "h:1/7", "status": 404, "error": "no live call"}
    assert slots.parse_message(json.dumps(reply), KEYS) == {**reply, "result": {}}
    ok = {"op": "control-reply", "id": "h:1/7", "status": 200, "result": {"done": "hangup", "callSid": SID}}
    assert slots.parse_message(json.dumps(ok), KEYS)["result"] == ok["result"]


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("[" * 200_000 + "]" * 200_000, "too-long"),
        ("[" * 30_000 + "]" * 30_000, "too-deep"),  # past the parser's recursion limit
        ('{"op": "claimed", "sid": "CA1", "x": [[[[[[1]]]]]]}', "too-deep"),
        ("x" * (slots.MAX_MESSAGE + 1), "too-long"),
        ("not json", "not-json"),
        (b"\xff\xfe{", "not-json"),
        ('{"op": "claimed", "sid": 1' + "0" * 5000 + "}", "not-json"),  # past int's digit limit
        ("[1, 2]", "not-object"),
        ('"op"', "not-object"),
        ("{}", "bad-op"),
        ('{"op": {}}', "bad-op"),
        ('{"op": ["claimed"]}', "bad-op"),
        ('{"op": "reserve"}', "bad-op"),
        ('{"op": "claimed"}', "bad-sid"),
        ('{"op": "claimed", "sid": {"a": 1}}', "bad-sid"),
        ('{"op": "claimed", "sid": "' + "A" * 65 + '"}', "bad-sid"),
        ('{"op": "claimed", "sid": "CA 1"}', "bad-sid"),
        ('{"op": "claimed", "sid": "CA\\u00e91"}', "bad-sid"),
        ('{"op": "claimed", "sid": "CA1", "by": ["m"]}', "bad-machine"),
        ('{"op": "control", "sid": "CA1", "action": "hangup", "reply": "{voicebridge}:m:a"}', "bad-id"),
        ('{"op": "control", "id": "a/1", "sid": "CA1", "action": "hangup", "reply": "elsewhere"}', "bad-reply-channel"),
        ('{"op": "control", "id": "a/1", "sid": "CA1", "action": 7, "reply": "{voicebridge}:m:a"}', "bad-action"),
        ('{"op": "control", "id": "a/1", "sid": "CA1", "action": "play", "args": {"audio": 5}, '
         '"reply": "{voicebridge}:m:a"}', "bad-args"),
        ('{"op": "control", "id": "a/1", "sid": "CA1", "action": "mark", "args": {"name": "\\ud800"}, '
         '"reply": "{voicebridge}:m:a"}', "bad-args"),
        ('{"op": "control", "id": "a/1", "sid": "CA1", "action": "mark", "args": [], "reply": "{voicebridge}:m:a"}',
         "bad-args"),
        ('{"op": "control-reply", "id": "a/1", "status": "200"}', "bad-status"),
        ('{"op": "control-reply", "id": "a/1", "status": true}', "bad-status"),
        ('{"op": "control-reply", "id": "a/1", "status": 200.0}', "bad-status"),
        ('{"op": "control-reply", "id": "a/1", "status": 99}', "bad-status"),
        ('{"op": "control-reply", "id": "a/1", "status": 600}', "bad-status"),
        ('{"op": "control-reply", "id": "a/1"}', "bad-status"),
        ('{"op": "control-reply", "id": "a/1", "status": 200, "result": [1]}', "bad-result"),
        ('{"op": "control-reply", "id": "a/1", "status": 500, "error": {"no": 1}}', "bad-error"),
        ('{"op": "control-reply", "id": {"a": 1}, "status": 200}', "bad-id"),
    ],
)
def test_hostile_messages_are_refused_with_a_reason(raw, reason):
    bad(raw, reason)


def test_a_malformed_reply_to_a_known_request_names_it_and_a_long_error_is_cut():
    assert bad('{"op": "control-reply", "id": "a/1", "status": "x"}', "bad-status").reply_id == "a/1"
    assert bad('{"op": "claimed", "sid": "x y"}', "bad-sid").reply_id is None
    long = slots.parse_message(json.dumps({"op": "control-reply", "id": "a/1", "status": 500, "error": "e" * 10_000}), KEYS)
    assert len(long["error"]) <= slots.MAX_ERROR + 3


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
FIELDS = st.fixed_dictionaries(
    {"op": st.sampled_from(["claimed", "control", "control-reply"]) | JSON},
    optional={k: JSON | st.text(max_size=70) for k in ("sid", "by", "id", "action", "args", "reply", "status", "result",
                                                        "error")},
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(FIELDS.map(json.dumps), JSON.map(json.dumps), st.text(max_size=200), st.binary(max_size=200)))
def test_anything_is_a_checked_message_or_a_bad_message_never_another_error(raw):
    try:
        message = slots.parse_message(raw, KEYS)
    except slots.BadMessage:
        return
    assert message["op"] in slots.OPS
    if "sid" in message:
        assert slots.is_sid(message["sid"])
    if message["op"] == "control-reply":
        assert type(message["status"]) is int and 100 <= message["status"] <= 599


def test_a_listing_skips_records_nested_past_the_parser():
    deep = b"[" * 50_000 + b"]" * 50_000
    reply = [10_000, b"CA1", deep, b"CA2", b"[1]", b"CA3", json.dumps({"m": "m1", "s": "started", "at": 9000}).encode()]
    assert [c.call_sid for c in slots.parse_list(reply)] == ["CA3"]
    assert slots.parse_list([]) == [] and slots.parse_list([b"x"]) == []


def test_play_with_audio_that_is_not_base64_is_a_400():
    class Call:
        def send_audio(self, audio):
            raise AssertionError("nothing is played")

    for audio in ("%%%not base64", "QUJD=extra", 12, ["a"]):
        with pytest.raises(ControlError) as e:
            act_on(Call(), "play", {"audio": audio})
        assert e.value.status == 400, audio


# A machine hearing them (no network: its Redis client is never started).


class _Capacity:
    def __init__(self):
        self.claimed = []
        self.peers = SimpleNamespace(claimed=lambda sid: None)

    def peer_claimed(self, sid):
        self.claimed.append(sid)


class _Redis:
    """What CallControl asks of the fleet's Redis, answered at once."""

    def __init__(self, record):
        self.record = record
        self.published = []

    def hget(self, key, name, timeout):
        return defer.succeed(self.record)

    def publish(self, channel, message, timeout):
        self.published.append((channel, message))
        return defer.succeed(1)


@pytest.fixture
def machine():
    clock = task.Clock()
    capacity = _Capacity()
    registry = SimpleNamespace(capacity=capacity, on_census=None, calls=[])
    settings_ = SimpleNamespace(config=SimpleNamespace(tenants={}))
    member = Fleet(parse_redis_url("redis://127.0.0.1:1/0"), settings_, registry, clock, machine="here:1")
    member.redis = _Redis(json.dumps({"m": "there:2", "s": "started"}))
    control = CallControl(registry, member, clock)
    events = []
    globalLogPublisher.addObserver(events.append)
    yield SimpleNamespace(fleet=member, control=control, clock=clock, capacity=capacity, events=events)
    globalLogPublisher.removeObserver(events.append)


HOSTILE = [
    "[" * 30_000 + "]" * 30_000,
    "{" * 100_000,
    '{"op": {}}',
    '{"op": ["x"]}',
    '{"op": "claimed", "sid": {"nested": [1, 2]}}',
    '{"op": "claimed", "sid": "' + "C" * 100_000 + '"}',
    '{"op": "control", "id": "a/1", "sid": "CA1", "action": "play", "args": {"audio": 5}, "reply": "{voicebridge}:m:a"}',
    '{"op": "control", "id": "a/1", "sid": "CA1", "action": "play", "args": {"audio": "%%%"}, "reply": "{voicebridge}:m:a"}',
    '{"op": "control-reply", "id": "nobody/1", "status": "teapot"}',
    b"\xff\x00\x01",
    "\x1b[31m\n" * 1000,
    " " * (slots.MAX_MESSAGE + 1),
]


def test_hostile_messages_never_escape_and_are_warned_of_once_per_reason(machine):
    for _ in range(3):
        for raw in HOSTILE:
            machine.fleet._message("{voicebridge}:m:here:1", raw)  # raises nothing
    warned = [e for e in machine.events if e.get("event_name") == "fleet.bad_message"]
    reasons = sorted(e["reason"] for e in warned)
    assert reasons == sorted(set(reasons)), "once per reason within WARN_EVERY"
    assert {"too-long", "too-deep", "bad-op", "bad-sid", "not-json", "bad-status"} <= set(reasons)
    assert all(len(e["detail"]) <= 123 and "\n" not in e["detail"] and "\x1b" not in e["detail"] for e in warned)
    assert machine.capacity.claimed == []
    # The relayed play with bad base64 was a well-formed request: it is answered 400, not raised.
    replies = [json.loads(m) for _, m in machine.fleet.redis.published]
    assert replies == [] or all(r["status"] in (400, 404) for r in replies)
    machine.clock.advance(11)
    machine.fleet._message("{voicebridge}:m:here:1", '{"op": {}}')
    again = [e for e in machine.events if e.get("event_name") == "fleet.bad_message" and e["reason"] == "bad-op"]
    assert len(again) == 2 and again[-1]["count"] == 6, "the five held back, and this one"
    machine.fleet._message("{voicebridge}:m:here:1", json.dumps({"op": "claimed", "sid": SID}))
    assert machine.capacity.claimed == [SID], "a good message after them is heard"
    assert not [e for e in machine.events if e.get("event_name") == "fleet.error"]


def test_a_relayed_play_with_bad_audio_is_answered_400(machine):
    call = SimpleNamespace(call_sid=SID, state="started", send_audio=lambda a: None, send_mark=lambda n: None)
    machine.control.registry.calls.append(call)
    for audio in ("%%%", "QUJD=x"):
        request = {"op": "control", "id": "there:2/1", "sid": SID, "action": "play", "args": {"audio": audio},
                   "reply": "{voicebridge}:m:there:2"}
        machine.fleet._message("{voicebridge}:m:here:1", json.dumps(request))
    replies = [json.loads(m) for _, m in machine.fleet.redis.published]
    assert [(r["status"], "base64" in r["error"]) for r in replies] == [(400, True), (400, True)]


@pytest.mark.parametrize("status", ['"200"', "true", "1000", "null", "[200]"])
def test_a_malformed_reply_fails_its_request_with_502_at_once(machine, status):
    d = machine.control.act(SID, "hangup", {})
    assert not d.called
    machine.fleet._message("{voicebridge}:m:here:1", '{"op": "control-reply", "id": "here:1/1", "status": %s}' % status)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].value.status == 502 and "malformed" in str(failure[0].value)


def render(control, path, method=b"POST", args=None):
    request = DummyRequest(path)
    request.method = method
    request.args = args or {}
    request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {CONTROL_TOKEN}".encode()])
    body = CallsResource(control, CONTROL_TOKEN).render(request)
    if isinstance(body, bytes):
        request.write(body)
        request.finish()
    return request


def test_the_control_api_always_finishes_with_a_precise_status(machine):
    request = render(machine.control, [b"CA x", b"hangup"])
    assert request.responseCode == 400 and b"not a CallSid" in b"".join(request.written)
    request = render(machine.control, [b"A" * 65, b"hangup"])
    assert request.responseCode == 400
    request = render(machine.control, [SID.encode(), b"transfer"])
    assert request.responseCode == 404
    request = render(machine.control, [SID.encode(), b"hangup"])  # relayed to there:2
    assert not request.finished
    machine.fleet._message("{voicebridge}:m:here:1", '{"op": "control-reply", "id": "here:1/1", "status": "ok"}')
    assert request.finished and request.responseCode == 502
    assert b"malformed" in b"".join(request.written)
    request = render(machine.control, [SID.encode(), b"clear"])
    machine.fleet._message("{voicebridge}:m:here:1",
                           '{"op": "control-reply", "id": "here:1/2", "status": 200, "result": {"done": "clear"}}')
    assert request.finished and request.responseCode in (None, 200) and json.loads(b"".join(request.written)) == {"done": "clear"}
    request = render(machine.control, [SID.encode(), b"hangup"])
    machine.clock.advance(5)  # no answer: the timeout answers
    assert request.finished and request.responseCode == 504


def test_a_corrupt_record_on_redis_is_a_502(machine):
    for record in ("not json", "[1]", "[" * 50_000, json.dumps({"s": "started", "m": {"x": 1}})):
        machine.fleet.redis.record = record
        request = render(machine.control, [SID.encode(), b"hangup"])
        assert request.finished and request.responseCode == 502, record


def test_a_client_gone_before_the_answer_gets_nothing_written(machine):
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    request = render(machine.control, [SID.encode(), b"hangup"])
    request.processingFailed(Failure(ConnectionDone()))  # DummyRequest's way of the connection being lost
    machine.fleet._message("{voicebridge}:m:here:1", '{"op": "control-reply", "id": "here:1/1", "status": 200}')
    assert request.written == [] and not request.finished


def test_without_txredisapis_private_pool_slot_the_client_connects_the_plain_way(monkeypatch):
    import txredisapi

    from voicebridge.fleet.client import Redis

    plain = []
    monkeypatch.delattr(txredisapi, "_PoolSlot")
    monkeypatch.setattr(txredisapi.RedisFactory, "startConnecting", lambda factory, endpoint: plain.append(factory))
    client = Redis(parse_redis_url("unix:///nonexistent/redis.sock"), task.Clock())
    client.start()  # raises nothing: txredisapi's own way of connecting
    assert plain == [client._commands]


# For real: a redis-server and two machines.


def _pubsub_clients(redis):
    listed = redis.command("CLIENT", "LIST", "TYPE", "pubsub").decode()
    return sorted(line.split()[0] for line in listed.splitlines() if line)


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_hostile_messages_on_a_machines_channel_leave_its_subscriber_up_and_serving(fleet):  # noqa: F811
    from twisted.internet import reactor

    f = yield in_thread(lambda: fleet(count=2))
    channel = slots.Keys().machine(f.names[0])
    before = yield in_thread(_pubsub_clients, f.redis)
    assert len(before) == 2
    for raw in HOSTILE + ["x" * (1024 * 1024)]:
        heard = yield in_thread(f.redis.command, "PUBLISH", channel, raw.encode("latin-1") if isinstance(raw, str) else raw)
        assert heard == 1
    yield in_thread(wait_until, lambda: f.machines[0].named("fleet.bad_message"), 10)
    assert (yield in_thread(_pubsub_clients, f.redis)) == before, "no subscriber connection was dropped"
    assert not f.machines[0].named("fleet.error")

    # Machine 0 still hears its channel: the claim of the call it answered, whose stream went to machine 1,
    # and the reply to a call-control request it relays to machine 1.
    sid = "CA" + "3" * 32
    body = yield in_thread(f.webhook, sid, "+15550100002", f.machines[0].port)
    call = f.play(reactor, sid, body, 1, frames=3000)
    yield in_thread(wait_until, lambda: f.redis.calls().get(sid, {}).get("m") == f.names[1], 10)
    yield sleep(reactor, 0.3)
    hung = yield in_thread(f.control, 0, "hangup", sid)
    assert hung.returncode == 0 and f"machine={f.names[1]}" in hung.stdout, (hung.stdout, hung.stderr)
    outcome = yield call.addTimeout(10, reactor)
    assert outcome.closed_by_server and outcome.close_code == 1000
    f.machines[0].proc.send_signal(signal.SIGTERM)
    draining = yield in_thread(f.machines[0].wait_for, lambda e: e.get("event_name") == "service.draining")
    assert draining["answered"] == 0, "machine 0 heard the claim: its reservation is not waited for"
    assert all(m.proc.poll() is None or m is f.machines[0] for m in f.machines)
