"""Ended calls are freed by reference counting: nothing waits for the cycle collector (issue 16).

Each ended call used to leave reference cycles (the Call and its handler and guards, the stream
protocol and the Deferred Autobahn resolves with it, the HTTP channel and the upgrade request)
that only the collector frees: RSS climbed 66 -> 77 MB over 9 minutes of soak. Here the daemon's
own Site (``tap.makeService``) serves real loopback calls in this process with the collector
switched off; once the calls have ended, not one of those objects may remain.
"""

from __future__ import annotations

import gc

import pytest
import pytest_twisted
from twisted.internet import defer, task

from voicebridge.call.call import Call
from voicebridge.call.guards import CallGuards
from voicebridge.call.stats import CALL_OBJECTS
from voicebridge.call.stream import MediaStreamProtocol
from voicebridge.daemon.tap import Options, makeService
from voicebridge.handlers.relay import RelayHandler, UpstreamProtocol
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.web.channel import BoundedChannel, BoundedRequest

SERVER_TYPES = (Call, CallGuards, MediaStreamProtocol, BoundedChannel, BoundedRequest, RelayHandler, UpstreamProtocol)


@pytest.fixture(autouse=True)
def reactor_as_found(monkeypatch):
    """makeService engages the fast path on the process's reactor: put it back for the tests after."""
    from twisted.internet import reactor

    from voicebridge.fastpath import leanloop
    from voicebridge.net.leanclient import LeanClientFrames

    monkeypatch.setattr(LeanClientFrames, "lean", LeanClientFrames.lean)
    installed = getattr(reactor.doIteration, "__func__", None) is leanloop._poll
    yield
    if not installed:
        leanloop.uninstall(reactor)


def serve(reactor, *args):
    options = Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
    return reactor.listenTCP(0, makeService(options, reactor).site, interface="127.0.0.1")


def server_objects(existing=()) -> dict:
    """The server's call objects in memory, reachable or not (the collector is off: garbage stays),
    other than ``existing`` (what other tests in this process still hold)."""
    known = {id(obj) for obj in existing}
    found: dict = {}
    for obj in gc.get_objects():
        if isinstance(obj, SERVER_TYPES) and id(obj) not in known:
            found[type(obj).__name__] = found.get(type(obj).__name__, 0) + 1
    return found


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("handler", ["echo", "record", "relay"])
def test_ended_calls_are_freed_without_the_cycle_collector(handler, tmp_path):
    from twisted.internet import reactor

    from tests.mediaapp import MediaApp

    app = None
    if handler == "relay":
        app = yield MediaApp().listen(reactor)
        args = ["--handler", "relay", "--relay-url", app.url]
    elif handler == "record":
        args = ["--handler", "record", "--record-dir", str(tmp_path), "--record-handler", "echo"]
    else:
        args = []
    port = serve(reactor, *args)
    url = f"ws://127.0.0.1:{port.getHost().port}/twilio-media"
    try:
        yield play_call(reactor, url, CallScript(frames=2, linger=0.05))  # imports and caches warmed
        yield task.deferLater(reactor, 0.2, lambda: None)
        gc.collect()
        gc.disable()
        # Held here (so their ids stay theirs): objects other tests in this process still keep.
        existing = [obj for obj in gc.get_objects() if isinstance(obj, SERVER_TYPES)]
        existing_calls = set(CALL_OBJECTS)
        try:
            scripts = [
                CallScript(frames=5, linger=0.05, dtmf="1", marks=("m",), send_stop=i % 3 != 0, close_after=0.05)
                for i in range(12)
            ]
            outcomes = yield defer.gatherResults([play_call(reactor, url, s) for s in scripts])
            assert all(o.opened and o.received == o.sent for o in outcomes), "the calls worked"
            for _ in range(50):  # the server finishes closing (and saving) a moment after the client
                if not set(CALL_OBJECTS) - existing_calls and not server_objects(existing):
                    break
                yield task.deferLater(reactor, 0.1, lambda: None)
            assert not set(CALL_OBJECTS) - existing_calls, "every ended Call was freed"
            assert server_objects(existing) == {}, "no call object is left waiting for the cycle collector"
        finally:
            gc.enable()
    finally:
        yield port.stopListening()
        if app is not None:
            yield app.stop()
    if handler == "record":
        assert len(list(tmp_path.glob("*.wav"))) == len(list(tmp_path.glob("*.json"))) == 13


def test_the_soak_script_runs_and_ends_with_no_call_object_left():
    """benchmarks/soak.py keeps working (a few seconds of it; its figures are in docs/benchmarks.md, not asserted)."""
    import json
    import subprocess
    import sys

    from tests.daemon import REPO, source_env

    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--minutes", "0.15", "--every", "3", "--concurrency", "3"]
        + ["--frames", "10", "--no-gc", "--json"],
        capture_output=True,
        text=True,
        env=source_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])["summary"]
    assert summary["calls_churned"] > 0 and summary["calls_failed"] == 0
    assert summary["call_objects_at_end"] == 0
