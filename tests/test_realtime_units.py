"""The openai-realtime handler's decisions, without a reactor: playback tracking, options, barge-in guard, stalls."""

from __future__ import annotations

import base64
import binascii
import os

import orjson
import pytest
from twisted.internet import task

from voicebridge.fastpath import frames
from voicebridge.handlers.openai_realtime import BYE_MARK, OPEN, OpenAIRealtimeHandler
from voicebridge.handlers.openai_realtime import options as opts
from voicebridge.handlers.openai_realtime.playback import MARK_PREFIX, Playback, b64_bytes
from voicebridge.handlers.openai_realtime.stats import Buckets, RealtimeStats
from voicebridge.net.leanclient import MaskPool, client_frame

# Playback: what the caller heard.


def test_marks_confirm_what_played_and_a_barge_in_cuts_there():
    p = Playback()
    names = [p.sent("item_a", 160) for _ in range(10)]
    assert names[0] == f"{MARK_PREFIX}1" and p.playing
    for name in names[:4]:
        assert p.confirmed(name)
    assert p.played_ms("item_a") == 80 and p.sent_ms("item_a") == 200
    assert p.interrupt() == ("item_a", 80), "4 chunks of 20 ms confirmed"
    assert not p.playing
    for name in names[4:]:  # Twilio returns the cleared marks at once: not heard
        assert p.confirmed(name)
    assert p.played_ms("item_a") == 80
    assert p.interrupt() is None, "nothing plays after the clear"


def test_a_later_mark_confirms_the_ones_before_it_and_foreign_marks_are_not_ours():
    p = Playback()
    names = [p.sent("item_a", 400) for _ in range(3)] + [p.sent("item_b", 240)]
    assert p.confirmed(names[2]) and p.played_ms("item_a") == 150
    assert not p.confirmed("someone-else") and not p.confirmed(MARK_PREFIX + "x1")
    assert p.interrupt() == ("item_b", 0), "the item now playing, none of it heard yet"


def test_never_more_than_sent_even_when_marks_run_out():
    p = Playback(max_pending=3)
    names = [p.sent("item", 160) for _ in range(5)]
    assert names[3:] == [None, None] and p.unmarked == 2
    p.confirmed(names[2])
    assert p.played_ms("item") == 60 <= p.sent_ms("item") == 100, "short of what played, never beyond"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 159, 160, 161, 8000])
def test_b64_bytes_is_the_decoded_length(n):
    text = base64.b64encode(os.urandom(n))
    assert b64_bytes(text) == b64_bytes(text.decode()) == n


# Options.


def test_the_key_is_never_an_option_and_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="api_key: the key is never an option"):
        opts.check_options({"api_key": "sk-x"})
    with pytest.raises(ValueError, match="no API key: set OPENAI_API_KEY"):
        opts.check_options({})
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    checked = opts.check_options({"api_key_file": str(key)})
    assert checked["api_key"] == "sk-from-file" and "sk-from-file" not in repr(checked)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert opts.check_options({})["api_key"] == "sk-env"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"turn_detection": "vad"}, "turn_detection.type: 'vad' is not one of"),
        ({"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}, "unknown for semantic_vad: threshold"),
        ({"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}}, "silence_duration_ms"),
        ({"transfers": {"sales": "555-0100"}}, "transfers.sales: '555-0100' is not an E.164 number"),
        ({"transfers": {"a b": "+15550100002"}}, "transfers.a b: a name is"),
        ({"barge_in_min_ms": 9000}, "barge_in_min_ms"),
        ({"url": "https://api.openai.com/v1/realtime"}, "url:"),
        ({"instructions": "x", "instructions_file": "y"}, "give one of them"),
        ({"fallback": "beep"}, "fallback: 'beep'"),
        ({"voise": "alloy"}, "unknown option"),
    ],
)
def test_mistakes_stop_start_up_with_their_place(options, message, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(ValueError, match=message):
        opts.check_options(options)


def test_the_key_goes_as_openai_or_azure_want_it(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert opts.auth_headers(opts.check_options({})) == {"Authorization": "Bearer sk-test"}
    assert opts.auth_headers(opts.check_options({"api_key_header": "api-key"})) == {"api-key": "sk-test"}
    with pytest.raises(ValueError, match="api_key_header: 'x-key' is not one of"):
        opts.check_options({"api_key_header": "x-key"})


def test_instructions_take_the_calls_parameters_and_leave_other_braces_alone():
    text = opts.render_instructions(
        'For {businessId} on plan {plan}; JSON {"a": 1}; {unknown}', {"businessId": "b1", "plan": "pro"}
    )
    assert text == 'For b1 on plan pro; JSON {"a": 1}; {unknown}'


def test_the_model_joins_the_url_unless_the_url_names_one():
    assert (
        opts.provider_url("wss://api.openai.com/v1/realtime", "gpt-realtime")
        == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    azure = "wss://x.openai.azure.com/openai/v1/realtime?model=my-deployment"
    assert opts.provider_url(azure, "gpt-realtime") == azure


def test_the_guard_keeps_the_server_from_cancelling_on_any_sound(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    guarded = opts.session_update(opts.check_options({"barge_in_min_ms": 300}), "hi")["session"]
    assert guarded["audio"]["input"]["turn_detection"] == {"type": "server_vad", "interrupt_response": False}
    plain = opts.session_update(opts.check_options({"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}), "hi")
    assert plain["session"]["audio"]["input"]["turn_detection"] == {"type": "semantic_vad", "eagerness": "low"}
    assert plain["session"]["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "alloy"}


# The handler's decisions, with a fake call, a fake link and a task.Clock.


class FakeCall:
    """What the handler API's HandlerCall offers, recorded."""

    def __init__(self, clock):
        self.clock = clock
        self.parameters = {"businessId": "b1"}
        self.ids = {"callSid": "CA1", "conn": 1}
        self.call_sid = "CA1"
        self.sent, self.wishes, self.errors = [], [], []
        self.details = []  # (reason, detail) of each protocol error
        self.hung_up = None

    def send_audio(self, audio):
        self.sent.append(("media", audio))

    def send_mark(self, name):
        self.sent.append(("mark", name))

    def clear(self):
        self.sent.append(("clear",))

    def hangup(self, reason="hangup"):
        self.hung_up = reason

    def protocol_error(self, reason, detail):
        self.errors.append(reason)
        self.details.append((reason, detail))

    def say_and_hang_up(self, message, why, reason="hangup"):
        self.wishes.append(("say", message, why))
        self.hung_up = reason

    def dial_and_end(self, destination, why, reason="transfer"):
        self.wishes.append(("dial", destination, why))
        self.hung_up = reason


class FakeLink:
    received_at = 0.0

    def __init__(self):
        self.events = []

    def send_text(self, data):
        self.events.append(orjson.loads(data))

    def dropConnection(self, abort=False):
        self.dropped = True


def open_handler(monkeypatch, **options):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    clock = task.Clock()
    call = FakeCall(clock)
    handler = OpenAIRealtimeHandler(call, opts.check_options(options))
    handler.state, handler.link = OPEN, FakeLink()
    return handler, call, clock


def provider(handler, **event):
    handler.from_provider(orjson.dumps(event))


def delta(handler, item="item_1", response="resp_1", n=160):
    provider(
        handler,
        type="response.output_audio.delta",
        response_id=response,
        item_id=item,
        delta=base64.b64encode(b"\x55" * n).decode(),
    )


def test_a_cough_under_the_guard_is_not_a_barge_in_but_speech_is(monkeypatch):
    handler, call, clock = open_handler(monkeypatch, barge_in_min_ms=300)
    provider(handler, type="response.created", response={"id": "resp_1"})
    for _ in range(10):
        delta(handler)
    for _, name in [s for s in call.sent if s[0] == "mark"][:3]:
        handler.on_mark(name)
    provider(handler, type="input_audio_buffer.speech_started")
    clock.advance(0.2)
    provider(handler, type="input_audio_buffer.speech_stopped")
    clock.advance(1)
    assert ("clear",) not in call.sent and handler.stats.barge_ins_ignored == 1
    provider(handler, type="input_audio_buffer.speech_started")
    clock.advance(0.3)
    assert call.sent[-1] == ("clear",)
    sent = [e for e in handler.link.events if e["type"] in ("response.cancel", "conversation.item.truncate")]
    assert [e["type"] for e in sent] == ["response.cancel", "conversation.item.truncate"]
    assert (sent[1]["item_id"], sent[1]["audio_end_ms"], sent[1]["content_index"]) == ("item_1", 60, 0)
    before = len(call.sent)
    delta(handler)  # in flight when the caller spoke: dropped
    assert len(call.sent) == before


def test_late_provider_errors_about_our_own_truncate_do_not_end_the_call(monkeypatch):
    handler, call, clock = open_handler(monkeypatch)
    provider(handler, type="error", error={"type": "invalid_request_error", "code": "invalid_value", "event_id": "vb-truncate-3"})
    assert call.hung_up is None and handler.stats.provider_errors["invalid_value"] == 1
    provider(handler, type="error", error={"type": "server_error", "code": "server_error", "message": "boom"})
    assert call.hung_up == "realtime-failed" and handler.stats.failures["error-event"] == 1


def test_a_response_that_goes_quiet_is_a_stall_and_the_fallback_says_the_message(monkeypatch):
    handler, call, clock = open_handler(monkeypatch, stall_timeout=2, fallback="say", message="Sorry.")
    handler._create_response()
    clock.advance(1.5)
    provider(handler, type="response.created", response={"id": "resp_1"})
    clock.advance(1.5)
    assert call.hung_up is None, "it spoke within the timeout"
    clock.advance(1)
    assert call.hung_up == "realtime-failed" and call.wishes == [("say", "Sorry.", "stalled")]


def test_bad_audio_from_the_provider_never_reaches_twilio(monkeypatch):
    handler, call, clock = open_handler(monkeypatch)
    provider(handler, type="response.output_audio.delta", item_id="item_1", response_id="r", delta="not base64!")
    handler.from_provider(b"{not json")
    assert call.sent == [] and call.errors == ["realtime-bad-audio", "realtime-invalid-json"]


def test_transfer_waits_for_the_last_words_then_dials(monkeypatch):
    handler, call, clock = open_handler(monkeypatch, transfers={"sales": "+15550100002"})
    provider(handler, type="response.created", response={"id": "resp_1"})
    delta(handler)
    arguments = orjson.dumps({"destination": "sales"}).decode()
    provider(handler, type="response.done", response={"id": "resp_1", "status": "completed", "output": [
        {"type": "function_call", "name": "transfer_call", "call_id": "c1", "arguments": arguments}]})  # fmt: skip
    assert call.sent[-1] == ("mark", BYE_MARK) and call.hung_up is None
    handler.on_mark(BYE_MARK)
    assert call.wishes == [("dial", "+15550100002", "transfer_call:sales")] and call.hung_up == "transfer"


def test_goodbye_that_never_plays_still_ends_the_call(monkeypatch):
    handler, call, clock = open_handler(monkeypatch, stall_timeout=60)
    provider(handler, type="response.done", response={"id": "r", "status": "completed", "output": [
        {"type": "function_call", "name": "end_call", "call_id": "c1", "arguments": "{}"}]})  # fmt: skip
    assert handler.link.events[-1]["type"] == "response.create", "asked for a goodbye"
    clock.advance(19)
    assert call.hung_up is None
    clock.advance(1)
    assert call.hung_up == "agent-hangup" and call.wishes == []


def test_a_failure_after_the_agent_ended_the_call_does_what_it_asked(monkeypatch):
    handler, call, clock = open_handler(monkeypatch, transfers={"sales": "+15550100002"}, fallback="say")
    arguments = orjson.dumps({"destination": "sales"}).decode()
    provider(handler, type="response.done", response={"id": "r", "status": "completed", "output": [
        {"type": "function_call", "name": "transfer_call", "call_id": "c1", "arguments": arguments}]})  # fmt: skip
    handler.closed(handler.link, False, 1006, "gone")
    assert call.wishes == [("dial", "+15550100002", "transfer_call:sales")] and call.hung_up == "transfer"


# The lean client frame path's codec.


def test_client_frames_are_masked_and_decode_to_the_payload():
    masks = MaskPool()
    for n in (0, 125, 126, 300, 65535):
        payload = os.urandom(n)
        frame = client_frame(payload, masks.take())
        b0, length, header_len, mask = frames.read_header(frame)
        assert (b0, length, len(mask)) == (frames.FIN_TEXT, n, 4)
        assert frames.unmask(frame[header_len:], mask) == payload
    with pytest.raises(ValueError):
        client_frame(b"x" * 65536, b"abcd")


def test_masks_come_from_the_kernel_a_block_at_a_time():
    calls = []

    def urandom(n):
        calls.append(n)
        return os.urandom(n)

    pool = MaskPool(urandom)
    masks = {pool.take() for _ in range(2048)}
    assert calls == [4096, 4096] and len(masks) > 2000


def test_buckets_count_and_rank():
    b = Buckets((0.001, 0.01, 0.1))
    for v in (0.0005, 0.002, 0.002, 0.05, 3.0):
        b.observe(v)
    assert b.cumulative() == [("0.001", 1), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    assert b.quantile(0.5) == 0.01 and b.quantile(0.99) == float("inf") and RealtimeStats().turn.quantile(0.5) is None
    assert binascii  # noqa: B018


def test_dial_twiml_for_a_number_and_a_sip_uri():
    from voicebridge.twilio import twiml
    from voicebridge.web.connectaction import ConnectActions

    assert "<Dial><Number>+15550100002</Number></Dial>" in twiml.dial("+15550100002")
    assert "<Dial><Sip>sip:desk@pbx.example.com</Sip></Dial>" in twiml.dial("sip:desk@pbx.example.com")
    actions = ConnectActions(task.Clock())
    actions.dial("CA1", "+15550100002", "transfer_call:sales")
    body, reason, answer = actions.take_answer("CA1")
    assert (reason, answer) == ("transfer_call:sales", "dial") and "<Number>" in body and actions.take("CA1") is None


def test_the_provider_links_log_drops_autobahns_debug_lines_which_carry_the_key():
    from voicebridge.handlers.openai_realtime import ProviderProtocol, _NoDebugLog

    seen = []

    class Inner:
        def debug(self, *a, **k):
            seen.append("debug")

        def info(self, *a, **k):
            seen.append("info")

    assert isinstance(ProviderProtocol.log, _NoDebugLog)
    log = _NoDebugLog(Inner())
    log.debug("sent HTTP request:\n{request}", request="Authorization: Bearer sk-x")
    log.trace("x")
    log.info("y")
    assert seen == ["info"]


def test_the_handler_api_hands_the_caller_on_with_dial_and_end():
    from voicebridge.handlers.api import HandlerCall
    from voicebridge.web.connectaction import ConnectActions

    class Call:
        call_sid = "CA7"
        ended = None

        send_audio = send_mark = clear = forward = None

        def hangup(self, reason="hangup"):
            self.ended = reason

    call, actions = Call(), ConnectActions(task.Clock())
    HandlerCall(call, task.Clock(), actions, None).dial_and_end("sip:desk@pbx.example.com", "transfer_call:desk")
    body, why, answer = actions.take_answer("CA7")
    assert (why, answer, call.ended) == (
        "transfer_call:desk",
        "dial",
        "transfer",
    ) and "<Sip>sip:desk@pbx.example.com</Sip>" in body
