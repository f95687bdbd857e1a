"""A local stand-in for the OpenAI Realtime API (GA shape), run by the tests in their own reactor.

It speaks the documented protocol: it checks the handshake (``Authorization: Bearer``, no
``OpenAI-Beta``, ``?model=``) and the ``session.update`` shape, records the caller's audio as
appended, answers ``response.create`` with scripted audio deltas (and function calls), checks each
``conversation.item.truncate`` against the audio it sent for that item, and misbehaves on demand:
refuse the handshake (401, 429), close mid-call, stall, send an ``error`` event.
"""

from __future__ import annotations

import base64
import itertools

import orjson
from autobahn.twisted.websocket import ConnectionDeny, WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, endpoints

CHUNK = 160  # 20 ms of mu-law


def chunk_audio(response: int, index: int) -> bytes:
    """A distinct 160-byte chunk per (response, index): what the caller must hear, byte for byte."""
    head = bytes((0xA5, response & 0xFF)) + index.to_bytes(2, "big")
    return head + bytes((response * 31 + index * 7 + i) & 0x7F for i in range(CHUNK - 4))


def session_problems(event: dict, expect: dict) -> list[str]:
    """What is wrong with a ``session.update`` for a Twilio bridge under the GA API."""
    problems = []
    session = event.get("session")
    if not isinstance(session, dict):
        return ["session.update without a session object"]
    if session.get("type") != "realtime":
        problems.append(f"session.type is {session.get('type')!r}, not 'realtime'")
    if session.get("output_modalities") != ["audio"]:
        problems.append(f"output_modalities is {session.get('output_modalities')!r}")
    for beta in ("modalities", "input_audio_format", "output_audio_format", "voice", "turn_detection"):
        if beta in session:
            problems.append(f"beta field session.{beta}")
    audio = session.get("audio") or {}
    if (audio.get("input") or {}).get("format") != {"type": "audio/pcmu"}:
        problems.append(f"audio.input.format is {(audio.get('input') or {}).get('format')!r}")
    if (audio.get("output") or {}).get("format") != {"type": "audio/pcmu"}:
        problems.append(f"audio.output.format is {(audio.get('output') or {}).get('format')!r}")
    for key, value in expect.items():
        here = session
        for part in key.split("."):
            here = here.get(part) if isinstance(here, dict) else None
        if here != value:
            problems.append(f"session.{key} is {here!r}, expected {value!r}")
    return problems


class Reply:
    """One scripted response: audio chunks, an agent transcript, maybe a function call."""

    def __init__(
        self, chunks: int = 5, tool: tuple | None = None, transcript: str = "Hello, how can I help?", hold=False, done=True
    ):
        self.chunks = chunks
        self.tool = tool  # (name, arguments dict)
        self.transcript = transcript
        self.hold = hold  # never answer: a stalled response
        self.done = done  # False: the response stays in progress until response.cancel


class RealtimeProtocol(WebSocketServerProtocol):
    def onConnect(self, request):
        fake = self.factory.fake
        fake.requests.append(request)
        if fake.refuse:
            raise ConnectionDeny(fake.refuse, "refused by the fake")

    def onOpen(self):
        fake = self.factory.fake
        fake.connections.append(self)
        self.ids = itertools.count(1)
        self.sent_ms: dict[str, int] = {}
        self.active: str | None = None
        self.event({"type": "session.created", "session": {"type": "realtime", "id": "sess_fake", "padding": fake.padding}})

    def event(self, event: dict) -> None:
        self.factory.fake.sent.append(event)
        self.sendMessage(orjson.dumps(event), isBinary=False)

    def onMessage(self, payload, isBinary):
        fake = self.factory.fake
        event = orjson.loads(payload)
        fake.events.append(event)
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            audio = base64.b64decode(event["audio"])
            fake.audio += audio
            fake.appends += 1
            if fake.close_after and fake.appends == fake.close_after:
                self.sendClose(1011, "fake went away")
                return
        elif kind == "session.update":
            fake.session = event["session"]
            problems = session_problems(event, fake.expect)
            fake.problems += problems
            if fake.error_on_session:
                self.event(
                    {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "no"}}
                )
                return
            if not fake.stall_session:
                self.event({"type": "session.updated", "session": event["session"]})
        elif kind == "response.create":
            reply = fake.replies.pop(0) if fake.replies else Reply()
            if not reply.hold:
                self.respond(reply)
        elif kind == "conversation.item.truncate":
            item = event.get("item_id")
            end = event.get("audio_end_ms")
            fake.truncates.append((item, event.get("content_index"), end))
            if item not in self.sent_ms or not isinstance(end, int) or end > self.sent_ms[item]:
                fake.problems.append(f"truncate of {item} at {end} ms: sent {self.sent_ms.get(item)} ms")
                problem = {"type": "invalid_request_error", "code": "invalid_value", "message": "audio_end_ms beyond the audio"}
                self.event({"type": "error", "error": {**problem, "event_id": event.get("event_id")}})
            else:
                self.event({"type": "conversation.item.truncated", "item_id": item, "content_index": 0, "audio_end_ms": end})
        elif kind == "response.cancel":
            fake.cancels += 1
            if self.active:
                active, self.active = self.active, None
                self.event({"type": "response.done", "response": {"id": active, "status": "cancelled", "output": []}})
        elif kind == "conversation.item.create":
            fake.items.append(event.get("item"))
        fake.behaviour(fake, self, event)

    def respond(self, reply: Reply) -> None:
        fake = self.factory.fake
        fake.responses += 1
        n = fake.responses
        response_id, item_id = f"resp_{n}", f"item_{n}"
        self.active = response_id
        self.event({"type": "response.created", "response": {"id": response_id, "status": "in_progress", "output": []}})
        output = []
        if reply.chunks:
            self.event({"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
                        "item": {"id": item_id, "type": "message", "role": "assistant"}})  # fmt: skip
            for i in range(reply.chunks):
                audio = chunk_audio(n, i)
                fake.agent_audio[item_id] = fake.agent_audio.get(item_id, b"") + audio
                self.sent_ms[item_id] = self.sent_ms.get(item_id, 0) + len(audio) // 8
                self.event({"type": "response.output_audio.delta", "event_id": f"ev_{next(self.ids)}", "response_id": response_id,
                            "item_id": item_id, "output_index": 0, "content_index": 0,
                            "delta": base64.b64encode(audio).decode()})  # fmt: skip
            self.event({"type": "response.output_audio.done", "response_id": response_id, "item_id": item_id})
            self.event({"type": "response.output_audio_transcript.done", "response_id": response_id, "item_id": item_id,
                        "transcript": reply.transcript})  # fmt: skip
            output.append({"id": item_id, "type": "message", "role": "assistant", "status": "completed"})
        if reply.tool:
            name, arguments = reply.tool
            output.append({"id": f"fc_{n}", "type": "function_call", "status": "completed", "name": name,
                           "call_id": f"call_{n}", "arguments": orjson.dumps(arguments).decode()})  # fmt: skip
        if reply.done:
            self.active = None
            self.event({"type": "response.done", "response": {"id": response_id, "status": "completed", "output": output}})

    def onClose(self, wasClean, code, reason):
        fake = self.factory.fake
        if self in fake.connections:
            fake.connections.remove(self)
        fake.closes.append((wasClean, code, reason))
        if not fake.closed.called:
            fake.closed.callback(None)


def nothing(fake, proto, event):
    pass


class FakeRealtime:
    def __init__(self, behaviour=nothing, replies=(), refuse=None, close_after=0, error_on_session=False,
                 stall_session=False, expect=None, padding=""):  # fmt: skip
        self.behaviour = behaviour
        self.replies = list(replies)
        self.refuse = refuse
        self.close_after = close_after
        self.error_on_session = error_on_session
        self.stall_session = stall_session
        self.expect = dict(expect or {})
        self.padding = padding  # makes session.created as large as wanted (frames past the lean path)
        self.requests, self.events, self.sent, self.closes, self.connections = [], [], [], [], []
        self.problems: list[str] = []
        self.truncates: list[tuple] = []
        self.items: list = []
        self.session = None
        self.audio = b""
        self.agent_audio: dict[str, bytes] = {}
        self.appends = self.responses = self.cancels = 0
        self.closed = defer.Deferred()
        self.port = None
        self.url = None

    @defer.inlineCallbacks
    def listen(self, reactor, tls=None):
        """Serve on a free loopback port; ``tls`` is a pki Leaf for wss://."""
        scheme, host = ("wss", "localhost") if tls else ("ws", "127.0.0.1")
        factory = WebSocketServerFactory(f"{scheme}://{host}/v1/realtime")
        factory.setProtocolOptions(maxMessagePayloadSize=16 * 1024 * 1024, maxFramePayloadSize=16 * 1024 * 1024)
        factory.protocol = RealtimeProtocol
        factory.fake = self
        if tls:
            description = f"ssl:0:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}:extraCertChain={tls.chain}"
        else:
            description = "tcp:0:interface=127.0.0.1"
        self.port = yield endpoints.serverFromString(reactor, description).listen(factory)
        self.url = f"{scheme}://{host}:{self.port.getHost().port}/v1/realtime"
        return self

    def types(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]

    def stop(self):
        for proto in list(self.connections):
            proto.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening) if self.port else defer.succeed(None)
