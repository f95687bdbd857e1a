"""``twist voicebridge --workers 2`` for real: one port, two processes, limits, metrics and drain for the machine.

Each test starts a real supervisor with real workers on loopback, plays Twilio against it, and
reads which worker did what from the log (every worker event carries ``worker``).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.daemon import Daemon, twist_command
from tests.http import call_form, post_form, request
from tests.nginx import free_port, wait_listening
from tests.tlsclient import handshake, trust_root
from voicebridge.tls import listen as tls
from voicebridge.tools.twiliosim import CallScript, play_call

CALLS = 20  # enough that both workers get some: all on one has odds of 2 in a million


def _in_thread(f, *args, **kwargs):
    return threads.deferToThread(f, *args, **kwargs)


def worker_pids(daemon) -> dict[int, int]:
    """worker index -> pid of its newest process."""
    return {e["worker"]: e["pid"] for e in daemon.named("worker.started")}


def scrape(port: int, path="/metrics", **kwargs) -> tuple[dict[str, float], set[str]]:
    """/metrics as ({sample with labels but ``worker``: value summed over the workers}, the workers seen)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = request(port, "GET", path, **kwargs)
    assert status == 200
    samples: dict[str, float] = {}
    workers = set()
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = dict(s.labels)
            if family.name != "voicebridge_workers":
                workers.add(labels.pop("worker"))  # every series names its worker
            name = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            key = f"{s.name}{{{name}}}" if name else s.name
            samples[key] = samples.get(key, 0) + s.value
    return samples, workers


def test_a_supervisor_binds_and_its_workers_answer(start_daemon):
    daemon = start_daemon("--workers", "2")
    banner = daemon.named("service.listening")
    assert len(banner) == 1 and banner[0]["workers"] == 2 and "worker" not in banner[0], "one banner, the supervisor's"
    assert sorted(e["worker"] for e in daemon.named("worker.ready")) == [0, 1]
    assert len(daemon.named("service.development_mode")) == 1
    assert all(request(daemon.port, "GET", "/healthz")[0] == 200 for _ in range(10))
    served = daemon.wait_for(lambda e: e.get("event_name") == "http.access")
    assert served["worker"] in (0, 1) and served["worker_pid"] == worker_pids(daemon)[served["worker"]]
    assert daemon.stop() == 0


@pytest_twisted.inlineCallbacks
def test_calls_spread_over_the_workers_and_metrics_count_the_machine(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--workers", "2")
    url = daemon.url("/twilio-media", "ws")
    outcomes = yield defer.gatherResults([play_call(reactor, url, CallScript(frames=25)) for _ in range(CALLS)])
    for outcome in outcomes:
        assert len(outcome.sent) == 25 and outcome.received == outcome.sent, "every frame echoed"
    ended = yield daemon.wait_for_async(reactor, lambda e: len(daemon.named("call.ended")) == CALLS and e)
    assert ended
    by_worker = [e["worker"] for e in daemon.named("call.started")]
    assert sorted(set(by_worker)) == [0, 1], by_worker
    for _ in range(6):  # whichever worker answers the scrape, it answers for both
        samples, workers = yield _in_thread(scrape, daemon.port)
        assert workers == {"0", "1"}
        assert samples["voicebridge_calls_total{outcome=stop,tenant=none}"] == CALLS
        assert samples["voicebridge_media_frames_total{direction=in}"] == CALLS * 25
        assert samples["voicebridge_media_frames_total{direction=out}"] == CALLS * 25
        assert samples["voicebridge_calls_active"] == 0
        assert samples["voicebridge_workers{state=answered}"] == 2 and samples["voicebridge_workers{state=missing}"] == 0
        assert samples["voicebridge_build_info{version=" + __import__("voicebridge").__version__ + "}"] == 2, "one per worker"
    served = {e["worker"] for e in daemon.named("http.access") if e.get("uri") == "/metrics"}
    assert served, "the scrapes were answered by workers"


def test_max_calls_holds_across_workers(start_daemon):
    """Two answered calls fill --max-calls 2, whichever worker answered them: the others say busy too.

    The other worker hears of each reservation through the supervisor, a moment after the webhook
    is answered (README: within that moment two webhooks can take the same last slot): the test
    waits until it has (``worker.reservation_heard``, a debug event) before the next webhook.
    """
    debug = [*twist_command(), "--log-level=debug", "voicebridge"]
    daemon = start_daemon("--workers", "2", "--max-calls", "2", command=debug)
    answered: dict[int, int] = {0: 0, 1: 0}
    proof = None
    for n in range(60):  # bounded: stop once a worker that answered fewer than 2 itself said busy
        sid = f"CA{n:032d}"
        status, _, body = post_form(daemon.port, "/voice", call_form(call_sid=sid))
        assert status == 200
        event = daemon.wait_for(
            lambda e, sid=sid: e.get("callSid") == sid and e.get("event_name") in ("webhook.answered", "webhook.busy")
        )
        if n < 2:
            assert event["event_name"] == "webhook.answered" and b"<Connect>" in body
            answered[event["worker"]] += 1
            daemon.wait_for(
                lambda e, sid=sid, w=event["worker"]: (
                    e.get("event_name") == "worker.reservation_heard" and e.get("callSid") == sid and e.get("worker") == 1 - w
                )
            )
            continue
        assert event["event_name"] == "webhook.busy" and b'<Reject reason="busy"' in body, (n, body)
        if answered[event["worker"]] < 2:
            proof = event
            break
    assert proof is not None, "no busy answer came from a worker holding fewer than 2 calls itself"
    assert "limit of 2 calls" in proof["message"]


@pytest_twisted.inlineCallbacks
def test_sigterm_drains_every_worker_and_they_exit_together(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--workers", "2", "--drain-timeout", "60")
    call = play_call(reactor, daemon.url("/twilio-media", "ws"), CallScript(frames=150))
    started = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")
    busy = started["worker"]
    daemon.signal(signal.SIGTERM)
    yield daemon.wait_for_async(reactor, lambda e: len(daemon.named("service.draining")) == 2 and e)
    statuses = yield _in_thread(lambda: [request(daemon.port, "GET", "/readyz")[0] for _ in range(12)])
    assert statuses == [503] * 12, "every worker says it is draining"
    idle_drained = yield daemon.wait_for_async(
        reactor, lambda e: e.get("event_name") == "service.drained" and e.get("worker") == 1 - busy
    )
    assert idle_drained
    outcome = yield call.addTimeout(30, reactor)
    assert len(outcome.sent) == 150 and outcome.received == outcome.sent and outcome.close_code == 1000
    code = yield _in_thread(daemon.wait_exit, 20)
    assert code == 0
    events = daemon.events
    drained_busy = events.index(daemon.named("service.drained", worker=busy)[0])
    idle_exit = events.index(daemon.named("worker.exited", worker=1 - busy)[0])
    assert idle_exit > drained_busy, "the idle worker kept answering 503 until the busy one had drained"
    assert all(e["exit_code"] == 0 for e in daemon.named("worker.exited"))


@pytest_twisted.inlineCallbacks
def test_a_second_sigterm_cuts_the_drain_in_every_worker(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--workers", "2", "--drain-timeout", "60")
    url = daemon.url("/twilio-media", "ws")
    calls = [play_call(reactor, url, CallScript(frames=1000)) for _ in range(6)]
    yield daemon.wait_for_async(reactor, lambda e: len(daemon.named("call.started")) == 6 and e)
    daemon.signal(signal.SIGTERM)
    yield daemon.wait_for_async(reactor, lambda e: len(daemon.named("service.draining")) == 2 and e)
    daemon.signal(signal.SIGTERM)
    outcomes = yield defer.gatherResults([c.addTimeout(20, reactor) for c in calls])
    assert [o.close_code for o in outcomes] == [1001] * 6
    assert (yield _in_thread(daemon.wait_exit, 20)) == 0
    assert len(daemon.named("service.drain_cut")) == 2


def test_a_killed_worker_is_restarted_and_the_other_serves_meanwhile(start_daemon):
    daemon = start_daemon("--workers", "2")
    old = worker_pids(daemon)[0]
    os.kill(old, signal.SIGKILL)
    exited = daemon.wait_for(lambda e: e.get("event_name") == "worker.exited" and e.get("worker") == 0)
    assert exited["signal"] == signal.SIGKILL and exited["delay"] == 1.0
    # Its socket died with it: every connection now reaches the live worker, none is refused or reset.
    assert [request(daemon.port, "GET", "/healthz")[0] for _ in range(20)] == [200] * 20
    since = daemon.since()
    ready = since.wait("worker.ready", timeout=15, worker=0)
    assert ready["pid"] != old
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # both answer again: the restarted one takes its share
        request(daemon.port, "GET", "/healthz")
        if since.named("http.access", worker=0):
            break
    assert since.named("http.access", worker=0)
    assert scrape(daemon.port)[0]["voicebridge_workers{state=answered}"] == 2
    assert daemon.stop() == 0


def test_a_worker_that_cannot_start_never_takes_a_connection(start_daemon, tmp_path):
    config = tmp_path / "voicebridge.toml"
    config.write_text('handler = "echo"\n')
    daemon = start_daemon("--workers", "2", "--config", str(config))
    config.write_text("handler = [not toml\n")  # a bad edit: a restarted worker reads it and stops
    os.kill(worker_pids(daemon)[0], signal.SIGKILL)
    daemon.wait_for(lambda e: e.get("event_name") == "worker.exited" and e.get("worker") == 0)
    failed = daemon.wait_for(lambda e: e.get("event_name") == "worker.exited" and e.get("worker") == 0 and e.get("exit_code"), 15)
    assert failed["delay"] == 2.0, "it keeps failing: the restarts back off"
    assert any("voicebridge.toml" in e.get("line", "") for e in daemon.named("worker.output", worker=0)), "why, in the log"
    # One line per failed start, not twist's 70 lines of usage text on every retry (issue 16).
    def exits():
        return len([e for e in daemon.named("worker.exited", worker=0) if e.get("exit_code")])

    before = exits()
    told = daemon.named("worker.output", worker=0)  # each told just before its worker.exited
    assert before <= len(told) <= exits() + 1, [e["line"][:80] for e in told]
    assert all(len(e["line"]) < 700 and "is not valid TOML" in e["line"] for e in told), [e["line"][:300] for e in told]
    statuses = [request(daemon.port, "GET", "/healthz")[0] for _ in range(40)]
    assert statuses == [200] * 40
    assert {e["worker"] for e in daemon.named("http.access")} == {1}
    config.write_text('handler = "echo"\n')
    daemon.wait_for(
        lambda e: e.get("event_name") == "worker.ready" and e.get("worker") == 0 and e.get("pid") != failed["pid"], 15
    )
    assert daemon.stop() == 0


def _unix_get(path: str, url: str) -> int:
    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(path)

    conn = UnixConnection("localhost")
    try:
        conn.request("GET", url)
        return conn.getresponse().status
    finally:
        conn.close()


def _served_concurrently(daemon, get, count: int = 40) -> set[int]:
    """The workers that answered ``count`` GETs made 8 at a time on a socket the workers share.

    Concurrent, because one after another the worker the kernel wakes first (an idle one) may
    take every connection; under load, one accept per wake-up leaves the next to the other.
    """
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: get(), range(count)))
    assert statuses == [200] * count
    daemon.wait_for(lambda e: len(daemon.named("http.access")) >= count and e)
    return {e["worker"] for e in daemon.named("http.access")}


def test_a_unix_socket_is_shared_by_the_workers_and_outlives_one(start_daemon, tmp_path):
    path = str(tmp_path / "vb.sock")
    daemon = start_daemon("--workers", "2", "--listen", f"unix:{path}")
    assert daemon.named("service.listening")[0]["addresses"] == f"unix {path}"
    assert _served_concurrently(daemon, lambda: _unix_get(path, "/healthz")) == {0, 1}, "one accept per wake-up"
    os.kill(worker_pids(daemon)[1], signal.SIGKILL)
    daemon.wait_for(lambda e: e.get("event_name") == "worker.exited" and e.get("worker") == 1)
    assert os.path.exists(path), "the socket file stays: the other worker still accepts on it"
    assert [_unix_get(path, "/healthz") for _ in range(10)] == [200] * 10
    assert daemon.stop() == 0
    assert not os.path.exists(path), "the supervisor removes it at the end"


@pytest_twisted.inlineCallbacks
def test_signed_calls_over_tls_and_sighup_reloads_every_worker(start_daemon, pki, tmp_path):
    from twisted.internet import reactor

    from tests.conftest import PUBLIC, TOKEN
    from voicebridge.twilio.signatures import SignatureChecker

    live = tmp_path / "live"
    live.mkdir()
    first = pki.leaf()
    shutil.copy(first.key, live / "privkey.pem")
    shutil.copy(first.fullchain, live / "fullchain.pem")
    listen = f"ssl:0:interface=127.0.0.1:privateKey={live / 'privkey.pem'}:certKey={live / 'fullchain.pem'}"
    daemon = start_daemon("--workers", "2", "--listen", listen, "--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})
    assert sorted(e["worker"] for e in daemon.named("tls.loaded")) == [0, 1]
    signature = SignatureChecker(TOKEN).sign("wss://voice.example.test/twilio-media", {})
    url = f"wss://voice.example.test:{daemon.port}/twilio-media"
    calls = [
        play_call(
            reactor, url, CallScript(frames=20), signature, trust_root=trust_root(pki), connect_to=("127.0.0.1", daemon.port)
        )
        for _ in range(8)
    ]
    outcomes = yield defer.gatherResults(calls)
    assert all(o.received == o.sent and len(o.sent) == 20 for o in outcomes), "signatures check out in every worker"

    renewed = pki.leaf("renewed")
    shutil.copy(renewed.key, live / "privkey.pem")
    shutil.copy(renewed.fullchain, live / "fullchain.pem")
    daemon.signal(signal.SIGHUP)
    yield daemon.wait_for_async(reactor, lambda e: len(daemon.named("tls.reloaded")) == 2 and e)
    assert sorted(e["worker"] for e in daemon.named("tls.reloaded")) == [0, 1]
    fingerprint = tls.load_material(str(renewed.key), str(renewed.fullchain)).fingerprint
    assert {e["sha256"] for e in daemon.named("tls.reloaded")} == {fingerprint}
    leaves = yield _in_thread(lambda: [handshake(daemon.port, pki.root_pem).leaf for _ in range(10)])
    assert leaves == [renewed.certificate] * 10


def test_a_socket_systemd_passes_is_shared_by_the_workers():
    """systemd's own socket-activate tool holds the port and execs the supervisor, as the .socket unit does."""

    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate is missing, and CI=true requires it (apt-get install systemd)")
        pytest.skip("systemd-socket-activate is not installed (apt-get install systemd)")
    port = free_port()
    daemon = Daemon(
        ["--workers", "2", "--listen", "systemd:domain=INET:index=0"],
        command=[
            activate,
            "--fdname=voicebridge",  # Twisted takes LISTEN_FDS only with LISTEN_FDNAMES, as systemd 227+ sets both
            "-E",
            "PYTHONPATH",
            "-E",
            "PYTHONUNBUFFERED",
            "-l",
            f"127.0.0.1:{port}",
            *twist_command(),
            "voicebridge",
        ],
    )
    daemon.start(wait=False)
    try:
        wait_listening(port, 30)
        listening = daemon.wait_for(lambda e: e.get("event_name") == "service.listening", 30)
        assert listening["addresses"] == f"systemd 127.0.0.1:{port}" and listening["workers"] == 2
        assert _served_concurrently(daemon, lambda: request(port, "GET", "/healthz")[0]) == {0, 1}
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(20) == 0
    finally:
        daemon.stop()


def test_twistd_runs_the_workers_too(start_daemon):

    twistd = twist_command()[0].replace("twist", "twistd") if twist_command()[0].endswith("twist") else None
    command = [twistd] if twistd else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    daemon = start_daemon("--workers", "2", command=[*command, "-n", "--pidfile=", "voicebridge"])
    assert "workers 2" in daemon.output
    assert [request(daemon.port, "GET", "/healthz")[0] for _ in range(10)] == [200] * 10
    # twistd logs in voicebridge's format too: JSON lines here, the workers' lines naming the worker.
    relayed = daemon.wait_for(lambda e: e.get("event_name") == "http.access" and "worker_pid" in e)
    assert relayed["worker"] in (0, 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


def test_tcp6_takes_what_twisteds_tcp6_takes(start_daemon):
    """No IPV6_V6ONLY of voicebridge's own: IPv4 clients reach a tcp6: listener as the system decides."""
    single = start_daemon("--listen", "tcp6:0:interface=\\:\\:")
    workers = start_daemon("--workers", "2", "--listen", "tcp6:0:interface=\\:\\:")

    def reaches(port):
        try:
            return request(port, "GET", "/healthz")[0]
        except OSError as e:
            return type(e).__name__

    assert reaches(single.port) == reaches(workers.port)
    if open("/proc/sys/net/ipv6/bindv6only").read().strip() == "0":
        assert reaches(workers.port) == 200, "dual stack here: IPv4 on 127.0.0.1 is served"
