"""The fleet's ledger on its own: URL and option parsing (pure), and the Lua scripts against a real redis-server.

The scripts are run through voicebridge/fleet/client.py, the daemon's own connection, so these
tests also cover it: EVAL/EVALSHA, PUBLISH and a subscription, unix sockets, a password.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.python import usage

from tests.redisserver import redis_server  # noqa: F401  (a fixture)
from voicebridge.daemon.tap import Options
from voicebridge.fleet import slots
from voicebridge.fleet.client import Redis, Unavailable, parse_redis_url

pytestmark = pytest.mark.fleet
KEYS = slots.Keys()


# Pure: URLs, options, keys, arguments.


def test_redis_urls_parse_and_never_show_the_password(tmp_path):
    url = parse_redis_url("redis://:s3cret@cache.internal:6380/2")
    assert (url.scheme, url.host, url.port, url.db, url.password) == ("redis", "cache.internal", 6380, 2, "s3cret")
    assert url.shown == "redis://:***@cache.internal:6380/2" and "s3cret" not in repr(url)
    tls = parse_redis_url("rediss://default:pw@redis.example.com")
    assert tls.tls and tls.port == 6379 and tls.username == "default" and tls.shown == "rediss://default:***@redis.example.com:6379/0"
    unix = parse_redis_url("unix:///run/redis/redis.sock?db=3")
    assert (unix.path, unix.db, unix.shown) == ("/run/redis/redis.sock", 3, "unix:///run/redis/redis.sock?db=3")
    secret = tmp_path / "redis-password"
    secret.write_text("from-the-file\n")
    filed = parse_redis_url("redis://:in-the-url@h:1/0", str(secret))
    assert filed.password == "from-the-file", "the file wins over the URL"
    assert parse_redis_url("redis://[::1]:7000/0").shown == "redis://[::1]:7000/0"


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://h:6379", "scheme"),
        ("redis://:pw@/0", "needs a host"),
        ("redis://h:6379/zero", "must be a number"),
        ("unix://", "socket's path"),
        ("redis://h:99999", "not a URL"),
    ],
)
def test_bad_redis_urls_say_why_without_the_password(url, words):
    with pytest.raises(ValueError) as e:
        parse_redis_url(url)
    assert words in str(e.value) and "pw" not in str(e.value)


def options(*argv) -> Options:
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_without_redis_there_is_no_fleet_and_fleet_flags_are_refused():
    assert options()["fleet"] is None
    for flag, value in [("--fleet-max-calls", "3"), ("--fleet-lease", "10"), ("--redis-password-file", "x")]:
        with pytest.raises(usage.UsageError, match="needs --redis"):
            options(flag, value)
    with pytest.raises(usage.UsageError, match="admit or busy"):
        options("--redis", "redis://h", "--redis-unavailable", "maybe")
    with pytest.raises(usage.UsageError, match="between 3 and 3600"):
        options("--redis", "redis://h", "--fleet-lease", "1")
    fleet = options("--redis", "redis://:pw@h:6379/1", "--fleet-max-calls", "40", "--redis-unavailable", "busy")["fleet"]
    assert (fleet.max_calls, fleet.unavailable, fleet.lease, fleet.shown) == (40, "busy", 15.0, "redis://:***@h:6379/1")


def test_keys_share_one_cluster_hash_tag_and_renewals_lay_out_their_arguments():
    keys = slots.Keys("prod")
    assert {k.split("}")[0] for k in (keys.slots, keys.calls, keys.tenant("b1"), keys.machine("m1"))} == {"{prod"}
    assert keys.tenant(None) == keys.slots
    _, _, args = slots.renew_call(keys, "m1", 15000, ["b1", "b2"], [("CA1", "b1", 2500.7)], [("CA2", None, 0)])
    assert args == ["{prod}", "m1", 15000, 2, "b1", "b2", "CA1", "b1", "s", 2500, "CA2", "", "r", 1]


def test_a_listing_skips_what_it_cannot_read():
    reply = [10_000, b"CA1", json.dumps({"t": "b1", "m": "m1", "s": "started", "at": 4000}).encode(), b"CA2", b"not json"]
    (call,) = slots.parse_list(reply)
    assert (call.call_sid, call.tenant, call.machine, call.state, call.seconds) == ("CA1", "b1", "m1", "started", 6.0)


# The scripts, on a real redis-server.


@pytest.fixture
def redis_client(redis_server):  # noqa: F811
    """(server, a connected client) factory: ``connect(channels=..., on_message=...)``."""
    from twisted.internet import reactor

    server = redis_server()
    clients = []

    @defer.inlineCallbacks
    def connect(url=None, **kwargs):
        client = Redis(parse_redis_url(url or server.url), reactor, **kwargs)
        clients.append(client)
        client.start()
        for _ in range(200):
            if client.available:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        assert client.available
        return client

    yield server, connect
    for client in clients:
        pytest_twisted.blockon(client.stop())


def run(client, call):
    script, keys, args = call
    return client.run(script, keys, args, 2.0)


@pytest_twisted.inlineCallbacks
def test_reservations_hold_the_fleet_and_tenant_limits_atomically(redis_client):
    server, connect = redis_client
    a = yield connect()
    verdicts = []
    for n in range(4):  # tenant limit 3, fleet limit 5
        reply = yield run(a, slots.reserve_call(KEYS, f"CA{n}", "b1", 5, 3, 30_000, "m1"))
        verdicts.append(slots.parse_reserve(reply))
    assert [v.ok for v in verdicts] == [True, True, True, False] and verdicts[-1].limit == "tenant"
    again = slots.parse_reserve((yield run(a, slots.reserve_call(KEYS, "CA0", "b1", 5, 3, 30_000, "m2"))))
    assert again.ok and again.how == "held", "Twilio asking again for a call keeps its one slot"
    for n in (10, 11):
        assert slots.parse_reserve((yield run(a, slots.reserve_call(KEYS, f"CA{n}", None, 5, None, 30_000, "m1")))).ok
    full = slots.parse_reserve((yield run(a, slots.reserve_call(KEYS, "CA12", "b2", 5, None, 30_000, "m1"))))
    assert (full.ok, full.limit, full.fleet_count) == (False, "fleet", 5)
    assert sorted(server.live_slots()) == ["CA0", "CA1", "CA10", "CA11", "CA2"]
    assert len(server.live_slots("{voicebridge}:tenant:b1")) == 3


@pytest_twisted.inlineCallbacks
def test_a_burst_of_reservations_from_many_connections_never_overbooks(redis_client):
    server, connect = redis_client
    clients = yield defer.gatherResults([connect() for _ in range(4)])
    replies = yield defer.gatherResults(
        [run(clients[n % 4], slots.reserve_call(KEYS, f"CA{n}", "b1", None, 7, 30_000, f"m{n % 4}")) for n in range(40)]
    )
    assert sum(slots.parse_reserve(r).ok for r in replies) == 7
    assert len(server.live_slots()) == 7


@pytest_twisted.inlineCallbacks
def test_a_claim_takes_the_reservation_and_tells_the_machine_that_made_it(redis_client):
    from twisted.internet import reactor

    server, connect = redis_client
    heard = []
    a = yield connect(channels=[KEYS.machine("A")], on_message=lambda channel, message: heard.append(json.loads(message)))
    b = yield connect()
    yield task.deferLater(reactor, 0.1, lambda: None)  # A's subscription is made
    assert slots.parse_reserve((yield run(a, slots.reserve_call(KEYS, "CA1", "b1", None, 1, 30_000, "A")))).ok
    claim = slots.parse_claim((yield run(b, slots.claim_call(KEYS, "CA1", "b1", None, 1, 15_000, "B"))))
    assert claim.ok and claim.how == "reserved", "the tenant is full, with this very call"
    for _ in range(100):
        if heard:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert heard == [{"op": "claimed", "sid": "CA1", "by": "B"}]
    info = server.calls()["CA1"]
    assert (info["m"], info["by"], info["s"]) == ("B", "A", "started")
    stranger = slots.parse_claim((yield run(b, slots.claim_call(KEYS, "CA2", "b1", None, 1, 15_000, "B"))))
    assert (stranger.ok, stranger.limit, stranger.how) == (False, "tenant", "new"), "no reservation and no room"
    assert (yield run(a, slots.release_call(KEYS, "A", ["CA1"]))) == 0, "only the machine holding a call releases it"
    assert (yield run(b, slots.release_call(KEYS, "B", ["CA1"]))) == 1
    assert server.live_slots() == [] and server.calls() == {}


@pytest_twisted.inlineCallbacks
def test_lapsed_slots_are_dropped_by_redis_and_renewals_put_back_what_it_lost(redis_client):
    from twisted.internet import reactor

    server, connect = redis_client
    a = yield connect()
    yield run(a, slots.claim_call(KEYS, "CA1", "b1", None, None, 200, "dead-machine"))
    yield run(a, slots.claim_call(KEYS, "CA2", "b1", None, None, 60_000, "A"))
    yield task.deferLater(reactor, 0.4, lambda: None)  # past CA1's deadline: its machine never renewed
    counts = slots.parse_renew((yield run(a, slots.renew_call(KEYS, "A", 60_000, ["b1"], [("CA2", "b1", 1000)], []))), ["b1"])
    assert (counts.put_back, counts.fleet, counts.tenants) == (0, 1, {"b1": 1})
    assert "CA1" not in server.calls(), "dropped from the calls too, and from its tenant"
    server.command("FLUSHALL")  # what a restart without persistence leaves
    renew = slots.renew_call(KEYS, "A", 60_000, ["b1"], [("CA2", "b1", 1000)], [("CA3", "b1", 20_000)])
    counts = slots.parse_renew((yield run(a, renew)), ["b1"])
    assert (counts.put_back, counts.fleet, counts.tenants) == (2, 2, {"b1": 2})
    assert server.calls()["CA3"]["s"] == "reserved" and server.calls()["CA2"]["s"] == "started"
    listed = slots.parse_list((yield run(a, slots.list_call(KEYS, 100))))
    assert {c.call_sid for c in listed} == {"CA2", "CA3"}
    assert next(c for c in listed if c.call_sid == "CA2").seconds >= 1.0, "since it started, not since it came back"


@pytest_twisted.inlineCallbacks
def test_a_unix_socket_and_a_password(redis_client, redis_server):  # noqa: F811
    _, connect = redis_client
    server = redis_server(unix=True, extra=["--requirepass", "pa ss"])
    client = yield connect(f"unix://:pa%20ss@{server.socket_path}")
    assert slots.parse_reserve((yield run(client, slots.reserve_call(KEYS, "CA1", None, None, None, 1000, "m")))).ok


@pytest_twisted.inlineCallbacks
def test_a_command_fails_at_once_while_redis_is_away(redis_client):
    server, connect = redis_client
    a = yield connect()
    server.stop()
    from twisted.internet import reactor

    for _ in range(200):
        if not a.available:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    with pytest.raises(Unavailable):
        yield run(a, slots.reserve_call(KEYS, "CA1", None, None, None, 1000, "m"))


# Call control, pure: what play accepts, what an action does to a call.


def test_play_takes_mulaw_or_an_8khz_mono_pcm_wav_and_nothing_else():
    import io
    import wave

    from voicebridge.fleet.control import ControlError, decode_audio

    assert decode_audio("audio/basic", b"\xff" * 160) == b"\xff" * 160
    pcm = io.BytesIO()
    with wave.open(pcm, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)
    assert decode_audio("audio/wav", pcm.getvalue()) == b"\xff" * 80, "PCM silence is mu-law 0xff"
    stereo = io.BytesIO()
    with wave.open(stereo, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00" * 320)
    for content_type, body, words in [
        ("audio/wav", stereo.getvalue(), "mono 16-bit"),
        ("audio/wav", b"RIFFjunk", "not a WAV"),
        ("audio/mpeg", b"ID3", "audio/basic"),
    ]:
        with pytest.raises(ControlError, match=words) as e:
            decode_audio(content_type, body)
        assert e.value.status == 415


class _Call:
    def __init__(self):
        self.sent = []

    def hangup(self, reason):
        self.sent.append(("hangup", reason))

    def clear(self):
        self.sent.append(("clear",))

    def send_mark(self, name):
        self.sent.append(("mark", name))

    def send_audio(self, audio):
        self.sent.append(("audio", len(audio)))


def test_actions_do_what_they_say_on_the_call():
    import base64

    from voicebridge.fleet.control import ControlError, act_on

    call = _Call()
    act_on(call, "mark", {"name": "checkpoint"})
    result = act_on(call, "play", {"audio": base64.b64encode(b"\x7f" * 400).decode(), "mark": "done"})
    act_on(call, "clear", {})
    act_on(call, "hangup", {})
    assert call.sent == [("mark", "checkpoint"), ("audio", 160), ("audio", 160), ("audio", 80), ("mark", "done"),
                         ("clear",), ("hangup", "hangup")]
    assert result["seconds"] == 0.05
    with pytest.raises(ControlError, match="needs a name"):
        act_on(call, "mark", {})
    with pytest.raises(ControlError) as e:
        act_on(call, "transfer", {})
    assert e.value.status == 404


def test_the_calls_command_wants_a_token_and_a_callsid(monkeypatch, capsys):
    from voicebridge.cli import main

    monkeypatch.delenv("VOICEBRIDGE_CONTROL_TOKEN", raising=False)
    assert main(["calls", "list"]) == 2 and "no control token" in capsys.readouterr().err
    monkeypatch.setenv("VOICEBRIDGE_CONTROL_TOKEN", "t")
    assert main(["calls", "hangup"]) == 2 and "needs a CallSid" in capsys.readouterr().err
    assert main(["calls", "list", "--url", "http://127.0.0.1:1"]) == 1


@pytest_twisted.inlineCallbacks
def test_rediss_verifies_the_servers_certificate(redis_server, pki, tmp_path):  # noqa: F811
    from twisted.internet import reactor

    from tests.nginx import free_port

    leaf, tls_port = pki.leaf(), free_port()
    redis_server(extra=["--tls-port", str(tls_port), "--tls-cert-file", str(leaf.fullchain),
                        "--tls-key-file", str(leaf.key), "--tls-auth-clients", "no"])
    url = parse_redis_url(f"rediss://localhost:{tls_port}/0")
    trusted = Redis(url, reactor, ca_file=str(pki.root_pem))
    untrusted = Redis(url, reactor)  # the system's roots do not know this test's CA
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    trusted.start()
    untrusted.start()
    try:
        def refused():
            return [e for e in events if e.get("event_name") == "fleet.redis_unreachable"]

        for _ in range(250):
            if trusted.available and refused():
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        assert trusted.available and not untrusted.available
        refused = refused()
        assert refused and "certificate verify failed" in refused[0]["reason"], refused
        assert slots.parse_reserve((yield run(trusted, slots.reserve_call(KEYS, "CA1", None, None, None, 1000, "m")))).ok
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield trusted.stop()
        yield untrusted.stop()


def test_without_redis_the_fleet_code_is_not_even_loaded():
    import subprocess
    import sys

    from tests.daemon import REPO, source_env

    code = (
        "import sys; from voicebridge.daemon.tap import Options, makeService; o = Options(); o.parseOptions([]); "
        "makeService(o); print(sorted(m for m in sys.modules if 'redis' in m or m.startswith('voicebridge.fleet.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=source_env(), cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
