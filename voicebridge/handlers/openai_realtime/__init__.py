"""``openai-realtime``: an AI voice agent on the call, through the OpenAI Realtime API (GA shape).

One WebSocket per call to the API (``url``, default ``wss://api.openai.com/v1/realtime?model=...``,
``Authorization: Bearer KEY``, no beta header), opened at Twilio's ``start``:

- ``session.update`` asks for ``audio/pcmu`` both ways: Twilio's 8 kHz mu-law passes untouched, no
  transcoding. Voice, instructions (with the call's ``<Parameter>``s as ``{placeholders}``), turn
  detection and the tools (``end_call``, ``transfer_call``) come from the options.
- The caller's audio goes out as ``input_audio_buffer.append``, one per Twilio frame, in order.
  The agent's ``response.output_audio.delta`` goes to Twilio as ``media`` followed by a ``mark``,
  so the handler knows what the caller has heard (``playback.Playback``).
- Barge-in: ``input_audio_buffer.speech_started`` while the agent speaks sends Twilio ``clear`` and
  the API ``conversation.item.truncate`` at the position Twilio confirmed played. With
  ``barge_in_min_ms`` the speech must last that long first (a cough does not cut the agent off);
  the server is then told not to cancel on its own (``interrupt_response: false``) and the handler
  sends ``response.cancel`` when the barge-in is real.
- ``end_call`` hangs up once the goodbye has played; ``transfer_call`` ends the stream and
  answers Twilio's ``<Connect action>`` with ``<Dial>`` to the named entry of ``transfers``; a
  name not in the table goes back to the agent as the tool's output. DTMF reaches the agent as a
  user message.
- Failures (no connection, refused 401/429, handshake timeout, the socket closing mid-call, an
  ``error`` event, a stalled response) end the stream with the ``relay``'s fallback (``hangup``,
  or ``say`` ``message``), a ``realtime.failed`` line with a reason code, and a metric.
- The provider link always closes with the call.
- The API is a peer we do not control: each of its messages is checked before any field is read
  (``events.parse_event``: a JSON object, a string ``type`` of at most 128 characters, nested at most
  32 deep) and each field read is type-checked; anything else is a ``realtime-*`` protocol error,
  counted, logged once per call and dropped. Metric labels taken from its values (tool names, error
  codes) are a fixed set, the rest counted as ``other`` (``stats.py``).

The link uses ``voicebridge.net.leanclient``'s frame path: Autobahn's general client path made a
relayed call cost 4.5 times an echoed one (docs/benchmarks.md has this handler's figure).
Audio bytes are base64 on both sides; the caller's frame is encoded once (0.35 us for 160 bytes)
and the agent's delta decoded once (0.7 us, which also checks it before Twilio sees it).
"""

from __future__ import annotations

import binascii
import itertools
import time
from collections import deque

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from voicebridge.handlers.api import USER_AGENT, Handler, LeanClientFrames, Logger, endpoint_for, printable, redact_url
from voicebridge.handlers.openai_realtime import events as ev
from voicebridge.handlers.openai_realtime import options as opts
from voicebridge.handlers.openai_realtime.playback import Playback
from voicebridge.handlers.openai_realtime.stats import BENIGN_ERRORS, RealtimeCollector, error_label, stats_for, tool_label

log = Logger(namespace="voicebridge.realtime")

CONNECTING, OPEN, CLOSING, DONE, FAILED = "connecting", "open", "closing", "done", "failed"
CLOSE_GRACE = 5.0  # after the call ends: time for the close handshake with the provider
GOODBYE_TIMEOUT = 20.0  # end_call / transfer_call: the longest the last words may take before the call ends anyway
MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # session.created echoes the whole session (instructions included)
MAX_TRANSCRIPT = 2000  # characters of one transcript line kept and logged
MAX_TRANSCRIPTS = 1000  # lines kept for the recording's sidecar
BYE_MARK = "vb-rt-bye"
APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
APPEND_TAIL = b'"}'

_b2a = binascii.b2a_base64
_a2b = binascii.a2b_base64
_perf = time.perf_counter


@implementer(IPushProducer)
class OpenAIRealtimeHandler(Handler):
    @classmethod
    def check_options(cls, options: dict) -> dict:
        return opts.check_options(options)

    @classmethod
    def uses_connect_action(cls, options: dict) -> bool:
        return options["fallback"] == "say" or bool(options["transfers"])

    @classmethod
    def close_grace(cls, options: dict) -> float:
        return CLOSE_GRACE  # on_stop closes the provider link, cut after this long

    @classmethod
    def metrics_collector(cls, registry):
        """For ``/metrics``: this handler's figures in the daemon of ``registry`` (its reactor's)."""
        return RealtimeCollector(registry.clock)

    def __init__(self, call, options: dict):
        super().__init__(call, options)
        self.clock = call.clock
        self.stats = stats_for(call.clock)
        self.url = opts.provider_url(options["url"], options["model"])
        self.state: str | None = None
        self.link: ProviderProtocol | None = None
        self.pending: deque[bytes] = deque()  # messages waiting for the link to open
        self.playback = Playback()
        self.session_ready = False
        self.responding: str | None = None  # the id of the response in progress
        self.response_audio = False  # the response in progress sent audio
        self.cut_responses: deque[str] = deque(maxlen=8)  # responses cut by a barge-in: their late deltas are dropped
        self.cut_items: deque[str] = deque(maxlen=8)
        self.speech_at: float | None = None  # speech_stopped: the start of the turn latency
        self.ending: tuple | None = None  # ("end_call",) or ("transfer", name, destination)
        self.ending_after_response = False
        self.waiting_for: str | None = None  # what the provider owes us (the session, a response): see _arm
        self.heard_at = 0.0
        self.paused = False  # the provider's socket buffers are full (Twisted pauses us as a producer)
        self.transcripts: list[dict] = []
        self.started_at = 0.0
        self.stopped = False  # the call ended (on_stop): nothing more goes to it
        self.appends = self.deltas = 0
        self.events = itertools.count(1)
        self._connecting = None
        self._timers: dict[str, object] = {}
        self._gone = defer.Deferred()

    # Twilio -> the agent.

    def on_start(self, start) -> None:
        self.started_at = self.clock.seconds()
        self.stats.calls += 1
        self.state = CONNECTING
        instructions = opts.render_instructions(self.options["instructions"], self.call.parameters)
        self._send_event(opts.session_update(self.options, instructions))
        self._arm("the session")  # until session.updated
        if self.options["greeting"]:
            self._create_response(f"Greet the caller by saying exactly this: {self.options['greeting']}")
        self._connect()

    def on_media(self, audio: bytes, timestamp: int) -> None:
        message = APPEND_HEAD + _b2a(audio, newline=False) + APPEND_TAIL
        if self.state == OPEN and not self.pending and not self.paused:
            self.link.send_text(message)
            self.appends += 1
        elif self.state in (CONNECTING, OPEN):
            self._queue(message)

    def on_dtmf(self, digit: str) -> None:
        self._send_event(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": f"[The caller pressed the key {digit} on the phone keypad.]"}],
                },
            }
        )
        if self.responding is None and self.ending is None:
            self._create_response()

    def on_mark(self, name: str) -> None:
        if name == BYE_MARK:
            self._finish()
            return
        self.playback.confirmed(name)

    def on_stop(self, reason: str):
        self.stopped = True
        self._cancel_all()
        if self.state == OPEN:
            self.state = CLOSING
            self.pending.clear()
            self.link.sendClose(1000, "call ended")
            self._timers["close"] = self.clock.callLater(CLOSE_GRACE, self._abort)
        elif self.state == CONNECTING:
            self.state = DONE
            self.pending.clear()
            self._abort()
        if self._gone.called or self.state is None:
            return None
        waiting = defer.Deferred()
        self._gone.addBoth(lambda result: waiting.callback(None) or result)
        return waiting

    def sidecar(self) -> dict:
        """What a recording of this call keeps besides the audio (``record`` asks): the transcripts, when on."""
        return {"transcripts": list(self.transcripts)} if self.options["transcripts"] else {}

    # Messages to the provider.

    def _send_event(self, event: dict) -> None:
        data = orjson.dumps(event)
        if self.state == OPEN and not self.pending and not self.paused:
            self.link.send_text(data)
        elif self.state in (CONNECTING, OPEN):
            self._queue(data)

    def _queue(self, data: bytes) -> None:
        if len(self.pending) >= self.options["max_pending"]:
            self._fail("stalled", f"{len(self.pending)} messages waited for the Realtime API to open or read")
            return
        self.pending.append(data)

    def _flush(self) -> None:
        link = self.link
        while self.pending and self.state == OPEN and not self.paused:
            data = self.pending.popleft()
            link.send_text(data)
            if data.startswith(APPEND_HEAD):
                self.appends += 1

    # Backpressure: Twisted pauses us while the provider's socket buffers are full.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.paused = True

    def _create_response(self, instructions: str | None = None) -> None:
        event: dict = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        self._send_event(event)
        self._arm("a response")

    # The connection.

    def _connect(self) -> None:
        options = self.options
        factory = ProviderFactory(
            self.url,
            headers=opts.auth_headers(options),
            useragent=f"{USER_AGENT} openai-realtime",
            reactor=self.clock,
        )
        factory.handler = self
        factory.setProtocolOptions(
            openHandshakeTimeout=0,  # ours, below, also covers TLS
            closeHandshakeTimeout=CLOSE_GRACE,
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            autoPingInterval=20,
            autoPingTimeout=20,
        )
        self.started_connecting = self.clock.seconds()
        log.info(
            "realtime callSid={callSid} connecting to {url}",
            event_name="realtime.connecting",
            url=redact_url(self.url),
            **self.call.ids,
        )
        endpoint = endpoint_for(self.clock, self.url, options.get("trust_root"), timeout=options["connect_timeout"])
        self._connecting = endpoint.connect(factory)
        self._connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, protocol) -> None:
        self._connecting = None
        if self.state != CONNECTING:
            protocol.dropConnection(abort=True)
            return
        self.link = protocol
        self._timers["handshake"] = self.clock.callLater(self.options["handshake_timeout"], self._handshake_timed_out)

    def _connect_failed(self, failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError) or self.state != CONNECTING:
            self._gone_now()
            return
        detail = str(failure.value)
        if failure.check(error.ConnectionRefusedError):
            reason = "connect-refused"
        elif failure.check(error.TimeoutError, defer.TimeoutError):
            reason = "connect-timeout"
            detail = f"no TCP connection within {self.options['connect_timeout']:g}s (connect_timeout)"
        elif failure.check(error.DNSLookupError):
            reason = "dns-failed"
        else:
            reason = "connect-failed"
        self._fail(reason, detail)
        self._gone_now()

    def _handshake_timed_out(self) -> None:
        self._timers.pop("handshake", None)
        self._fail("handshake-timeout", f"no TLS and WebSocket handshake within {self.options['handshake_timeout']:g}s")

    def opened(self, protocol) -> None:
        self._cancel("handshake")
        if self.state != CONNECTING:
            protocol.dropConnection(abort=True)
            return
        self.state = OPEN
        self.heard_at = self.clock.seconds()  # the stall clock starts with the link
        protocol.registerProducer(self, True)
        log.info(
            "realtime callSid={callSid} connected to {url} in {ms:.0f} ms",
            event_name="realtime.open",
            url=redact_url(self.url),
            ms=(self.clock.seconds() - self.started_connecting) * 1000,
            **self.call.ids,
        )
        self._flush()

    def closed(self, protocol, was_clean: bool, code: int | None, reason: str | None) -> None:
        self._cancel("handshake")
        self._cancel("close")
        state, self.link = self.state, None
        if state == CONNECTING:
            status = protocol.refused_status
            if status in (401, 403):
                self._fail("unauthorized", f"the API refused the key: HTTP {status}")
            elif status == 429:
                self._fail("rate-limited", "the API refused the connection: HTTP 429 (rate limit or quota)")
            elif status is not None:
                self._fail("handshake-refused", f"the API answered the upgrade with HTTP {status}")
            else:
                self._fail(*classify_handshake_failure(protocol.lost_reason, reason or ""))
        elif state == OPEN:
            self._fail("closed", f"the API closed the connection mid-call with {code}: {printable(reason, 200)}")
        elif state == CLOSING:
            self.state = DONE
            log.info(
                "realtime callSid={callSid} closed; {appends} append(s) up, {deltas} delta(s) down",
                event_name="realtime.closed",
                appends=self.appends,
                deltas=self.deltas,
                code=code,
                **self.call.ids,
            )
        self._gone_now()

    # The provider -> the call.

    def from_provider(self, payload: bytes) -> None:
        """One message from the provider: checked (``events.parse_event``), then dispatched; never raises.

        A message that is not a readable event is counted and logged once per call (``protocol_error``
        with its reason) and dropped; so is an event with a field of the wrong type.
        """
        if self.state != OPEN:
            return
        try:
            event, kind = ev.parse_event(payload)
            if kind == "response.output_audio.delta":
                self._delta(event)
                return
            self.heard_at = self.clock.seconds()
            handler = self._events.get(kind)
            if handler is not None:
                handler(self, event)
        except ev.BadEvent as e:
            self.call.protocol_error(e.reason, e.detail)
        except (LookupError, TypeError, AttributeError, ValueError, RecursionError) as e:  # a check above was missed
            self.call.protocol_error("realtime-bad-field", f"{type(e).__name__} reading an event: {printable(str(e), 120)}")

    def _delta(self, event: dict) -> None:
        call = self.call
        if self.stopped:
            return
        item_id = event.get("item_id")
        if type(item_id) is not str or not 0 < len(item_id) <= ev.MAX_ID_LENGTH:
            ev.text(event, "item_id", "response.output_audio.delta")  # raises BadEvent: what the field was
        if item_id in self.cut_items or event.get("response_id") in self.cut_responses:
            return  # in flight when the caller barged in: never played
        delta = event.get("delta")
        try:
            audio = _a2b(delta, strict_mode=True)
        except (TypeError, ValueError, binascii.Error):
            call.protocol_error("realtime-bad-audio", "response.output_audio.delta carried no base64 audio")
            return
        if not audio:
            return
        self.heard_at = self.clock.seconds()
        self.deltas += 1
        self.response_audio = True
        if self.speech_at is not None:
            self.stats.turn.observe(self.clock.seconds() - self.speech_at)
            self.speech_at = None
        call.send_audio(audio)
        mark = self.playback.sent(item_id, len(audio))
        if mark is not None:
            call.send_mark(mark)
        link = self.link
        if link is not None:
            self.stats.bridge.observe(_perf() - link.received_at)

    def _session_updated(self, event) -> None:
        if not self.session_ready:
            self.session_ready = True
            if self.waiting_for == "the session":
                self.waiting_for = None

    def _response_created(self, event) -> None:
        self.responding = ev.text(ev.section(event, "response", "response.created"), "id", "response.created.response")
        self.response_audio = False
        self._arm("a response")

    def _response_done(self, event) -> None:
        response = event.get("response")
        self.responding = None  # over, whatever else the event holds
        self.waiting_for = None
        spoke = self.response_audio
        self.response_audio = False
        if self.ending is not None and self.ending_after_response:
            self.ending_after_response = False  # the last words asked for: sent whole
            self._goodbye_played()
            return
        if type(response) is not dict:
            if response is not None:
                self.call.protocol_error("realtime-bad-field", f"response.done.response is a JSON {ev.json_type(response)}")
            return
        output = response.get("output")
        if type(output) is not list:
            if output is not None:
                self.call.protocol_error("realtime-bad-field", f"response.done.response.output is a JSON {ev.json_type(output)}")
            return
        if response.get("status") != "cancelled":
            for item in output:
                if type(item) is dict and item.get("type") == "function_call":
                    self._tool(item, spoke)

    def _speech_started(self, event) -> None:
        self.speech_at = None
        if not (self.playback.playing or self.responding):
            return
        min_ms = self.options["barge_in_min_ms"]
        if not min_ms:
            self._barge_in()
        elif "barge_in" not in self._timers:
            self._timers["barge_in"] = self.clock.callLater(min_ms / 1000, self._barge_in)

    def _speech_stopped(self, event) -> None:
        if "barge_in" in self._timers:
            self._cancel("barge_in")
            self.stats.barge_ins_ignored += 1
            log.info(
                "realtime callSid={callSid}: caller sound shorter than {min_ms} ms while the agent spoke; not a barge-in",
                event_name="realtime.barge_in_ignored",
                min_ms=self.options["barge_in_min_ms"],
                **self.call.ids,
            )
        self.speech_at = self.clock.seconds()

    def _barge_in(self) -> None:
        self._timers.pop("barge_in", None)
        if self.ending is not None:
            return  # the goodbye plays out
        call = self.call
        cut = self.playback.interrupt()
        call.clear()
        self.stats.barge_ins += 1
        if self.responding is not None:
            self.cut_responses.append(self.responding)
            if self.options["barge_in_min_ms"]:
                self._send_event({"type": "response.cancel", "event_id": f"vb-cancel-{next(self.events)}"})
        if cut is None:
            log.info(
                "realtime callSid={callSid}: barge-in before any agent audio played", event_name="realtime.barge_in", **call.ids
            )
            return
        item_id, audio_end_ms = cut
        self.cut_items.append(item_id)
        self._send_event(
            {
                "type": "conversation.item.truncate",
                "event_id": f"vb-truncate-{next(self.events)}",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )
        self.stats.truncations += 1
        log.info(
            "realtime callSid={callSid}: barge-in; the agent's item cut at {audio_end_ms} ms of {sent_ms} ms sent",
            event_name="realtime.barge_in",
            item_id=printable(item_id, 64),
            audio_end_ms=audio_end_ms,
            sent_ms=self.playback.sent_ms(item_id),
            **call.ids,
        )

    def _error(self, event) -> None:
        err = event.get("error")
        if type(err) is not dict:  # still the provider saying something failed: an error event without its details
            err = {}
        code, kind = err.get("code"), err.get("type")
        code = code if type(code) is str and code else kind if type(kind) is str and kind else "unknown"
        caused_by = err.get("event_id")
        ours = type(caused_by) is str and caused_by.startswith(("vb-truncate-", "vb-cancel-"))
        if code in BENIGN_ERRORS or ours:
            self.stats.provider_errors[error_label(code)] += 1
            log.info(
                "realtime callSid={callSid}: the API refused a best-effort request: {code}",
                event_name="realtime.provider_error",
                code=printable(code, 60),
                message=ev.shown(err.get("message"), 200),
                **self.call.ids,
            )
            return
        self._fail("error-event", f"{ev.shown(kind, 60)} {printable(code, 60)}: {ev.shown(err.get('message'), 200)}")

    def _caller_transcript(self, event) -> None:
        self._transcript("caller", event.get("transcript"))

    def _agent_transcript(self, event) -> None:
        self._transcript("agent", event.get("transcript"))

    def _transcript(self, role: str, text) -> None:
        if not self.options["transcripts"] or not isinstance(text, str) or not text.strip():
            return
        text = text.strip()[:MAX_TRANSCRIPT]
        at_ms = int((self.clock.seconds() - self.started_at) * 1000)
        if len(self.transcripts) < MAX_TRANSCRIPTS:
            self.transcripts.append({"role": role, "atMs": at_ms, "text": text})
        log.info(
            "realtime callSid={callSid} {role}: {text}",
            event_name="realtime.transcript",
            role=role,
            text=self.call.loggable(text, MAX_TRANSCRIPT),
            **self.call.ids,
        )

    _events = {
        "session.updated": _session_updated,
        "response.created": _response_created,
        "response.done": _response_done,
        "input_audio_buffer.speech_started": _speech_started,
        "input_audio_buffer.speech_stopped": _speech_stopped,
        "error": _error,
        "conversation.item.input_audio_transcription.completed": _caller_transcript,
        "response.output_audio_transcript.done": _agent_transcript,
    }

    # Tools.

    def _tool(self, item: dict, spoke: bool) -> None:
        name, call_id = item.get("name"), item.get("call_id")
        if type(call_id) is not str or len(call_id) > ev.MAX_ID_LENGTH:
            call_id = None  # no output goes back for it (_tool_output)
        arguments = ev.arguments(item.get("arguments"))
        if self.ending is not None:
            self.stats.tool_calls[(tool_label(name), "ignored")] += 1
            return
        if name == "end_call":
            self.stats.tool_calls[("end_call", "ok")] += 1
            self._end_after_words(("end_call",), call_id, spoke, "Say a short goodbye now; the call ends after it.")
        elif name == "transfer_call":
            destination = arguments.get("destination")
            transfers = self.options["transfers"]
            if isinstance(destination, str) and destination in transfers:
                self.stats.tool_calls[("transfer_call", "ok")] += 1
                action = ("transfer", destination, transfers[destination])
                self._end_after_words(
                    action, call_id, spoke, "Tell the caller in one short sentence that you are transferring them now."
                )
            else:
                self.stats.tool_calls[("transfer_call", "refused")] += 1
                known = ", ".join(sorted(transfers)) or "none"
                log.info(
                    "realtime callSid={callSid}: transfer to {destination} refused: not in transfers ({known})",
                    event_name="realtime.transfer_refused",
                    destination=ev.shown(destination, 64),
                    known=known,
                    **self.call.ids,
                )
                error = f"unknown destination '{ev.shown(destination, 64)}'; known: {known}"
                self._tool_output(call_id, {"ok": False, "error": error})
                self._create_response()
        else:
            self.stats.tool_calls[(tool_label(name), "unknown")] += 1
            self._tool_output(call_id, {"ok": False, "error": f"no tool named '{ev.shown(name, 64)}'"})
            self._create_response()

    def _tool_output(self, call_id, output: dict) -> None:
        if isinstance(call_id, str):
            self._send_event(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": orjson.dumps(output).decode()},
                }
            )

    def _end_after_words(self, action: tuple, call_id, spoke: bool, prompt: str) -> None:
        """End (or transfer) once the agent's last words have played: those of this response, else of one more."""
        self.ending = action
        log.info(
            "realtime callSid={callSid}: the agent asked for {tool}; the call ends after its last words",
            event_name="realtime.tool_call",
            tool="end_call" if action[0] == "end_call" else "transfer_call",
            destination=action[1] if action[0] == "transfer" else "-",
            **self.call.ids,
        )
        self._timers["goodbye"] = self.clock.callLater(GOODBYE_TIMEOUT, self._finish)
        if spoke:
            self._goodbye_played()
        else:
            self._tool_output(call_id, {"ok": True, "note": prompt})
            self.ending_after_response = True
            self._create_response()

    def _goodbye_played(self) -> None:
        """All the last words are sent: a mark after them says when they have played."""
        self.call.send_mark(BYE_MARK)

    def _finish(self) -> None:
        action, self.ending = self.ending, None
        self._cancel("goodbye")
        if action is None or self.stopped:
            return
        if action[0] == "transfer":
            _, name, destination = action
            self.call.dial_and_end(destination, f"transfer_call:{name}", "transfer")
        else:
            self.call.hangup("agent-hangup")

    # Failure and the end.

    def _arm(self, why: str) -> None:
        """Expect the provider to answer (``why``): silence for ``stall_timeout`` is a stall.

        One timer per call, checked when it fires against ``heard_at``, which every message from
        the provider sets: no timer is moved per message.
        """
        self.waiting_for = why
        self.heard_at = self.clock.seconds()
        if "stall" not in self._timers:
            self._timers["stall"] = self.clock.callLater(self.options["stall_timeout"], self._check_stall)

    def _check_stall(self) -> None:
        self._timers.pop("stall", None)
        if self.waiting_for is None or self.state not in (CONNECTING, OPEN):
            return
        timeout = self.options["stall_timeout"]
        if self.state == CONNECTING:  # connect_timeout and handshake_timeout cover this part
            self._timers["stall"] = self.clock.callLater(timeout, self._check_stall)
            return
        quiet = self.clock.seconds() - self.heard_at
        if quiet < timeout:
            self._timers["stall"] = self.clock.callLater(timeout - quiet, self._check_stall)
            return
        self._fail("stalled", f"nothing from the Realtime API for {timeout:g}s while waiting for {self.waiting_for}")

    def _fail(self, reason: str, detail: str) -> None:
        if self.state in (FAILED, DONE):
            return
        self.state = FAILED
        self.pending.clear()
        self._cancel_all()
        self.stats.failures[reason] += 1
        call = self.call
        fallback = self.options["fallback"]
        log.warn(
            "realtime callSid={callSid} to {url} failed: {reason} ({detail}); fallback: {fallback}",
            event_name="realtime.failed",
            url=redact_url(self.url),
            reason=reason,
            detail=printable(detail, 300),
            fallback=fallback,
            appends=self.appends,
            deltas=self.deltas,
            **call.ids,
        )
        self._abort()
        if self.ending is not None:
            self._finish()  # the agent had already ended the conversation: do what it asked
        elif not self.stopped:
            if fallback == "say":
                call.say_and_hang_up(self.options["message"], reason, "realtime-failed")
            else:
                call.hangup("realtime-failed")

    def _abort(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.link is not None:
            self.link.dropConnection(abort=True)

    def _gone_now(self) -> None:
        self._cancel("close")
        if not self._gone.called:
            self._gone.callback(None)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_all(self) -> None:
        for name in [n for n in self._timers if n != "close"]:
            self._cancel(name)


def classify_handshake_failure(lost, text: str) -> tuple[str, str]:
    """(reason, detail) for a connection that closed before the WebSocket opened (as the relay tells them).

    ``lost`` is the transport's own reason: a certificate the TLS layer refused shows there, while
    Autobahn's text says only "dropped".
    """
    if lost is not None and lost.check(VerificationError, SSL.Error):
        return "tls-failed", f"{text}: {lost.value!r}"
    if "upgrade failed" in text:
        return "handshake-refused", text
    if "SSL" in text or "TLS" in text or "certificate" in text:
        return "tls-failed", text
    return "handshake-failed", text


class _NoDebugLog:
    """Autobahn logs its whole opening request at debug level, ``Authorization: Bearer KEY`` with it.

    The provider link's protocol logs through this instead: everything but debug and trace.
    """

    def __init__(self, inner):
        self._inner = inner

    def debug(self, *args, **kwargs) -> None:
        pass

    trace = debug

    def __getattr__(self, name):
        return getattr(self._inner, name)


class ProviderProtocol(LeanClientFrames, WebSocketClientProtocol):
    """The link to the Realtime API: text events in and out, nothing else."""

    log = _NoDebugLog(WebSocketClientProtocol.log)
    lost_reason = None
    refused_status: int | None = None

    def failHandshake(self, reason):
        status_line = getattr(self, "http_status_line", None) or ""
        parts = status_line.split()
        if len(parts) >= 2 and parts[1].isdigit() and parts[1] != "101":
            self.refused_status = int(parts[1])
        return super().failHandshake(reason)

    def connectionMade(self):
        # Small messages every 20 ms each way: no Nagle delay (the TCP connection under TLS too).
        for transport in (self.transport, getattr(self.transport, "transport", None)):
            try:
                transport.setTcpNoDelay(True)
                break
            except (AttributeError, OSError):
                continue
        super().connectionMade()

    def connectionLost(self, reason):
        self.lost_reason = reason
        super().connectionLost(reason)

    def onOpen(self):
        handler = self.factory.handler
        self.text_sink = handler.from_provider
        handler.opened(self)

    def binary_received(self, payload: bytes) -> None:
        self.factory.handler.call.protocol_error(
            "realtime-binary-frame", f"the Realtime API sent a binary frame of {len(payload)} bytes"
        )

    def onClose(self, wasClean, code, reason):
        self.factory.handler.closed(self, wasClean, code, reason)


class ProviderFactory(WebSocketClientFactory):
    protocol = ProviderProtocol
    handler: OpenAIRealtimeHandler | None = None
