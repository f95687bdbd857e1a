"""The fast path's switch and self-check: off by flag, environment or a private name gone; calls echo either way."""

from __future__ import annotations

import socket
import sys

import pytest
import pytest_twisted
from twisted.internet import abstract, defer, posixbase
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.selectreactor import SelectReactor
from twisted.logger import globalLogPublisher
from twisted.python import usage

from tests.daemon import REPO
from voicebridge.daemon.tap import Options
from voicebridge.fastpath import leanloop, selfcheck, switch
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.workers import sockets

# What the operator asks for: pure.


@pytest.mark.parametrize(
    "flag, env, on, reason",
    [
        (False, {}, True, "requested"),
        (False, {"VOICEBRIDGE_FAST_PATH": "on"}, True, "requested"),
        (False, {"VOICEBRIDGE_FAST_PATH": " OFF "}, False, "VOICEBRIDGE_FAST_PATH=off"),
        (True, {}, False, "--no-fast-path"),
        (True, {"VOICEBRIDGE_FAST_PATH": "on"}, False, "--no-fast-path"),
    ],
)
def test_the_flag_wins_over_the_environment(flag, env, on, reason):
    assert switch.requested(flag, env) == switch.Decision(on, reason)


def test_a_bad_environment_value_is_named():
    with pytest.raises(ValueError, match="VOICEBRIDGE_FAST_PATH='fast': use on or off"):
        switch.requested(False, {"VOICEBRIDGE_FAST_PATH": "fast"})


def test_options_carry_the_request_into_settings(monkeypatch):
    monkeypatch.delenv("VOICEBRIDGE_FAST_PATH", raising=False)
    options = Options()
    options.parseOptions(["--no-fast-path"])
    assert (options.settings().fast_path, options.settings().fast_path_reason) == (False, "--no-fast-path")
    monkeypatch.setenv("VOICEBRIDGE_FAST_PATH", "sometimes")
    with pytest.raises(usage.UsageError, match="VOICEBRIDGE_FAST_PATH='sometimes'"):
        Options().parseOptions([])


def test_decide_runs_the_check_only_when_asked_for_the_fast_path():
    asked = []

    def check(reactor):
        asked.append(reactor)
        return ["some.Name (missing)"]

    off = switch.Decision(False, "--no-fast-path")
    assert switch.decide(off, "reactor", check) is off and asked == []
    decision = switch.decide(switch.Decision(True, "requested"), "reactor", check)
    assert decision == switch.Decision(False, "self-check failed: some.Name (missing)", ("some.Name (missing)",))


@pytest.mark.parametrize(
    "request_, check, lean",
    [
        (switch.Decision(False, "--no-fast-path"), lambda r: [], False),
        (switch.Decision(True, "requested"), lambda r: ["autobahn.X._onMessage (missing)"], False),
        (switch.Decision(True, "requested"), lambda r: [], True),
    ],
)
def test_the_provider_links_lean_frames_follow_the_switch(request_, check, lean, monkeypatch):
    from voicebridge.net.leanclient import LeanClientFrames

    monkeypatch.setattr(LeanClientFrames, "lean", not lean)
    switch.engage(request_, "reactor", install=False, check=check)
    assert LeanClientFrames.lean is lean


# The self-check, against the real Twisted, Autobahn and websockets with one name taken away.


@pytest.fixture
def epoll():
    reactor = EPollReactor()
    yield reactor
    reactor._poller.close()


def test_this_install_passes_the_self_check(epoll):
    assert selfcheck.problems(epoll) == []
    assert selfcheck.problems(SelectReactor()) == [], "no poll step to check on another reactor; the rest passes"
    assert switch.decide(switch.Decision(True, "requested"), SelectReactor()).reason.endswith("(not epoll)")


def _remove_fd_attribute(monkeypatch, name):
    """A FileDescriptor whose __init__ no longer sets ``name`` (as after a rename in Twisted)."""
    original = abstract.FileDescriptor.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.__dict__.pop(name, None)

    monkeypatch.setattr(abstract.FileDescriptor, "__init__", init)
    if name in vars(abstract.FileDescriptor):
        monkeypatch.delattr(abstract.FileDescriptor, name)


def _remove_protocol_attribute(monkeypatch, name):
    """An Autobahn connection that no longer has ``name`` (as after a rename in Autobahn)."""
    from autobahn.websocket.protocol import WebSocketProtocol

    original = WebSocketProtocol._connectionMade

    def connection_made(self):
        original(self)
        self.__dict__.pop(name, None)

    monkeypatch.setattr(WebSocketProtocol, "_connectionMade", connection_made)


REMOVALS = {
    "EPollReactor._doReadOrWrite": lambda mp, r: mp.delattr(posixbase._PollLikeMixin, "_doReadOrWrite"),
    "EPollReactor._disconnectSelectable": lambda mp, r: mp.delattr(posixbase._DisconnectSelectableMixin, "_disconnectSelectable"),
    "EPollReactor._poller": lambda mp, r: mp.delattr(r, "_poller"),
    "EPollReactor._selectables": lambda mp, r: mp.setattr(r, "_selectables", []),
    "tcp.Server.dataBuffer": lambda mp, r: _remove_fd_attribute(mp, "dataBuffer"),
    "tcp.Server._tempDataLen": lambda mp, r: _remove_fd_attribute(mp, "_tempDataLen"),
    "tcp.Server._writeDisconnected": lambda mp, r: _remove_fd_attribute(mp, "_writeDisconnected"),
    "WebSocketProtocol._perMessageCompress": lambda mp, r: _remove_protocol_attribute(mp, "_perMessageCompress"),
    "WebSocketProtocol.send_queue": lambda mp, r: _remove_protocol_attribute(mp, "send_queue"),
    "WebSocketProtocol.utf8validator": lambda mp, r: _remove_protocol_attribute(mp, "utf8validator"),
    "WebSocketProtocol._cancelAutoPingTimeoutCall": lambda mp, r: mp.delattr(
        sys.modules["autobahn.websocket.protocol"].WebSocketProtocol, "_cancelAutoPingTimeoutCall"
    ),
    "WebSocketProtocol._onMessage": lambda mp, r: mp.setattr(
        sys.modules["autobahn.twisted.websocket"].WebSocketAdapterProtocol, "_onMessage", lambda self, payload: None
    ),
    "websockets.speedups.apply_mask": lambda mp, r: mp.setitem(sys.modules, "websockets.speedups", None),
}


@pytest.mark.parametrize("name", sorted(REMOVALS))
def test_a_missing_or_misshapen_name_is_named(name, monkeypatch, epoll):
    import autobahn.twisted.websocket  # noqa: F401  (the modules the removals reach into)

    REMOVALS[name](monkeypatch, epoll)
    found = selfcheck.problems(epoll)
    monkeypatch.undo()
    assert found, f"taking away {name} went unnoticed"
    assert any(name.rsplit(".", 1)[1] in problem for problem in found), found


# The lean poll step, should a name go while it runs.


def test_the_poll_step_falls_back_to_twisteds_own_and_the_loop_goes_on(epoll):
    events = []
    globalLogPublisher.addObserver(events.append)
    leanloop.install(epoll)
    poller = epoll._poller
    try:
        epoll._poller = object()  # as if renamed under the running step
        epoll.doIteration(0)
    finally:
        epoll._poller = poller
        globalLogPublisher.removeObserver(events.append)
    assert epoll.doIteration.__func__ is not leanloop._poll, "Twisted's own poll step again"
    (disabled,) = [e for e in events if e.get("event_name") == "fastpath.disabled"]
    assert "poll" in disabled["missing"]
    a, b = socket.socketpair()
    got = []

    class Reader:
        def fileno(self):
            return b.fileno()

        def doRead(self):
            got.append(b.recv(10))

        def connectionLost(self, reason):
            pass

        def logPrefix(self):
            return "Reader"

    reader = Reader()
    epoll.addReader(reader)
    a.send(b"still")
    epoll.doIteration(0.1)
    epoll.removeReader(reader)
    a.close()
    b.close()
    assert got == [b"still"]


def test_a_name_missing_while_handling_an_event_hands_over_to_twisteds_step(epoll, monkeypatch):
    events = []
    globalLogPublisher.addObserver(events.append)
    leanloop.install(epoll)
    a, b = socket.socketpair()

    class Reader:
        def fileno(self):
            return b.fileno()

        def doRead(self):
            b.recv(10)

        def connectionLost(self, reason):
            pass

        def logPrefix(self):
            return "Reader"

    def renamed(selectable, fd, event):
        raise AttributeError("'EPollReactor' object has no attribute '_renamed'", name="_renamed", obj=epoll)

    reader = Reader()
    try:
        epoll.addReader(reader)
        monkeypatch.setattr(epoll, "_doReadOrWrite", renamed)
        a.send(b"x")
        epoll.doIteration(0.1)
    finally:
        epoll.removeReader(reader)
        a.close()
        b.close()
        globalLogPublisher.removeObserver(events.append)
    assert epoll.doIteration.__func__ is not leanloop._poll
    assert [e["event_name"] for e in events if e.get("event_name")] == ["reactor.io_error", "fastpath.disabled"]


# Workers' shared sockets: the private constructor where it is there, else the public adoptStreamPort.


def test_a_missing_private_constructor_is_named(monkeypatch):
    from twisted.internet import tcp

    assert sockets.private_adopt_problems() == []
    monkeypatch.delattr(tcp.Port, "_fromListeningDescriptor")
    assert sockets.private_adopt_problems() == ["twisted.internet.tcp.Port._fromListeningDescriptor (missing)"]


@pytest.mark.parametrize("private", [True, False])
def test_a_shared_socket_is_adopted_either_way(private, monkeypatch):
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    if not private:
        monkeypatch.setattr(sockets, "private_adopt_problems", lambda: ["twisted.internet.tcp.Port._fromListeningDescriptor"])
    events = []
    globalLogPublisher.addObserver(events.append)
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = sockets.adopt(reactor, listener.fileno(), sockets.ListenSpec("systemd:", "systemd"), Factory.forProtocol(Protocol))
        assert port.getHost().port == listener.getsockname()[1]
        assert isinstance(port, sockets._OneAcceptTCPPort) is private
        port.stopListening()
    finally:
        listener.close()
        globalLogPublisher.removeObserver(events.append)
    assert bool([e for e in events if e.get("event_name") == "workers.adopt_fallback"]) is not private


# The daemon: a real ``twist voicebridge`` on each side of the switch, echoing a call.

SHIMS = {
    # websockets without its C masker.
    "websockets.speedups.apply_mask": "import sys\nsys.modules['websockets.speedups'] = None\n",
    # A Twisted whose epoll reactor renamed _doReadOrWrite: Twisted's own code still finds it, voicebridge does not.
    "EPollReactor._doReadOrWrite": (
        "import sys\n"
        "from twisted.internet.epollreactor import EPollReactor\n"
        "original = EPollReactor.__getattribute__\n"
        "def hidden(self, name):\n"
        "    if name == '_doReadOrWrite' and not sys._getframe(1).f_globals.get('__name__', '').startswith('twisted.'):\n"
        "        raise AttributeError(name)\n"
        "    return original(self, name)\n"
        "EPollReactor.__getattribute__ = hidden\n"
    ),
}


@defer.inlineCallbacks
def _echoes(daemon, frames=30):
    from twisted.internet import reactor

    outcome = yield play_call(reactor, daemon.url("/twilio-media", "ws"), CallScript(frames=frames)).addTimeout(30, reactor)
    assert outcome.opened and len(outcome.sent) == frames
    assert outcome.received == outcome.sent, "every frame echoed, unchanged and in order"
    assert outcome.close_code == 1000


def _banner(daemon) -> dict:
    (banner,) = daemon.named("service.listening")
    return banner


@pytest.mark.parametrize("name", sorted(SHIMS))
@pytest_twisted.inlineCallbacks
def test_a_missing_name_turns_the_fast_path_off_and_calls_still_echo(name, start_daemon, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SHIMS[name])
    daemon = start_daemon(env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    (disabled,) = daemon.named("fastpath.disabled")
    assert disabled["level"] == "warn" and name in disabled["missing"]
    banner = _banner(daemon)
    assert banner["fast_path"] == "off" and name in banner["fast_path_reason"]
    yield _echoes(daemon)


@pytest.mark.parametrize(
    "args, env, reason", [(["--no-fast-path"], {}, "--no-fast-path"), ([], {"VOICEBRIDGE_FAST_PATH": "off"}, "=off")]
)
@pytest_twisted.inlineCallbacks
def test_switched_off_the_daemon_echoes_and_says_so(args, env, reason, start_daemon):
    daemon = start_daemon(*args, env=env)
    banner = _banner(daemon)
    assert banner["fast_path"] == "off" and reason in banner["fast_path_reason"]
    assert not daemon.named("fastpath.disabled"), "asked for, not a failure"
    yield _echoes(daemon)


@pytest_twisted.inlineCallbacks
def test_by_default_the_fast_path_is_on_after_the_self_check(start_daemon):
    daemon = start_daemon()
    assert (_banner(daemon)["fast_path"], _banner(daemon)["fast_path_reason"]) == ("on", "self-check passed")
    yield _echoes(daemon)


@pytest_twisted.inlineCallbacks
def test_workers_take_the_switch_from_their_supervisor(start_daemon):
    """--workers passes the flag on: the supervisor's banner says off, and a worker echoes on the plain path."""
    daemon = start_daemon("--workers", "2", "--no-fast-path")
    banner = _banner(daemon)
    assert (banner["fast_path"], banner["fast_path_reason"], banner["workers"]) == ("off", "--no-fast-path", 2)
    yield _echoes(daemon)
