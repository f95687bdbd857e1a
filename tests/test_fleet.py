"""A fleet for real: a redis-server, three ``twist voicebridge --redis`` processes, and nginx balancing round-robin.

Webhooks are signed as Twilio signs them and go through nginx; each stream is sent straight to a
machine other than the one that answered its webhook (the case a load balancer makes), signed
for the public stream URL. What the fleet wrote is read from Redis itself (tests/redisserver.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from tests.conftest import TOKEN
from tests.daemon import REPO, source_env
from tests.http import call_form, post_form, request
from tests.nginx import free_port
from tests.redisserver import redis_server, wait_until  # noqa: F401  (a fixture)
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

pytestmark = [pytest.mark.fleet, pytest.mark.nginx]
SIGNER = SignatureChecker(TOKEN)
CONTROL_TOKEN = "control-token-0123456789"
LEASE = 3.0

CONFIG = """
[tenants.b1]
numbers = ["+15550100001"]
max_calls = 5

[tenants.b2]
numbers = ["+15550100002"]
max_calls = 40
"""

NGINX = """
upstream fleet {{ {servers} }}
map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://fleet;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_read_timeout 3600s;
    }}
}}
"""


class Fleet:
    def __init__(self, redis, machines, nginx_port):
        self.redis = redis
        self.machines = machines
        self.port = nginx_port
        self.public = f"http://127.0.0.1:{nginx_port}"
        self.stream_url = f"ws://127.0.0.1:{nginx_port}/twilio-media"
        self.names = [m.named("fleet.started")[0]["machine"] for m in machines]

    def webhook(self, sid: str, to: str = "+15550100001", port: int | None = None):
        """A signed webhook, through nginx (or straight to a machine's ``port``)."""
        form = call_form(call_sid=sid, to=to)
        url = f"{self.public}/voice"
        headers = {"Host": f"127.0.0.1:{self.port}", "X-Twilio-Signature": SIGNER.sign(url, form)}
        status, _, body = post_form(port or self.port, "/voice", form, headers)
        assert status == 200, body
        return body

    def answered_by(self, sid: str) -> int:
        """The index of the machine whose webhook answered ``sid``."""

        def find():
            for i, m in enumerate(self.machines):
                if m.named("webhook.answered", callSid=sid) or m.named("webhook.busy", callSid=sid):
                    return i + 1
            return 0

        return wait_until(find, 10)[0] - 1

    def play(self, reactor, sid: str, twiml: bytes, machine: int, frames: int) -> defer.Deferred:
        """The call's stream, straight to machine ``machine``, as Twilio opens it after this TwiML."""
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        script = CallScript(frames=frames, call_sid=sid, custom_parameters=parameters)
        return play_call(
            reactor, stream.get("url"), script, signature=SIGNER.sign(stream.get("url")),
            connect_to=("127.0.0.1", self.machines[machine].port),
        )

    def control(self, machine: int, *args) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "voicebridge", "calls", *args, "--url", f"http://127.0.0.1:{self.machines[machine].port}"],
            capture_output=True, text=True, env=source_env({"VOICEBRIDGE_CONTROL_TOKEN": CONTROL_TOKEN}), cwd=REPO, timeout=30,
        )


@pytest.fixture
def fleet(redis_server, start_daemon, start_nginx, tmp_path):  # noqa: F811
    """``fleet(*extra_args)``: redis-server, three machines and nginx in front of them."""

    def start(*extra, count=3) -> Fleet:
        redis = redis_server()
        config = tmp_path / "fleet.toml"
        config.write_text(CONFIG)
        token = tmp_path / "control-token"
        token.write_text(CONTROL_TOKEN)
        nginx_port = free_port()
        args = [
            "--redis", redis.url, "--public-url", f"http://127.0.0.1:{nginx_port}", "--trusted-proxy", "127.0.0.1",
            "-c", str(config), "--fleet-lease", str(LEASE), "--control-token-file", str(token), *extra,
        ]
        machines = [start_daemon(*args, env={"TWILIO_AUTH_TOKEN": TOKEN}) for _ in range(count)]
        for m in machines:
            m.wait_for(lambda e: e.get("event_name") == "fleet.redis_up")
        servers = " ".join(f"server 127.0.0.1:{m.port};" for m in machines)
        start_nginx(NGINX.format(servers=servers, port=nginx_port), [nginx_port])
        return Fleet(redis, machines, nginx_port)

    return start


def in_thread(f, *args):
    return threads.deferToThread(f, *args)


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_a_tenant_limit_holds_across_the_fleet_and_streams_claim_on_other_machines(fleet):
    from twisted.internet import reactor

    f = yield in_thread(fleet)
    sids = [f"CA{n:032d}" for n in range(8)]
    with ThreadPoolExecutor(8) as pool:  # a burst: all eight at once, spread round-robin by nginx
        bodies = yield in_thread(lambda: list(pool.map(f.webhook, sids)))
    connected = [sid for sid, body in zip(sids, bodies, strict=True) if b"<Connect>" in body]
    busy = [sid for sid, body in zip(sids, bodies, strict=True) if b'<Reject reason="busy"' in body]
    assert (len(connected), len(busy)) == (5, 3), bodies
    by = {sid: f.answered_by(sid) for sid in sids}
    assert len(set(by.values())) == 3, f"nginx spread the webhooks over the three machines: {by}"
    assert sorted(f.redis.live_slots()) == sorted(connected)

    calls = {sid: f.play(reactor, sid, bodies[sids.index(sid)], (by[sid] + 1) % 3, frames=150) for sid in connected}
    yield sleep(reactor, 1.0)  # every stream has started

    def claimed():
        held = f.redis.calls()
        return all(held.get(sid, {}).get("s") == "started" for sid in connected) and held

    held, _ = yield in_thread(wait_until, claimed, 10)
    for sid in connected:
        assert held[sid]["by"] == f.names[by[sid]] and held[sid]["m"] == f.names[(by[sid] + 1) % 3], held[sid]
    late = yield in_thread(f.webhook, "CA" + "9" * 32)
    assert b'<Reject reason="busy"' in late, "five calls live on three machines fill the tenant"

    def fleet_view(machine):
        body = request(f.machines[machine].port, "GET", "/metrics")[2]
        return b'voicebridge_fleet_slots_by_tenant{tenant="b1"} 5.0' in body and b"voicebridge_redis_up 1.0" in body

    for machine in range(3):  # each machine's /metrics shows the fleet's view, from its last renewal
        yield in_thread(wait_until, lambda machine=machine: fleet_view(machine), 2 * LEASE)

    outcomes = yield defer.gatherResults(list(calls.values()))
    for outcome in outcomes:
        assert outcome.close_code == 1000 and outcome.received == outcome.sent, "every frame echoed, wherever it landed"
    yield in_thread(wait_until, lambda: f.redis.live_slots() == [], 10)
    after = yield in_thread(f.webhook, "CA" + "8" * 32)
    assert b"<Connect>" in after, "ended calls free their slots at once"


@pytest_twisted.inlineCallbacks
def test_a_machine_killed_under_calls_frees_its_slots_within_the_lease_and_the_others_serve(fleet):
    from twisted.internet import reactor

    f = yield in_thread(fleet)
    sids = [f"CA{n:032d}" for n in range(3)]
    calls = []
    for sid in sids:
        body = yield in_thread(f.webhook, sid, "+15550100002")
        calls.append(f.play(reactor, sid, body, 0, frames=3000))  # all on machine 0
    yield in_thread(wait_until, lambda: all(f.redis.calls().get(s, {}).get("s") == "started" for s in sids), 10)
    f.machines[0].proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, waited = yield in_thread(wait_until, lambda: not set(sids) & set(f.redis.live_slots()), LEASE + 5, 0.05)
    freed = time.monotonic() - killed
    print(f"\nslots of a machine killed with -9 freed {freed:.2f}s later (lease {LEASE:g}s)")
    assert freed <= LEASE + 1.0, "freed by their deadline on Redis, one lease after the last renewal at most"
    for outcome in (yield defer.gatherResults(calls)):
        assert outcome.close_code != 1000 and outcome.closed_at is not None, "those calls died with their machine"
    body = yield in_thread(f.webhook, "CA" + "7" * 32, "+15550100002")  # nginx skips the dead machine
    assert b"<Connect>" in body
    outcome = yield f.play(reactor, "CA" + "7" * 32, body, 2, frames=25)
    assert outcome.close_code == 1000 and outcome.received == outcome.sent


@pytest_twisted.inlineCallbacks
def test_redis_restarted_under_twenty_live_calls_cuts_none_and_the_counts_come_back(fleet):
    from twisted.internet import reactor

    f = yield in_thread(fleet)
    sids = [f"CA{n:032d}" for n in range(20)]
    calls = []
    for n, sid in enumerate(sids):
        body = yield in_thread(f.webhook, sid, "+15550100002")
        calls.append(f.play(reactor, sid, body, n % 3, frames=1000))  # 20 s of media each: the restart falls inside
    yield in_thread(wait_until, lambda: len([c for c in f.redis.calls().values() if c["s"] == "started"]) == 20, 10)

    f.redis.stop(signal.SIGKILL)
    yield in_thread(wait_until, lambda: all(m.named("fleet.redis_down") for m in f.machines), 10)
    during = yield in_thread(f.webhook, "CA" + "6" * 32, "+15550100002", f.machines[1].port)
    assert b"<Connect>" in during, "--redis-unavailable admit: answered under the machine's own limits"
    assert f.machines[1].named("fleet.redis_unavailable")
    samples = yield in_thread(request, f.machines[1].port, "GET", "/metrics")
    assert b'voicebridge_redis_unavailable_total{decision="admit"} 1.0' in samples[2]
    assert b"voicebridge_redis_up 0.0" in samples[2]

    f.redis.start()  # empty: no persistence
    restarted = time.monotonic()
    live, _ = yield in_thread(wait_until, lambda: len(f.redis.live_slots()) == 21 and f.redis.live_slots(), 10)
    print(f"\ncounts right again {time.monotonic() - restarted:.2f}s after redis-server came back")
    states = f.redis.calls()
    assert sorted(s for s in live if states[s]["s"] == "started") == sorted(sids)
    assert states["CA" + "6" * 32]["s"] == "reserved", "the reservation made without Redis is back too"

    outcomes = yield defer.gatherResults(calls)
    for outcome in outcomes:
        assert outcome.close_code == 1000 and len(outcome.received) == 1000, "no call cut, no frame lost"
    assert all(m.proc.poll() is None for m in f.machines), "no machine crashed"
    yield in_thread(wait_until, lambda: set(f.redis.live_slots()) == {"CA" + "6" * 32}, 10)


@pytest_twisted.inlineCallbacks
def test_a_stream_that_started_elsewhere_while_redis_was_away_is_that_machines_call_once_it_is_back(fleet):
    """The claim at ``start`` missed Redis; the renewal after it returns makes the reservation the
    answering machine put back into the call started on the other, and tells the answering one."""
    from twisted.internet import reactor

    f = yield in_thread(lambda: fleet(count=2))
    f.redis.stop(signal.SIGKILL)
    yield in_thread(wait_until, lambda: all(m.named("fleet.redis_down") for m in f.machines), 10)
    sid = "CA" + "4" * 32
    body = yield in_thread(f.webhook, sid, "+15550100002", f.machines[0].port)
    call = f.play(reactor, sid, body, 1, frames=3000)
    yield in_thread(wait_until, lambda: f.machines[1].named("call.started", callSid=sid), 10)
    f.redis.start()  # empty: machine 0 puts its reservation back, machine 1 its started call

    def started_on_machine_1():
        held = f.redis.calls().get(sid, {})
        return held.get("s") == "started" and held.get("m") == f.names[1] and held

    yield in_thread(wait_until, started_on_machine_1, 4 * LEASE)
    yield sleep(reactor, LEASE)  # a renewal of each: machine 0's reservation does not come back over it
    assert started_on_machine_1()
    hung = yield in_thread(f.control, 0, "hangup", sid)
    assert hung.returncode == 0 and f"machine={f.names[1]}" in hung.stdout, (hung.stdout, hung.stderr)
    outcome = yield call.addTimeout(10, reactor)
    assert outcome.closed_by_server and outcome.close_code == 1000
    yield in_thread(wait_until, lambda: f.redis.live_slots() == [], 10)
    f.machines[0].proc.send_signal(signal.SIGTERM)
    draining = yield in_thread(f.machines[0].wait_for, lambda e: e.get("event_name") == "service.draining")
    assert draining["answered"] == 0, "machine 0 heard of the claim: its reservation is not waited for (nor missed)"


@pytest_twisted.inlineCallbacks
def test_call_control_on_one_machine_hangs_up_a_call_another_holds(fleet, tmp_path):
    from twisted.internet import reactor

    f = yield in_thread(fleet)
    sid = "CA" + "5" * 32
    body = yield in_thread(f.webhook, sid, "+15550100002")
    call = f.play(reactor, sid, body, 0, frames=3000)
    yield in_thread(wait_until, lambda: f.redis.calls().get(sid, {}).get("s") == "started", 10)

    listed = yield in_thread(f.control, 2, "list")
    assert listed.returncode == 0 and sid in listed.stdout and f.names[0] in listed.stdout, listed
    marked = yield in_thread(f.control, 2, "mark", sid, "checkpoint")
    assert marked.returncode == 0, marked.stderr
    sound = tmp_path / "prompt.ulaw"
    sound.write_bytes(b"\x55" * 480)  # 60 ms of mu-law: three frames no echo carries
    played = yield in_thread(f.control, 2, "play", sid, str(sound), "--mark", "prompt-done")
    assert played.returncode == 0 and "seconds=0.06" in played.stdout, (played.stdout, played.stderr)
    cleared = yield in_thread(f.control, 1, "clear", sid)
    assert cleared.returncode == 0, cleared.stderr
    refused = yield in_thread(lambda: request(f.machines[2].port, "GET", "/calls"))
    assert refused[0] == 401
    hung = yield in_thread(f.control, 2, "hangup", sid)
    assert hung.returncode == 0 and f"machine={f.names[0]}" in hung.stdout, (hung.stdout, hung.stderr)
    outcome = yield call.addTimeout(10, reactor)
    assert outcome.closed_by_server and outcome.close_code == 1000
    assert outcome.marks[:2] == ["checkpoint", "prompt-done"] and outcome.clears == 1
    assert outcome.received.count(b"\x55" * 160) == 3, "the prompt reached the caller, frame by frame"
    assert f.machines[0].named("control.action", action="hangup")
    missing = yield in_thread(f.control, 1, "hangup", "CA" + "0" * 32)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_busy_without_redis_when_told_so(redis_server, start_daemon, tmp_path):  # noqa: F811
    redis = redis_server()
    daemon = start_daemon("--redis", redis.url, "--redis-unavailable", "busy")
    daemon.wait_for(lambda e: e.get("event_name") == "fleet.redis_up")
    assert b"<Connect>" in post_form(daemon.port, "/voice", call_form(call_sid="CA" + "1" * 32))[2]
    redis.stop()
    daemon.wait_for(lambda e: e.get("event_name") == "fleet.redis_down")
    assert b'<Reject reason="busy"' in post_form(daemon.port, "/voice", call_form(call_sid="CA" + "2" * 32))[2]
    busy = daemon.wait_for(lambda e: e.get("event_name") == "webhook.busy")
    assert busy["message"].endswith("answered busy: Redis is unavailable and --redis-unavailable is busy")


def test_each_worker_is_a_member_of_the_fleet(redis_server, start_daemon, tmp_path):  # noqa: F811
    """``--workers 2 --redis``: both workers join, and a tenant's limit counts what either answered."""
    redis = redis_server()
    config = tmp_path / "fleet.toml"
    config.write_text(CONFIG)
    daemon = start_daemon("--workers", "2", "--redis", redis.url, "-c", str(config))
    daemon.wait_for(lambda e: len(daemon.named("fleet.redis_up")) == 2, 20)
    assert len({e["machine"] for e in daemon.named("fleet.started")}) == 2, "one member per worker"
    bodies = [post_form(daemon.port, "/voice", call_form(call_sid=f"CA{n:032d}"))[2] for n in range(7)]
    assert sum(b"<Connect>" in b for b in bodies) == 5 and sum(b'<Reject reason="busy"' in b for b in bodies) == 2
    assert len(redis.live_slots()) == 5


def test_the_redis_password_never_reaches_the_log(redis_server, start_daemon, tmp_path):  # noqa: F811
    redis = redis_server(extra=["--requirepass", "hunter2-redis-secret"])
    secret = tmp_path / "redis-password"
    secret.write_text("hunter2-redis-secret\n")
    good = start_daemon("--redis", f"redis://127.0.0.1:{redis.port}/0", "--redis-password-file", str(secret))
    good.wait_for(lambda e: e.get("event_name") == "fleet.redis_up")
    assert good.named("service.listening")[0]["fleet"] == f"redis://:***@127.0.0.1:{redis.port}/0"
    wrong = start_daemon("--redis", f"redis://:not-the-hunter2-password@127.0.0.1:{redis.port}/0")
    refused = wrong.wait_for(lambda e: e.get("event_name") == "fleet.redis_error")
    assert "WRONGPASS" in refused["reason"] or "invalid" in refused["reason"], refused
    assert b"<Connect>" in post_form(wrong.port, "/voice", call_form(call_sid="CA" + "3" * 32))[2], "admitted without Redis"
    for daemon in (good, wrong):
        assert "hunter2" not in daemon.output


def test_a_redis_that_stops_answering_costs_a_webhook_two_seconds_at_most(redis_server, start_daemon):  # noqa: F811
    """A hung Redis (SIGSTOP: connected, silent) is met by the command timeout, not a hung webhook."""
    redis = redis_server()
    daemon = start_daemon("--redis", redis.url)
    daemon.wait_for(lambda e: e.get("event_name") == "fleet.redis_up")
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        assert b"<Connect>" in post_form(daemon.port, "/voice", call_form(call_sid="CA" + "4" * 32))[2]
        warned = daemon.wait_for(lambda e: e.get("event_name") == "fleet.redis_unavailable")
        assert "no answer from Redis within 2s" in warned["why"]
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    assert b"<Connect>" in post_form(daemon.port, "/voice", call_form(call_sid="CA" + "5" * 32))[2]
    wait_until(lambda: "CA" + "5" * 32 in redis.live_slots(), 5)


@pytest_twisted.inlineCallbacks
def test_a_draining_machine_still_takes_the_stream_of_a_call_another_machine_answered(fleet):
    """A rolling deploy: the load balancer may still send a stream to a machine that began draining."""
    from twisted.internet import reactor

    f = yield in_thread(lambda: fleet(count=2))
    first = "CA" + "1" * 32
    body = yield in_thread(f.webhook, first, "+15550100002", f.machines[0].port)
    live = f.play(reactor, first, body, 0, frames=400)  # keeps machine 0 draining for a while
    yield in_thread(wait_until, lambda: f.redis.calls().get(first, {}).get("s") == "started", 10)
    f.machines[0].signal(signal.SIGTERM)
    yield in_thread(f.machines[0].wait_for, lambda e: e.get("event_name") == "service.draining")
    refused = yield in_thread(post_form, f.machines[0].port, "/voice", call_form(call_sid="CA" + "3" * 32))
    assert refused[0] == 503, "no new webhooks while draining"
    second = "CA" + "2" * 32
    body = yield in_thread(f.webhook, second, "+15550100002", f.machines[1].port)
    outcome = yield f.play(reactor, second, body, 0, frames=25)
    assert outcome.opened and outcome.close_code == 1000 and outcome.received == outcome.sent
    assert (yield live).close_code == 1000
    assert f.machines[0].wait_exit(20) == 0


@pytest_twisted.inlineCallbacks
def test_call_control_without_redis_reaches_this_machines_calls_and_is_off_without_a_token(start_daemon, tmp_path):
    from twisted.internet import reactor

    token = tmp_path / "control-token"
    token.write_text(CONTROL_TOKEN)
    plain = start_daemon()
    assert request(plain.port, "GET", "/calls", headers={"Authorization": f"Bearer {CONTROL_TOKEN}"})[0] == 404
    daemon = start_daemon("--control-token-file", str(token))
    sid = "CA" + "6" * 32
    call = play_call(reactor, daemon.url("/twilio-media", "ws"), CallScript(frames=3000, call_sid=sid))
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")
    auth = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
    status, _, body = yield in_thread(lambda: request(daemon.port, "GET", "/calls", headers=auth))
    listed = __import__("json").loads(body)
    assert status == 200 and listed["source"] == "machine" and [c["callSid"] for c in listed["calls"]] == [sid]
    wrong = yield in_thread(lambda: request(daemon.port, "GET", "/calls", headers={"Authorization": "Bearer nope"}))
    assert wrong[0] == 401 and daemon.named("control.refused")
    status, _, body = yield in_thread(lambda: request(daemon.port, "POST", f"/calls/{sid}/hangup", headers=auth))
    assert status == 200, body
    outcome = yield call.addTimeout(10, reactor)
    assert outcome.closed_by_server and outcome.close_code == 1000
