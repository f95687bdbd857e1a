"""``--workers``, the pure parts: options, listen descriptions, control lines, merged metrics, shared capacity."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import task
from twisted.python import usage

from tests.fakes import new_call, registry
from voicebridge import control, messages, sockets
from voicebridge.config import Config, Tenant
from voicebridge.metrics import families_to_wire, merge_families
from voicebridge.peers import WorkerSpec, worker_spec
from voicebridge.supervisor import worker_count
from voicebridge.tap import Options


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
    data = control.encode({"op": "census", "started": 2}) + control.encode({"op": "claim", "sid": "CA1"})
    got = []
    for i in range(len(data)):  # one byte at a time
        messages_, problems = decoder.feed(data[i : i + 1])
        assert problems == []
        got += messages_
    assert got == [{"op": "census", "started": 2}, {"op": "claim", "sid": "CA1"}]
    messages_, problems = decoder.feed(b'not json\n[1]\n{"op": "ready"}\n')
    assert messages_ == [{"op": "ready"}] and len(problems) == 2, "bad lines are reported, the good one kept"
    small = control.LineDecoder(max_line=10)
    assert small.feed(b"x" * 11) == ([], ["a line longer than 10 bytes, dropped"])
    assert small.feed(b'{"op":"a"}\n') == ([{"op": "a"}], [])


def test_worker_spec_round_trips_through_the_environment():
    spec = WorkerSpec(1, 2, 0, 3, (("tcp:8080", 4), ("unix:/run/vb.sock", 5)))
    assert worker_spec({"VOICEBRIDGE_WORKER": spec.to_environment()}) == spec
    assert worker_spec({}) is None
    with pytest.raises(ValueError, match="VOICEBRIDGE_WORKER"):
        worker_spec({"VOICEBRIDGE_WORKER": '{"index": 1}'})


def test_merged_metrics_add_amounts_and_keep_times_and_flags_whole():
    def families(started, calls, build, draining, cpu):
        return [
            ["process_start_time_seconds", "start", "gauge", "", [["process_start_time_seconds", {}, started]]],
            ["process_cpu_seconds", "cpu", "counter", "", [["process_cpu_seconds_total", {}, cpu]]],
            [
                "voicebridge_calls",
                "calls",
                "counter",
                "",
                [["voicebridge_calls_total", {"tenant": "t", "outcome": "stop"}, calls]],
            ],
            ["voicebridge_build_info", "v", "gauge", "", [["voicebridge_build_info", {"version": "1"}, build]]],
            ["voicebridge_draining", "d", "gauge", "", [["voicebridge_draining", {}, draining]]],
            [
                "voicebridge_webhook_seconds",
                "w",
                "histogram",
                "",
                [
                    ["voicebridge_webhook_seconds_bucket", {"le": "+Inf", "status": "200"}, calls],
                    ["voicebridge_webhook_seconds_created", {"status": "200"}, started + 1],
                ],
            ],
        ]

    merged = {m.name: m for m in merge_families([families(100.0, 3, 1, 0, 1.5), families(90.0, 4, 1, 1, 2.0)])}
    value = {name: {tuple(sorted(s.labels.items())): s.value for s in m.samples} for name, m in merged.items()}
    assert value["process_start_time_seconds"] == {(): 90.0}, "the earliest start"
    assert value["process_cpu_seconds"] == {(): 3.5}
    assert value["voicebridge_calls"] == {(("outcome", "stop"), ("tenant", "t")): 7.0}
    assert value["voicebridge_build_info"] == {(("version", "1"),): 1.0}, "a version is not counted twice"
    assert value["voicebridge_draining"] == {(): 1.0}, "one worker draining: the machine is draining"
    buckets = {s.name: s.value for s in merged["voicebridge_webhook_seconds"].samples}
    assert buckets == {"voicebridge_webhook_seconds_bucket": 7.0, "voicebridge_webhook_seconds_created": 91.0}


def test_a_registry_goes_over_the_wire_and_back(tmp_path):
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client.exposition import generate_latest

    from voicebridge.metrics import _Families

    reg = CollectorRegistry()
    Counter("frames", "f", ["direction"], registry=reg).labels("in").inc(5)
    Gauge("odd", "inf is not JSON", registry=reg).set(float("inf"))
    import orjson

    wire = orjson.loads(orjson.dumps(families_to_wire(reg)))
    text = generate_latest(_Families(merge_families([wire, wire]))).decode()
    assert 'frames_total{direction="in"} 10.0' in text
    assert "odd +Inf" in text


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
    from voicebridge.limits import Limits

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
    assert not reg.capacity.shared and reg.capacity._claimed == {}


def test_census_changes_in_one_turn_make_one_message():
    from voicebridge.metrics import Metrics
    from voicebridge.peers import SupervisorLink

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
