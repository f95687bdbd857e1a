"""Call control: an authenticated HTTP API on every machine, for any call of the fleet (``--control-token-file``).

``GET /calls`` lists the live calls (fleet-wide with ``--redis``: callSid, tenant, machine,
state, seconds); ``POST /calls/SID/hangup``, ``/clear``, ``/mark?name=N`` and ``/play?mark=N``
(a body of 8 kHz audio: ``audio/basic`` mu-law, or a mono 16-bit PCM WAV) act on one call. A
call held by this machine is acted on here; another machine's is reached through its Redis
channel (``{fleet}:m:MACHINE``), which answers on this machine's channel within
``ROUTE_TIMEOUT``. The token is a bearer token compared in constant time; the API is off (404)
without ``--control-token-file``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import itertools
import json
import wave

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from voicebridge.audio.codec import pcm16_to_ulaw
from voicebridge.fleet import slots
from voicebridge.fleet.client import Unavailable
from voicebridge.observe.logs import printable

log = Logger(namespace="voicebridge.control")

ACTIONS = ("hangup", "clear", "mark", "play")
ROUTE_TIMEOUT = 3.0
MAX_LIST = 10_000
FRAME = 160  # 20 ms of 8 kHz mu-law
STARTED = "started"


class ControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_audio(content_type: str, body: bytes) -> bytes:
    """The body of ``play`` -> 8 kHz mu-law; ControlError(415) for anything else."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in ("audio/basic", "audio/x-mulaw", "audio/mulaw"):
        return body
    if media_type in ("audio/wav", "audio/x-wav", "audio/wave"):
        try:
            with wave.open(io.BytesIO(body)) as w:
                if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, 8000):
                    raise ControlError(415, "the WAV must be mono 16-bit PCM at 8000 Hz (or send audio/basic mu-law)")
                return pcm16_to_ulaw(w.readframes(w.getnframes()))
        except (wave.Error, EOFError):
            raise ControlError(415, "the body is not a WAV file") from None
    raise ControlError(415, "play takes audio/basic (8 kHz mu-law) or audio/wav (mono 16-bit PCM, 8 kHz)")


def act_on(call, action: str, args: dict) -> dict:
    """Do ``action`` on a call this machine holds; -> what to answer."""
    if action == "hangup":
        call.hangup("hangup")
        return {"done": "hangup"}
    if action == "clear":
        call.clear()
        return {"done": "clear"}
    if action == "mark":
        name = str(args.get("name") or "")[:100]
        if not name:
            raise ControlError(400, "mark needs a name (?name=...)")
        call.send_mark(name)
        return {"done": "mark", "name": name}
    if action == "play":
        encoded = args.get("audio") or ""
        if not isinstance(encoded, str):
            raise ControlError(400, "play's audio must be a base64 string")
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ControlError(400, "play's audio is not valid base64") from None
        if not audio:
            raise ControlError(400, "play needs audio in the body")
        for i in range(0, len(audio), FRAME):
            call.send_audio(audio[i : i + FRAME])
        name = str(args.get("mark") or "")[:100]
        if name:
            call.send_mark(name)  # Twilio answers it once the audio has played
        return {"done": "play", "seconds": round(len(audio) / 8000, 3), "mark": name or None}
    raise ControlError(404, f"no action {action!r}: {', '.join(ACTIONS)}")


class CallControl:
    """Finds a call, here or elsewhere in the fleet, and acts on it."""

    def __init__(self, registry, fleet, reactor):
        self.registry = registry
        self.fleet = fleet
        self.reactor = reactor
        self._ids = itertools.count(1)
        self._waiting: dict[str, defer.Deferred] = {}
        if fleet is not None:
            fleet.handlers["control"] = self._remote_request
            fleet.handlers["control-reply"] = self._remote_reply
        self.machine = fleet.machine if fleet is not None else None

    def local(self, call_sid: str):
        for call in self.registry.calls:
            if call.call_sid == call_sid and call.state == STARTED:
                return call
        return None

    def _local_list(self) -> list[dict]:
        now = self.reactor.seconds()
        return [
            {
                "callSid": call.call_sid,
                "tenant": call.tenant.id if call.tenant is not None else None,
                "machine": self.machine,
                "state": STARTED,
                "seconds": round(now - (call.started_at or now), 1),
            }
            for call in self.registry.calls
            if call.state == STARTED
        ]

    def list(self) -> defer.Deferred:
        """-> {"source": "fleet"|"machine", "calls": [...]}; without Redis, this machine's calls only."""
        if self.fleet is None:
            return defer.succeed({"source": "machine", "calls": self._local_list()})
        script, keys, args = slots.list_call(self.fleet.keys, MAX_LIST)

        def listed(reply):
            calls = [
                {"callSid": c.call_sid, "tenant": c.tenant, "machine": c.machine, "state": c.state,
                 "seconds": round(c.seconds, 1)}
                for c in slots.parse_list(reply)
            ]
            return {"source": "fleet", "calls": calls}

        def without_redis(failure):
            failure.trap(Unavailable)
            warning = "Redis is unavailable: this machine's calls only"
            return {"source": "machine", "calls": self._local_list(), "warning": warning}

        return self.fleet.redis.run(script, keys, args, ROUTE_TIMEOUT).addCallbacks(listed, without_redis)

    @defer.inlineCallbacks
    def act(self, call_sid: str, action: str, args: dict):
        """-> the answer (a dict); raises ControlError."""
        if action not in ACTIONS:
            raise ControlError(404, f"no action {printable(action, 40)!r}: {', '.join(ACTIONS)}")
        if not slots.is_sid(call_sid):
            raise ControlError(400, f"{printable(call_sid, 70)!r} is not a CallSid (letters and digits, at most 64)")
        call = self.local(call_sid)
        if call is not None:
            result = act_on(call, action, args)
            self._logged(call_sid, action, self.machine)
            return {**result, "callSid": call_sid, "machine": self.machine}
        if self.fleet is None:
            raise ControlError(404, f"no live call {call_sid} on this machine")
        try:
            raw = yield self.fleet.redis.hget(self.fleet.keys.calls, call_sid, ROUTE_TIMEOUT)
        except Unavailable as e:
            raise ControlError(503, f"Redis is unavailable ({e}); only this machine's calls can be reached") from None
        try:
            info = json.loads(raw) if raw else None
        except (ValueError, TypeError, RecursionError):
            raise ControlError(502, f"the fleet's record of {call_sid} on Redis is not readable") from None
        if info is not None and not isinstance(info, dict):
            raise ControlError(502, f"the fleet's record of {call_sid} on Redis is not readable")
        if not info or info.get("s") != STARTED:
            raise ControlError(404, f"no live call {call_sid} in the fleet" + (" (its stream has not started)" if info else ""))
        machine = info.get("m")
        if not isinstance(machine, str) or not machine or len(machine) > slots.MAX_NAME:
            raise ControlError(502, f"the fleet's record of {call_sid} on Redis names no machine")
        request_id = f"{self.machine}/{next(self._ids)}"
        waiting = self._waiting[request_id] = defer.Deferred()
        message = {"op": "control", "id": request_id, "sid": call_sid, "action": action, "args": args,
                   "reply": self.fleet.channel}
        text = json.dumps(message)
        if len(text) > slots.MAX_MESSAGE:
            self._waiting.pop(request_id, None)
            raise ControlError(413, f"too large to relay to machine {machine}, which holds {call_sid}: "
                                    f"{len(text)} characters, at most {slots.MAX_MESSAGE} (send less audio)")
        try:
            heard = yield self.fleet.redis.publish(self.fleet.keys.machine(machine), text, ROUTE_TIMEOUT)
        except Unavailable as e:
            self._waiting.pop(request_id, None)
            raise ControlError(503, f"Redis is unavailable ({e})") from None
        if not heard:
            self._waiting.pop(request_id, None)
            raise ControlError(502, f"machine {machine}, which holds {call_sid}, is not listening (gone? its slot lapses soon)")
        timer = self.reactor.callLater(ROUTE_TIMEOUT, lambda: waiting.called or waiting.callback(None))
        reply = yield waiting
        self._waiting.pop(request_id, None)
        if timer.active():
            timer.cancel()
        if reply is None:
            raise ControlError(504, f"machine {machine} did not answer within {ROUTE_TIMEOUT:g}s")
        status = reply.get("status")
        if type(status) is not int or not 100 <= status <= 599:  # parse_message lets none through: a last guard
            raise ControlError(502, f"machine {machine} answered with no valid status")
        if status != 200:
            raise ControlError(status, printable(reply.get("error") or "failed", slots.MAX_ERROR))
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    def _logged(self, call_sid, action, machine, origin=None):
        log.info(
            "call control: {action} callSid={callSid} on {machine}{via}",
            event_name="control.action",
            action=action,
            callSid=printable(call_sid, 64),
            machine=machine,
            via=f" (asked on {origin})" if origin else "",
        )

    # Another machine's requests, and the answers to ours (this machine's Redis channel).

    def _remote_request(self, message: dict) -> None:
        """A ``control`` message, as ``slots.parse_message`` passed it: every field is there, of its type."""
        sid, action, args = message["sid"], message["action"], message["args"]
        call = self.local(sid)
        try:
            if call is None:
                raise ControlError(404, f"no live call {sid} on {self.machine} any more")
            result = {**act_on(call, action, args), "callSid": sid, "machine": self.machine}
            self._logged(sid, action, self.machine, origin=message["reply"].rsplit(":", 1)[-1])
            reply = {"op": "control-reply", "id": message["id"], "status": 200, "result": result}
        except ControlError as e:
            reply = {"op": "control-reply", "id": message["id"], "status": e.status, "error": str(e)}
        channel = message["reply"]  # a machine channel of this fleet (parse_message checked)
        self.fleet.redis.publish(channel, json.dumps(reply), ROUTE_TIMEOUT).addErrback(lambda _: None)

    def _remote_reply(self, message: dict) -> None:
        waiting = self._waiting.get(message["id"])
        if waiting is not None and not waiting.called:
            waiting.callback(message)


class CallsResource(Resource):
    """``/calls`` and ``/calls/SID/ACTION``, for a bearer of the control token."""

    isLeaf = True

    def __init__(self, control: CallControl, token: str):
        super().__init__()
        self.control = control
        self.token = str(token).encode("utf-8")

    def _authorized(self, request) -> bool:
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if not self._authorized(request):
            log.warn(
                "call control refused: no valid bearer token, client {client}",
                event_name="control.refused",
                client=request.getClientAddress().host if hasattr(request.getClientAddress(), "host") else "-",
            )
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="voicebridge"')
            return b'{"error": "a bearer token (--control-token-file) is required"}\n'
        path = [p.decode("utf-8", "replace") for p in request.postpath if p]
        try:
            if request.method == b"GET" and not path:
                d = self.control.list()
            elif request.method == b"POST" and len(path) == 2:
                sid, action = path
                args = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace") for k, v in (request.args or {}).items()}
                if action == "play":
                    request.content.seek(0)
                    audio = decode_audio((request.getHeader(b"content-type") or b"").decode("latin-1"), request.content.read())
                    args["audio"] = base64.b64encode(audio).decode("ascii")
                d = self.control.act(sid, action, args)
            else:
                raise ControlError(404, "GET /calls, or POST /calls/CALLSID/{hangup,clear,mark,play}")
        except ControlError as e:
            request.setResponseCode(_status(e.status))
            return json.dumps({"error": str(e)}).encode() + b"\n"

        gone = []  # the client went away before the answer: nothing to write to
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(result):
            if request.finished or gone:
                return
            try:
                body = json.dumps(result).encode() + b"\n"
            except (TypeError, ValueError, RecursionError):
                request.setResponseCode(502)
                body = b'{"error": "the answer could not be encoded"}\n'
            request.write(body)
            request.finish()

        def failed(failure):
            error = failure.value
            if isinstance(error, ControlError):
                request.setResponseCode(_status(error.status))
                return {"error": str(error)}
            log.failure("call control failed", failure, event_name="control.error", level=LogLevel.error)
            request.setResponseCode(500)
            return {"error": "internal error"}

        def unfinished(failure):  # a last resort: the request always finishes
            log.failure("call control could not answer", failure, event_name="control.error", level=LogLevel.error)
            if not request.finished and not gone:
                request.setResponseCode(500)
                request.write(b'{"error": "internal error"}\n')
                request.finish()

        d.addErrback(failed).addCallback(answer).addErrback(unfinished)
        return NOT_DONE_YET


def _status(status) -> int:
    """An HTTP status to answer with: a ControlError's, or 502 for one a peer made up."""
    return status if type(status) is int and 100 <= status <= 599 else 502
