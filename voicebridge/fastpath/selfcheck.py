"""The start-up self-check: every private name the fast path relies on is there, shaped as it expects.

``leanloop`` and ``wsfast`` reach into private names of Twisted and Autobahn, and ``frames`` into
websockets' C masker. Any release may rename one; the fast path would then raise in the
reactor's poll step or in every connection's ``dataReceived``. So before the daemon turns the
fast path on, ``problems()`` looks at each name the way the fast path will use it: on the
classes, on the running reactor, and on a real Autobahn connection opened in memory (a fake
clock and transport, no socket: a few milliseconds, once). Each problem names the name. Any
problem, and the daemon serves on plain Twisted and Autobahn instead (``switch.py``).

Pure but for what it imports: it changes nothing it looks at.
"""

from __future__ import annotations

import inspect

_REACTOR = "twisted.internet.epollreactor.EPollReactor"
_TRANSPORT = "twisted.internet.tcp.Server"
_AUTOBAHN = "autobahn.websocket.protocol.WebSocketProtocol"
_MASKER = "websockets.speedups.apply_mask"


def problems(reactor) -> list[str]:
    """What the fast path needs and does not find, each as ``NAME (what is wrong)``; empty when all is there."""
    found: list[str] = []
    for part, args in ((masker_problems, ()), (loop_problems, (reactor,)), (autobahn_problems, ()), (fast_frames_problems, ())):
        try:
            found += part(*args)
        except Exception as e:  # a check that cannot even run: the fast path could not either
            found.append(f"{part.__name__} ({type(e).__name__}: {e})")
    return found


def is_epoll(reactor) -> bool:
    """Whether ``reactor`` is Twisted's epoll reactor, the one the lean poll step replaces a method of."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    return type(reactor) is EPollReactor


# Shapes.


def _takes(*args, **kwargs):
    """A callable that accepts these arguments (bound methods: without self)."""

    def shape(value) -> str | None:
        if not callable(value):
            return "not callable"
        try:
            inspect.signature(value).bind(*args, **kwargs)
        except TypeError:
            return f"does not take {len(args) + len(kwargs)} argument(s)"
        except ValueError:  # no signature to read (some builtins): callable is all we can say
            pass
        return None

    return shape


def _is(*types):
    def shape(value) -> str | None:
        return None if isinstance(value, types) else f"a {type(value).__name__}, not {'/'.join(t.__name__ for t in types)}"

    return shape


def _equals(expected):
    def shape(value) -> str | None:
        return None if value == expected else f"{value!r}, not {expected!r}"

    return shape


def _any(value) -> str | None:
    return None


def _look(owner, label: str, names: dict) -> list[str]:
    """Each name on ``owner``, judged by its shape; problems as ``label.name (why)``."""
    found = []
    for name, shape in names.items():
        try:
            value = getattr(owner, name)
        except AttributeError:
            found.append(f"{label}.{name} (missing)")
            continue
        why = shape(value)
        if why:
            found.append(f"{label}.{name} ({why})")
    return found


# The parts.


def masker_problems() -> list[str]:
    """frames' unmasking: websockets' C masker, checked on a known vector."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return [f"{_MASKER} (missing: websockets without its C extension)"]
    from voicebridge.fastpath import frames

    if apply_mask(b"\x00\x00\x00\x00\x00", b"\x01\x02\x03\x04") != b"\x01\x02\x03\x04\x01":
        return [f"{_MASKER} (wrong result)"]
    if frames.unmask is not apply_mask:
        return [f"voicebridge.fastpath.frames.unmask (not {_MASKER})"]
    return []


def loop_problems(reactor) -> list[str]:
    """leanloop's poll step and ``write_now``: the reactor's private names, and a transport's write buffer."""
    from twisted.internet import abstract, main, tcp

    found = []
    if is_epoll(reactor):  # the poll step replaces nothing on another reactor
        import select

        found += _look(
            reactor,
            _REACTOR,
            {
                "doIteration": _takes(0.0),
                "_poller": _is(select.epoll),
                "_selectables": _is(dict),
                "_doReadOrWrite": _takes(None, 0, 0),
                "_disconnectSelectable": _takes(None, None, True),
            },
        )
    found += _look(main, "twisted.internet.main", {"CONNECTION_DONE": _any, "CONNECTION_LOST": _any})
    for cls in (tcp.Server, tcp.Client):
        if not issubclass(cls, abstract.FileDescriptor):
            found.append(f"twisted.internet.tcp.{cls.__name__} (not a FileDescriptor)")
    found += _look(tcp.Server, _TRANSPORT, {"bufferSize": _is(int)})
    # dataBuffer and _tempDataLen are set per transport: a FileDescriptor (a public class) shows them.
    transport = abstract.FileDescriptor(reactor)
    found += _look(
        transport,
        _TRANSPORT,
        {
            "dataBuffer": _is(bytes),
            "_tempDataLen": _is(int),
            "_writeDisconnected": _is(bool, int),
            "connected": _is(bool, int),
            "disconnecting": _is(bool, int),
        },
    )
    return found


class _MemoryTransport:
    """Just enough of a TCP transport for Autobahn to open a connection in memory."""

    disconnecting = False

    def __init__(self):
        from twisted.internet.address import IPv4Address

        self.written = []
        self.address = IPv4Address("TCP", "127.0.0.1", 1)

    def write(self, data):
        self.written.append(data)

    def writeSequence(self, seq):
        self.written.extend(seq)

    def getPeer(self):
        return self.address

    def getHost(self):
        return self.address

    def loseConnection(self):
        self.disconnecting = True

    abortConnection = loseConnection

    def setTcpNoDelay(self, enabled):
        pass


def _open(protocol_class, *frames_in: bytes):
    """A server connection of ``protocol_class``, opened in memory, fed ``frames_in``: (protocol, transport)."""
    from autobahn.twisted.websocket import WebSocketServerFactory
    from twisted.internet.task import Clock

    factory = WebSocketServerFactory(reactor=Clock())
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0)
    factory.protocol = protocol_class
    transport = _MemoryTransport()
    protocol = factory.buildProtocol(transport.address)
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for frame in frames_in:
        protocol.dataReceived(frame)
    return protocol, transport


def _text(payload: bytes) -> bytes:
    from voicebridge.fastpath import frames

    return frames.masked_frame(frames.FIN_TEXT, payload, b"\x01\x02\x03\x04")


def autobahn_problems() -> list[str]:
    """wsfast's Autobahn names: on the class, and on a connection Autobahn itself opened (its hooks called as wsfast expects)."""
    from autobahn.twisted.websocket import WebSocketServerProtocol
    from autobahn.websocket.protocol import WebSocketProtocol

    found = _look(
        WebSocketProtocol,
        _AUTOBAHN,
        {"STATE_OPEN": _is(int), "STATE_CLOSED": _is(int), "SEND_STATE_GROUND": _is(int), "_listeners": _any},
    )
    # The two hooks wsfast overrides: there, taking what wsfast passes on, and called as it expects.
    found += _look(WebSocketServerProtocol, _AUTOBAHN, {"_onOpen": _takes(None), "_onMessage": _takes(None, b"", False)})
    if found:
        return found
    seen = {}

    class Probe(WebSocketServerProtocol):
        def _onOpen(self):
            seen["_onOpen"] = True

        def _onMessage(self, payload, isBinary):
            seen["_onMessage"] = (payload, isBinary)

    protocol, _ = _open(Probe, _text(b"self-check"))
    if "_onOpen" not in seen:
        found.append(f"{_AUTOBAHN}._onOpen (not called when a connection opens)")
    if seen.get("_onMessage") != (b"self-check", False):
        found.append(f"{_AUTOBAHN}._onMessage (not called with (payload, isBinary) for a text message)")
    found += _look(
        protocol,
        _AUTOBAHN,
        {
            "state": _equals(WebSocketProtocol.STATE_OPEN),
            "_perMessageCompress": _equals(None),
            "logOctets": _is(bool),
            "logFrames": _is(bool),
            "trackedTimings": _any,
            "websocket_version": _is(int),
            "maxMessagePayloadSize": _is(int),
            "maxFramePayloadSize": _is(int),
            "maskServerFrames": _is(bool),
            "autoFragmentSize": _is(int),
            "current_frame": _equals(None),
            "inside_message": _equals(False),
            "data": _is(bytes),
            "utf8validateIncoming": _is(bool),
            "applyMask": _is(bool),
            "autoPingTimeoutCall": _any,
            "autoPingRestartOnAnyTraffic": _is(bool),
            "_cancelAutoPingTimeoutCall": _takes(),
            "consumeData": _takes(),
            "dataReceived": _takes(b""),
            "fire": _takes("message", b"", is_binary=False),
            "sendMessage": _takes(b"", False, None, False, False),
            "send_state": _equals(WebSocketProtocol.SEND_STATE_GROUND),
            "send_queue": _any,
            "utf8validator": _any,
            "transport": _any,
        },
    )
    found += _look(protocol.factory, _AUTOBAHN + ".factory", {"isServer": _equals(True)})
    validator = getattr(protocol, "utf8validator", None)
    if validator is not None:
        found += _look(validator, _AUTOBAHN + ".utf8validator", {"reset": _takes(), "validate": _takes(b"")})
        if not found:
            validator.reset()
            outcome = validator.validate(b"ok")
            if not (isinstance(outcome, tuple) and len(outcome) == 4 and outcome[:2] == (True, True)):
                found.append(f"{_AUTOBAHN}.utf8validator.validate (returned {outcome!r}, not (valid, ended, _, _))")
    return found


def fast_frames_problems() -> list[str]:
    """The fast path itself, end to end in memory: a text frame in reaches the sink, ``send_text`` frames it out."""
    from autobahn.twisted.websocket import WebSocketServerProtocol

    from voicebridge.fastpath import frames
    from voicebridge.fastpath.wsfast import FastTextFrames

    got = []

    class Probe(FastTextFrames, WebSocketServerProtocol):
        def onOpen(self):
            self.text_sink = got.append

    protocol, transport = _open(Probe, _text(b"in"))
    del transport.written[:]
    protocol.send_text(b"out")
    found = []
    if not protocol._fast_in or got != [b"in"]:
        found.append("voicebridge.fastpath.wsfast.FastTextFrames (a text frame did not take the fast path)")
    if b"".join(transport.written) != frames.text_frame(b"out"):
        found.append("voicebridge.fastpath.wsfast.FastTextFrames.send_text (wrote something else than the frame)")
    return found
