"""Two per-frame costs of Twisted's that no protocol can avoid, and the way around each.

**The poll step.** Twisted's ``EPollReactor.doPoll`` hands every ready socket to ``log.callWithLogger``, which asks
the connection for its log prefix and copies the legacy log context into a new one around the
call: about 1.3 microseconds per event. A media stream is one event per 20 ms frame, so at
250 calls that wrapper alone was about a tenth of the daemon's CPU (docs/benchmarks.md).

``install(reactor)`` gives an ``EPollReactor`` a poll step that dispatches each event to the
reactor's own ``_doReadOrWrite`` (which still catches and logs what doRead/doWrite raise, and
disconnects as before), minus that wrapper. The one thing lost is the legacy ``system`` field
(a connection's log prefix) on legacy ``twisted.python.log`` messages emitted inside I/O
callbacks; voicebridge logs through ``twisted.logger``, whose events never carried it.
Other reactors are left alone.

**The commonest event** is data arriving on an accepted TCP connection: every media frame of
every call. For it alone the poll step does inline what ``_doReadOrWrite`` and ``doRead`` do
(recv, hand the bytes to the protocol, or disconnect with the same reason, an exception from
the protocol logged and the connection dropped), three Python calls fewer per frame.

**Writes.** ``transport.write`` always buffers until the reactor's next turn: two epoll_ctl
calls and a reactor round per frame. ``write_now`` sends at once when nothing is queued.
"""

from __future__ import annotations

import errno
import sys
import types
from select import EPOLLIN

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger, LogLevel
from twisted.python import log as legacy_log

log = Logger(namespace="voicebridge.leanloop")

# The transports whose ``socket`` is theirs to write: accepted and outgoing TCP connections.
_PLAIN_TCP = (tcp.Server, tcp.Client)
_SERVER = tcp.Server


def install(reactor) -> bool:
    """Use the lean poll step on ``reactor`` if it is Twisted's epoll reactor; True if it was."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if type(reactor) is not EPollReactor:
        return False
    if getattr(reactor.doIteration, "__func__", None) is not _poll:
        reactor.doIteration = types.MethodType(_poll, reactor)
    return True


def uninstall(reactor) -> None:
    """Back to Twisted's own poll step (the class's ``doIteration``)."""
    if getattr(reactor.doIteration, "__func__", None) is _poll:
        del reactor.doIteration


def _fall_back(reactor, error: BaseException) -> None:
    """A private name the step relies on is gone after all: Twisted's own step from now on, never a dead loop."""
    uninstall(reactor)
    log.warn(
        "fast path's poll step disabled: {error}; Twisted's own poll step from now on",
        event_name="fastpath.disabled",
        missing=f"{type(error).__name__}: {error}",
        error=repr(error),
    )


def _poll(self, timeout):
    """``EPollReactor.doPoll``, the same but for ``log.callWithLogger`` around each event.

    Nothing it does can stop the loop: a private name that went missing (the start-up
    self-check should have seen it) puts Twisted's own step back, and the events wait for it.
    """
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
        dispatch = self._doReadOrWrite
        selectables = self._selectables
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    except Exception as e:  # epoll is level-triggered: what was ready is reported again to Twisted's step
        _fall_back(self, e)
        return
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            if event != EPOLLIN or type(selectable) is not _SERVER:
                dispatch(selectable, fd, event)
                continue
            # _doReadOrWrite + Connection.doRead, inline: the same recv, the same outcomes.
            try:
                data = selectable.socket.recv(selectable.bufferSize)
            except BlockingIOError:
                continue
            except OSError:
                why = CONNECTION_LOST
            else:
                if not data:
                    why = CONNECTION_DONE
                else:
                    try:
                        selectable.protocol.dataReceived(data)
                        continue
                    except BaseException:
                        why = sys.exc_info()[1]
                        legacy_log.err()  # as _doReadOrWrite reports it
            self._disconnectSelectable(selectable, why, True)
        except Exception as e:  # what callWithLogger caught: never let one socket stop the loop
            log.failure(
                "unhandled error handling an event for {selectable}",
                event_name="reactor.io_error",
                selectable=selectable,
                level=LogLevel.error,
            )
            if isinstance(e, AttributeError) and (e.obj is self or e.obj is selectable):  # a private name, renamed
                _fall_back(self, e)
                return


def write_now(transport, data: bytes) -> None:
    """``transport.write(data)``, but straight to the kernel when nothing is queued before it.

    Twisted buffers every write until the reactor's next turn: two epoll_ctl calls and a
    reactor round per frame, for a frame the socket could take at once. When the transport is
    a plain TCP connection with an empty buffer, send now; whatever the socket does not take
    (or any error) goes through ``transport.write`` as usual, so ordering and loss detection
    stay Twisted's.
    """
    # Only a plain TCP connection: a wrapper (TLS) forwards unknown attributes to the transport
    # beneath it, so ``.socket`` there is the raw socket, and bytes sent to it would skip TLS.
    if (
        type(transport) in _PLAIN_TCP
        and not transport.dataBuffer
        and not transport._tempDataLen
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, or a lost connection that Twisted will report
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
