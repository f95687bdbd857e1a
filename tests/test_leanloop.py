"""voicebridge/fastpath/leanloop.py: the lean poll step dispatches like Twisted's, and write_now keeps Twisted's order."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.selectreactor import SelectReactor

from voicebridge.fastpath import leanloop


class Reader:
    """A minimal IReadDescriptor over one end of a socketpair."""

    def __init__(self, sock, fail=False):
        self.sock = sock
        self.fail = fail
        self.read = []
        self.lost = []

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        if self.fail:
            raise RuntimeError("boom")
        self.read.append(self.sock.recv(100))

    def connectionLost(self, reason):
        self.lost.append(reason)

    def logPrefix(self):
        return "Reader"


@pytest.fixture
def epoll():
    reactor = EPollReactor()
    yield reactor
    for reader in list(reactor.getReaders()):
        reactor.removeReader(reader)
    reactor._poller.close()


def test_install_only_on_epoll_and_only_once(epoll):
    assert leanloop.install(epoll) is True
    step = epoll.doIteration
    assert leanloop.install(epoll) is True and epoll.doIteration == step
    assert leanloop.install(SelectReactor()) is False


def test_events_reach_doread_and_a_failing_reader_is_disconnected_not_the_loop(epoll):
    leanloop.install(epoll)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    good, bad = Reader(b), Reader(d, fail=True)
    epoll.addReader(good)
    epoll.addReader(bad)
    a.send(b"hello")
    c.send(b"x")
    for _ in range(3):
        epoll.doIteration(0.1)
    assert good.read == [b"hello"] and not good.lost
    assert bad.lost, "the reactor's own error handling disconnected the failing reader"
    assert bad not in epoll.getReaders() and good in epoll.getReaders()
    epoll.removeReader(good)
    for s in (a, b, c, d):
        s.close()


class Capture(protocol.Protocol):
    def connectionMade(self):
        self.lost = None
        self.factory.connected.callback(self)

    def connectionLost(self, reason):
        self.lost = reason.type


@pytest.fixture
def tcp_pair():
    """A server-side Twisted transport and the blocking client socket at its other end."""
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(Capture)
    factory.connected = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    yield factory.connected, client
    client.close()
    port.stopListening()


@pytest_twisted.inlineCallbacks
def test_write_now_reaches_the_peer_before_the_reactor_turns(tcp_pair):
    connected, client = tcp_pair
    server = yield connected
    leanloop.write_now(server.transport, b"now")
    assert client.recv(100) == b"now"
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_write_now_queues_behind_buffered_bytes(tcp_pair):
    from twisted.internet import reactor

    connected, client = tcp_pair
    server = yield connected
    server.transport.write(b"first,")  # buffered until the reactor turns
    leanloop.write_now(server.transport, b"second")
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)
    client.setblocking(True)
    yield defer.Deferred.fromCoroutine(_turn(reactor))
    assert _read(client, 12) == b"first,second"
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_write_now_after_the_peer_left_does_not_raise(tcp_pair):
    """Writes to a peer that has gone raise nothing and log nothing; the loss is reported once, as a loss."""
    from twisted.internet import error, reactor
    from twisted.python import log as legacy_log

    connected, client = tcp_pair
    server = yield connected
    errors = []
    legacy_log.addObserver(errors.append)
    try:
        client.close()
        yield defer.Deferred.fromCoroutine(_turn(reactor))
        for _ in range(3):
            leanloop.write_now(server.transport, b"x" * 1000)
            yield defer.Deferred.fromCoroutine(_turn(reactor))
    finally:
        legacy_log.removeObserver(errors.append)
    assert server.lost in (error.ConnectionDone, error.ConnectionLost)
    assert [e for e in errors if e.get("isError")] == []
    server.transport.loseConnection()


async def _turn(reactor):
    from twisted.internet import task

    await task.deferLater(reactor, 0.05, lambda: None)


def _read(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


# The inline read: data on an accepted TCP connection, and every way such a read can end, exactly
# as Twisted's own poll step handles it. Each case runs on a private epoll reactor, lean and plain.


class Recorder(protocol.Protocol):
    def __init__(self, fail_on=None):
        self.fail_on = fail_on
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        if self.fail_on is not None and self.fail_on in data:
            raise RuntimeError("the protocol failed")
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason.type


def _serve(lean: bool, fail_on=None):
    reactor = EPollReactor()
    if lean:
        leanloop.install(reactor)
    protocols = []

    def build(addr):
        p = Recorder(fail_on)
        protocols.append(p)
        return p

    factory = protocol.Factory()
    factory.buildProtocol = build
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return reactor, port, protocols


def _spin(reactor, until, limit=200):
    for _ in range(limit):
        if until():
            return
        reactor.runUntilCurrent()
        reactor.doIteration(0.01)
    raise AssertionError("the reactor never got there")


def _close(reactor, port):
    port.stopListening()
    for _ in range(5):
        reactor.runUntilCurrent()
        reactor.doIteration(0)
    for selectable in list(reactor.getReaders()) + list(reactor.getWriters()):
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
    reactor._poller.close()


def _case(lean: bool, case: str):
    """What the server side saw: (bytes received, why the connection was lost, fd still watched)."""
    from twisted.python import log as legacy_log

    errors = []
    legacy_log.addObserver(errors.append)
    reactor, port, protocols = _serve(lean, fail_on=b"boom" if case == "raises" else None)
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        _spin(reactor, lambda: protocols)
        for chunk in (b"one,", b"two,", b"three"):
            client.sendall(chunk)
            _spin(reactor, lambda chunk=chunk: protocols[0].data.endswith(chunk))
        if case == "eof":
            client.shutdown(socket.SHUT_WR)
        elif case == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
        elif case == "raises":
            client.sendall(b"boom")
        _spin(reactor, lambda: protocols[0].lost is not None)
        client.close()
        watched = any(isinstance(r, tcp.Server) for r in reactor.getReaders())
        failures = [e for e in errors if e.get("isError")]
        return protocols[0].data, protocols[0].lost, watched, len(failures)
    finally:
        legacy_log.removeObserver(errors.append)
        _close(reactor, port)


@pytest.mark.parametrize("case", ["eof", "reset", "raises"])
def test_the_inline_read_ends_connections_as_twisted_does(case):
    lean, plain = _case(True, case), _case(False, case)
    assert lean == plain
    data, lost, watched, failures = lean
    assert data == b"one,two,three" and not watched
    from twisted.internet import error

    assert lost == {"eof": error.ConnectionDone, "reset": error.ConnectionLost, "raises": RuntimeError}[case]
    assert failures == (1 if case == "raises" else 0), "a protocol's exception is logged once"


def test_the_inline_read_is_taken_for_accepted_tcp_only(monkeypatch):
    reactor, port, protocols = _serve(lean=True)
    seen = []
    original = reactor._doReadOrWrite
    monkeypatch.setattr(reactor, "_doReadOrWrite", lambda s, fd, ev: (seen.append(type(s)), original(s, fd, ev)))
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        _spin(reactor, lambda: protocols)
        assert seen == [tcp.Port], "the accept went the usual way"
        client.sendall(b"media frame")
        _spin(reactor, lambda: protocols[0].data == b"media frame")
        assert seen == [tcp.Port], "the data did not"
        client.close()
        _spin(reactor, lambda: protocols[0].lost is not None)
    finally:
        _close(reactor, port)
