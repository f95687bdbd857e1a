"""``--workers``, the pure parts: options, listen descriptions, control lines, merged metrics, shared capacity."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import task
from twisted.python import usage

from tests.fakes import new_call, registry
from voicebridge.config.file import Config, Tenant
from voicebridge.daemon.tap import Options
from voicebridge.observe.metrics import by_worker, families_to_wire
from voicebridge.twilio import messages
from voicebridge.workers import control, sockets
from voicebridge.workers.bookkeeping import worker_count
from voicebridge.workers.peers import WorkerSpec, worker_spec


def test_twists_log_level_reaches_the_workers():
    from voicebridge.workers.bookkeeping import twist_log_level

    assert twist_log_level(["twist", "--log-level=debug", "voicebridge", "--workers", "2"]) == ["--log-level=debug"]
    assert twist_log_level(["twist", "--log-level", "warn", "voicebridge"]) == ["--log-level", "warn"]
    assert twist_log_level(["twist", "voicebridge", "--log-level=debug"]) == [], "after the plugin: not twist's"
    assert twist_log_level(["twistd", "-n", "voicebridge"]) == []


def test_worker_count():
    assert worker_count("3") == 3
    assert worker_count("auto") == len(__import__("os").sched_getaffinity(0)) >= 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="--workers"):
            worker_count(bad)


def test_options_check_workers_and_their_listen_endpoints():
    options = Options()
    options.parseOptions(["--workers", "2", "--listen", "tcp:0:interface=127.0.0.1"])
    assert options["worker_count"] == 2
    assert options.argv == ["--workers", "2", "--listen", "tcp:0:interface=127.0.0.1"], "what every worker is given"
    assert Options().parseOptions([]) is None
    for args, expected in [
        (["--workers", "0"], "a number of processes"),
        (["--workers", "2", "--listen", "onion:80"], "not onion:"),
        (["--workers", "2", "--listen", "tcp:http"], "TCP port number"),
        (["--workers", "2", "--listen", "tcp:80:bogus=1"], "unknown key(s) bogus"),
    ]:
        with pytest.raises(usage.UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            Options().parseOptions(args)


def test_call_control_across_workers_needs_the_fleets_redis(tmp_path):
    token = tmp_path / "control-token"
    token.write_text("control-token-0123456789abcdef")
    with pytest.raises(usage.UsageError, match="--control-token-file with --workers 2 needs --redis"):
        Options().parseOptions(["--workers", "2", "--control-token-file", str(token)])
    alone = Options()
    alone.parseOptions(["--workers", "1", "--control-token-file", str(token)])
    assert alone["control_token"] is not None, "one process sees every call"
    fleet = Options()
    fleet.parseOptions(["--workers", "2", "--control-token-file", str(token), "--redis", "redis://127.0.0.1:6390/0"])
    assert fleet["fleet"] is not None
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    with pytest.raises(usage.UsageError, match=f"--control-token-file {empty} is empty"):
        Options().parseOptions(["--control-token-file", str(empty)])


def test_parse_listen():
    tcp = sockets.parse_listen("tcp:8080:interface=127.0.0.1:backlog=100")
    assert (tcp.kind, tcp.port, tcp.interface, tcp.backlog, tcp.per_worker, tcp.family) == (
        "tcp",
        8080,
        "127.0.0.1",
        100,
        True,
        socket.AF_INET,
    )
    assert sockets.parse_listen("tcp:port=9000").port == 9000
    assert sockets.parse_listen("tcp:8080:interface=\\:\\:1").family == socket.AF_INET6
    six = sockets.parse_listen("tcp6:8080")
    assert (six.interface, six.family) == ("::", socket.AF_INET6)
    ssl = sockets.parse_listen("ssl:443:privateKey=k.pem:certKey=c.pem:interface=0.0.0.0")
    assert (ssl.kind, ssl.port, ssl.per_worker) == ("ssl", 443, True)
    for shared in ("unix:/run/vb.sock:mode=660", "systemd:domain=INET:index=0"):
        assert not sockets.parse_listen(shared).per_worker
    with pytest.raises(sockets.ListenError, match="privateKey= is required"):
        sockets.parse_listen("ssl:443")


def test_reuseport_sockets_share_a_port_and_take_no_connection_until_listening():
    spec = sockets.parse_listen("tcp:0:interface=127.0.0.1")
    first = sockets.bind_reuseport(spec)
    port = first.getsockname()[1]
    second = sockets.bind_reuseport(spec, port)
    try:
        first.listen(8)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        first.setblocking(True)
        first.settimeout(5)
        accepted, _ = first.accept()  # the bound, not listening, second socket took nothing
        accepted.close()
        client.close()
    finally:
        first.close()
        second.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)  # closed: nothing listens any more


def test_lines_and_control_messages_arrive_whole_whatever_the_chunks():
    decoder = control.LineDecoder()
    census = {"op": "census", "started": 2, "handshaking": 0, "tenants": {}}
    data = control.encode(census) + control.encode({"op": "claim", "sid": "CA1"})
    got = []
    for i in range(len(data)):  # one byte at a time
        messages_, problems = decoder.feed(data[i : i + 1])
        assert problems == []
        got += messages_
    assert got == [census, {"op": "claim", "sid": "CA1"}]
    messages_, problems = decoder.feed(b'not json\n[1]\n{"op": "drained"}\n')
    assert messages_ == [{"op": "drained"}] and len(problems) == 2, "bad lines are reported, the good one kept"
    small = control.LineDecoder(max_line=10)
    assert small.feed(b"x" * 11) == ([], ["a line longer than 10 bytes, dropped"])
    assert small.feed(b'{"op":"cut"}\n') == ([{"op": "cut"}], [])


def test_worker_spec_round_trips_through_the_environment():
    spec = WorkerSpec(1, 2, 0, 3, (("tcp:8080", 4), ("unix:/run/vb.sock", 5)))
    assert worker_spec({"VOICEBRIDGE_WORKER": spec.to_environment()}) == spec
    assert worker_spec({}) is None
    with pytest.raises(ValueError, match="VOICEBRIDGE_WORKER"):
        worker_spec({"VOICEBRIDGE_WORKER": '{"index": 1}'})


def test_workers_families_are_labelled_not_summed():
    def families(calls, started):
        return [
            ["process_start_time_seconds", "start", "gauge", "", [["process_start_time_seconds", {}, started]]],
            [
                "voicebridge_calls",
                "calls",
                "counter",
                "",
                [["voicebridge_calls_total", {"tenant": "t", "outcome": "stop"}, calls]],
            ],
        ]

    merged = {m.name: m for m in by_worker([[0, families(3, 100.0)], [1, families(4, 90.0)]])}
    assert [(s.labels, s.value) for s in merged["voicebridge_calls"].samples] == [
        ({"tenant": "t", "outcome": "stop", "worker": "0"}, 3.0),
        ({"tenant": "t", "outcome": "stop", "worker": "1"}, 4.0),
    ], "a restarted worker resets its own counter, not the machine's"
    assert [s.value for s in merged["process_start_time_seconds"].samples] == [100.0, 90.0]


def test_a_registry_goes_over_the_wire_and_back():
    import orjson
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client.exposition import generate_latest

    from voicebridge.observe.metrics import _Families

    reg = CollectorRegistry()
    Counter("frames", "f", ["direction"], registry=reg).labels("in").inc(5)
    Gauge("odd", "inf is not JSON", registry=reg).set(float("inf"))
    wire = orjson.loads(orjson.dumps(families_to_wire(reg)))
    text = generate_latest(_Families(by_worker([[0, wire], [1, wire]]))).decode()
    assert 'frames_total{direction="in",worker="0"} 5.0' in text and 'frames_total{direction="in",worker="1"} 5.0' in text
    assert 'odd{worker="1"} +Inf' in text


def test_control_messages_are_checked_before_anyone_acts_on_them():
    good = [
        {"op": "census", "started": 1, "handshaking": 0, "tenants": {"b-1": 1}},
        {"op": "reserve", "sid": "CA1", "tenant": None, "seconds": 30.0},
        {"op": "claim", "sid": "CA1"},
        {"op": "metrics", "id": 3, "families": []},
        {"op": "drained"},
    ]
    assert [control.problem(m) for m in good] == [None] * len(good)
    for bad, why in [
        ({"op": "census", "started": "x", "handshaking": 0, "tenants": {}}, "bad or missing 'started'"),
        ({"op": "census", "started": 1, "handshaking": 0, "tenants": [1, 2]}, "bad or missing 'tenants'"),
        ({"op": "census", "started": 1, "handshaking": 0, "tenants": {"t": "a"}}, "bad or missing 'tenants'"),
        ({"op": "census", "started": -1, "handshaking": 0, "tenants": {}}, "bad or missing 'started'"),
        ({"op": "reserve"}, "bad or missing 'sid'"),
        ({"op": "reserve", "sid": "CA1", "tenant": 5, "seconds": 30}, "bad or missing 'tenant'"),
        ({"op": "metrics", "id": [1], "families": []}, "bad or missing 'id'"),
        ({"op": "launch"}, "unknown op 'launch'"),
        ([1], "not a control message"),
    ]:
        assert why in control.problem(bad), bad
    decoder = control.LineDecoder()
    messages_, problems = decoder.feed(b'{"op":"census","started":"x"}\n{"op":"claim","sid":"CA2"}\n')
    assert messages_ == [{"op": "claim", "sid": "CA2"}] and problems == ["census: bad or missing 'started'"]


# Capacity shared between workers: what one worker's Capacity does with what the others told it.


class Peers:
    def __init__(self, started=0, handshaking=0, tenants=None):
        self.started, self.handshaking, self.tenants = started, handshaking, tenants or {}
        self.told: list = []

    def census(self):
        return self.started, self.handshaking

    def started_for(self, tenant_id):
        return self.tenants.get(tenant_id, 0)

    def reserved(self, sid, tenant_id, seconds):
        self.told.append(("reserve", sid, tenant_id, seconds))

    def claimed(self, sid):
        self.told.append(("claim", sid))


def shared_registry(max_calls=None, tenants=()):
    reg, clock = registry(config=Config(tenants={t.id: t for t in tenants}), limits=_limits(max_calls))
    peers = Peers()
    reg.capacity.share_with(peers)
    return reg, clock, peers


def _limits(max_calls):
    from voicebridge.config.limits import Limits

    return Limits(max_calls=max_calls)


def test_the_other_workers_calls_count_against_the_limit():
    reg, _, peers = shared_registry(max_calls=3)
    peers.started, peers.handshaking = 2, 1
    assert reg.capacity.admit_handshake() is not None, "two started and one in handshake elsewhere: full"
    peers.started, peers.handshaking = 3, 0
    assert "limit of 3 calls" in reg.capacity.reserve("CA1", None)
    peers.started = 2
    assert reg.capacity.reserve("CA1", None) is None
    assert peers.told == [("reserve", "CA1", None, 30.0)], "the others hear of the slot"


def test_a_reservation_from_another_worker_holds_a_slot_until_its_start_claims_it():
    reg, clock, peers = shared_registry(max_calls=1)
    reg.capacity.peer_reserved("CA1", None, 30.0)
    assert reg.capacity.reserve("CA2", None) is not None, "the other worker's answered call holds the only slot"
    call, _ = new_call(reg)  # CA1's stream landed here
    call.text_received(messages.twilio_start("MZ1", "CA1", "AC1", {}, 1))
    assert peers.told == [("claim", "CA1")], "the worker that answered it frees its copy"
    assert reg.capacity.counts() == (1, 0, 0)


def test_a_claim_that_overtakes_its_reservation_leaves_no_phantom_slot():
    reg, clock, peers = shared_registry(max_calls=2)
    reg.capacity.peer_claimed("CA1")  # the start, on a third worker, was heard first
    reg.capacity.peer_reserved("CA1", None, 30.0)
    assert reg.capacity.counts() == (0, 0, 0)
    clock.advance(31)
    reg.capacity.peer_reserved("CA1", None, 30.0)  # long after: Twilio's webhook for a new attempt
    assert reg.capacity.counts() == (0, 0, 1)
    clock.advance(31)
    assert reg.capacity.counts() == (0, 0, 0), "and it lapses like any reservation"


def test_a_worker_that_starts_late_hears_the_reservations_made_before_it():
    from voicebridge.config.file import Settings
    from voicebridge.workers.supervisor import Supervisor, WorkerProcess

    clock = task.Clock()
    supervisor = Supervisor(Settings(listen=["tcp:0:interface=127.0.0.1"]), [], 2, clock, environ={})
    first, late = WorkerProcess(supervisor, 0, 0.0), WorkerProcess(supervisor, 1, 0.0)
    supervisor.workers = [first, None]  # the second is being restarted
    sent: dict[int, list] = {0: [], 1: []}
    for w in (first, late):
        w.send = sent[w.index].append
    for sid in ("CA1", "CA2", "CA3"):
        supervisor.received(first, {"op": "reserve", "sid": sid, "tenant": "b-1" if sid == "CA2" else None, "seconds": 30})
        clock.advance(5)
    supervisor.received(first, {"op": "claim", "sid": "CA3"})  # its stream started (on the first worker)
    clock.advance(10)
    supervisor.workers[1] = late
    supervisor.received(late, {"op": "ready"})
    assert sent[1][1:] == [
        {"op": "reserve", "sid": "CA1", "tenant": None, "seconds": 5.0},
        {"op": "reserve", "sid": "CA2", "tenant": "b-1", "seconds": 10.0},
    ], "what is left of each unclaimed reservation; none lapsed, none claimed"
    assert all(control.problem(m) is None for m in sent[1]), "what a worker is handed passes the schema"
    clock.advance(20)
    sent[1].clear()
    supervisor.received(late, {"op": "ready"})
    assert sent[1] == [{"op": "peers", "started": 0, "handshaking": 0, "tenants": {}}], "lapsed ones are not handed on"


def test_no_reservation_is_handed_over_with_less_than_no_time_left():
    """A real clock moves between two readings: one that lapses in between must not go out as -0.5 us."""
    from voicebridge.call.capacity import Reservations

    class Creeping:
        t = 0.0

        def seconds(self):
            self.t += 1e-6
            return self.t

    clock = Creeping()
    reservations = Reservations(clock)
    reservations.hold("CA1", None, 30.0)  # lapses at 30.000001
    clock.t = 29.9999995  # readings now: 30.0000005 (still held), then 30.0000015 (lapsed)
    handed = [{"op": "reserve", "sid": sid, "tenant": t, "seconds": left} for sid, t, left in reservations.remaining()]
    assert [control.problem(m) for m in handed] == [None] * len(handed)
    assert all(m["seconds"] > 0 for m in handed)


def test_a_reservation_handed_over_with_less_time_left_lapses_on_time():
    reg, clock, _ = shared_registry(max_calls=10)
    reg.capacity.reserve("CA-own", None)  # 30 s
    reg.capacity.peer_reserved("CA-old", None, 5.0)  # from the supervisor, made 25 s ago elsewhere
    assert reg.capacity.counts() == (0, 0, 2)
    clock.advance(6)
    assert reg.capacity.counts() == (0, 0, 1), "lapsed although held after a newer one"
    assert reg.capacity.last_answered() == 0.0, "the newest is still the one answered last"


def test_a_tenants_limit_counts_its_calls_on_every_worker():
    tenant = Tenant(id="business-1", numbers=("+15550100001",), max_calls=2)
    reg, _, peers = shared_registry(tenants=[tenant])
    peers.tenants = {"business-1": 1}
    assert reg.capacity.reserve("CA1", tenant) is None
    assert "tenant business-1's limit of 2" in reg.capacity.reserve("CA2", tenant)
    assert reg.started_by_tenant() == {}


def test_a_single_process_tells_nobody():
    reg, _ = registry(limits=_limits(2))
    assert reg.capacity.reserve("CA1", None) is None
    call, _ = new_call(reg)
    call.text_received(messages.twilio_start("MZ1", "CA1", "AC1", {}, 1))
    assert not reg.capacity.shared and reg.capacity.reservations.claimed == {}


def test_census_changes_in_one_turn_make_one_message():
    from voicebridge.observe.metrics import Metrics
    from voicebridge.workers.peers import SupervisorLink

    clock = task.Clock()
    reg, _ = registry()
    reg.clock = clock
    sent = []
    link = SupervisorLink(WorkerSpec(0, 2, 0, 3, ()), reg, Metrics(reg), clock, None, None, None)
    link.send = sent.append
    for _ in range(3):
        new_call(reg)
    assert sent == []
    clock.advance(0)
    assert sent == [{"op": "census", "started": 0, "handshaking": 3, "tenants": {}}]
    clock.advance(0)
    reg.census_changed()
    clock.advance(0)
    assert len(sent) == 1, "an unchanged census is not sent again"


def test_a_bad_message_from_a_worker_is_dropped_and_the_next_one_served():
    from tests.fakes import captured_log
    from voicebridge.config.file import Settings
    from voicebridge.workers.supervisor import Supervisor, WorkerProcess

    clock = task.Clock()
    supervisor = Supervisor(Settings(listen=["tcp:0:interface=127.0.0.1"]), [], 2, clock, environ={})
    workers = [WorkerProcess(supervisor, i, 0.0) for i in range(2)]
    supervisor.workers = list(workers)
    sent: dict[int, list] = {0: [], 1: []}
    for w in workers:
        w.send = sent[w.index].append
    with captured_log() as events:
        workers[0].childDataReceived(
            3,
            b'{"op":"census","started":"x","handshaking":0,"tenants":{}}\n'
            b'{"op":"reserve"}\n'
            b'{"op":"reserve","sid":"CA1","tenant":null,"seconds":30}\n'
            b'{"op":"census","started":2,"handshaking":1,"tenants":{"b-1":2}}\n',
        )
    errors = [e for e in events if e.get("event_name") == "worker.control_error"]
    assert [e["problem"] for e in errors] == ["census: bad or missing 'started'", "reserve: bad or missing 'sid'"]
    assert sent[1] == [
        {"op": "reserve", "sid": "CA1", "tenant": None, "seconds": 30},
        {"op": "peers", "started": 2, "handshaking": 1, "tenants": {"b-1": 2}},
    ], "only the good messages reach the other worker"


def test_a_worker_done_draining_takes_no_stream_while_it_waits_for_the_others():
    from voicebridge.web.admission import DRAINING, Admission

    reg, _ = registry()
    admission = Admission(reg.settings, reg)
    reg.capacity.reserve("CA1", None)
    reg.draining = True
    assert admission.stream("127.0.0.1", "ws://h/twilio-media", "", None) is None, "CA1's stream, while draining"
    reg.drained = True
    assert admission.stream("127.0.0.1", "ws://h/twilio-media", "", None) is DRAINING, "not once its drain is over"
