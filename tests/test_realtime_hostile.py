"""The openai-realtime handler against a hostile or broken provider, without a reactor.

Every message from the provider goes through ``events.parse_event`` before dispatch: whatever arrives
(a non-string ``type``, nesting ~1,000 deep in any field, a field of the wrong type) is counted as a
protocol error with a precise reason and a bounded detail and dropped, and nothing escapes
``from_provider`` (which runs inside the link's ``dataReceived``). Metric labels drawn from the
provider's values (tool names, error codes) stay a fixed, small set.
"""

from __future__ import annotations

import base64

import orjson
import pytest

from tests.test_realtime_units import open_handler, provider
from voicebridge.handlers.openai_realtime import BENIGN_ERRORS, OPEN
from voicebridge.handlers.openai_realtime import events as ev
from voicebridge.handlers.openai_realtime import options as opts
from voicebridge.handlers.openai_realtime.stats import ERROR_CODES, OTHER, RealtimeCollector, error_label, tool_label


def nested(depth: int, leaf: str = '"x"') -> str:
    """JSON text of a value ``depth`` arrays deep (orjson would not dump one past 255 levels)."""
    return "[" * depth + leaf + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def feed(handler, text: str | bytes) -> None:
    result = handler.from_provider(text.encode() if isinstance(text, str) else text)
    assert result is None


def only_error(call) -> tuple[str, str]:
    assert len(call.details) == 1, call.details
    reason, detail = call.details[0]
    assert reason in ev.REASONS, reason
    assert len(detail) <= 200 and detail.isprintable() and detail.isascii(), detail
    return reason, detail


# The one check before dispatch: a JSON object with a bounded string type, nested within bounds.


@pytest.mark.parametrize(
    "payload, reason, detail",
    [
        ('{"type": {}}', "realtime-bad-type", "'type' is a JSON object, not a string"),
        ('{"type": []}', "realtime-bad-type", "'type' is a JSON array, not a string"),
        ('{"type": [["error"]]}', "realtime-bad-type", "'type' is a JSON array, not a string"),
        ('{"type": 7}', "realtime-bad-type", "'type' is a JSON number, not a string"),
        ('{"type": true}', "realtime-bad-type", "'type' is a JSON boolean, not a string"),
        ('{"type": ""}', "realtime-bad-type", "'type' is 0 characters, not 1 to 128"),
        ('{"type": "' + "e" * 5000 + '"}', "realtime-bad-type", "'type' is 5000 characters, not 1 to 128"),
        ('{"type": null}', "realtime-missing-type", "an object without 'type'"),
        ("{}", "realtime-missing-type", "an object without 'type'"),
        ("[]", "realtime-not-object", "a JSON array, not an event object"),
        ('"error"', "realtime-not-object", "a JSON string, not an event object"),
        ("null", "realtime-not-object", "a JSON null, not an event object"),
        ("{not json", "realtime-invalid-json", "9 bytes that are not JSON"),
        ("\xff\xfe", "realtime-invalid-json", "bytes that are not JSON"),
        (nested(5000), "realtime-too-deep", "nesting more than 1,024 levels"),
    ],
)
def test_what_is_not_an_event_is_dropped_with_its_reason(monkeypatch, payload, reason, detail):
    handler, call, clock = open_handler(monkeypatch)
    feed(handler, payload)
    got_reason, got_detail = only_error(call)
    assert (got_reason, detail in got_detail) == (reason, True), got_detail
    assert handler.state == OPEN and call.hung_up is None and call.sent == [] and handler.link.events == []


def test_an_error_event_id_990_levels_deep_is_too_deep_not_a_recursion_error(monkeypatch):
    handler, call, clock = open_handler(monkeypatch)
    feed(handler, '{"type":"error","error":{"type":"server_error","code":"x","event_id":' + nested(990) + "}}")
    assert only_error(call) == ("realtime-too-deep", "error nests more than 32 levels deep")
    assert handler.state == OPEN and call.hung_up is None, "dropped before it was read: not an error event"


@pytest.mark.parametrize(
    "kind, field",
    [
        ("error", "error"),
        ("response.created", "response"),
        ("response.done", "response"),
        ("response.output_audio.delta", "delta"),
        ("response.output_audio.delta", "item_id"),
        ("session.updated", "session"),
        ("input_audio_buffer.speech_started", "extra"),
        ("conversation.item.input_audio_transcription.completed", "transcript"),
        ("some.future.event", "anything"),  # unknown types too: never read, still bounded
    ],
)
@pytest.mark.parametrize("value", [nested(33), deep_object(40), nested(1000), deep_object(1000), nested(2000)])
def test_deep_nesting_in_any_field_of_any_event_is_dropped(monkeypatch, kind, field, value):
    handler, call, clock = open_handler(monkeypatch, transcripts=True)
    feed(handler, f'{{"type":"{kind}","{field}":{value}}}')
    reason, detail = only_error(call)
    assert reason == "realtime-too-deep"
    assert detail == f"{kind} nests more than 32 levels deep" or "nesting more than 1,024 levels" in detail
    assert handler.state == OPEN and call.sent == [] and handler.transcripts == []


def test_the_depth_bound_is_exact_and_the_ga_shapes_are_far_within_it(monkeypatch):
    handler, call, clock = open_handler(monkeypatch)
    feed(handler, f'{{"type":"some.future.event","a":{nested(31, "1")}}}')  # 32 containers with the event
    assert call.details == []
    feed(handler, f'{{"type":"some.future.event","a":{nested(32, "1")}}}')
    assert only_error(call)[0] == "realtime-too-deep"
    # session.updated echoes our session: tools with their JSON schemas, the deepest GA event we get.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    session = opts.session_update(opts.check_options({"transfers": {"sales": "+15550100002"}}), "hi")["session"]
    assert not ev.too_deep({"type": "session.updated", "session": session}, 10)
    event, kind = ev.parse_event(orjson.dumps({"type": "session.updated", "event_id": "ev_1", "session": session}))
    assert kind == "session.updated" and event["session"] == session


# Fields, each checked before it is used.


@pytest.mark.parametrize("event_id", [5, {}, [], ["vb-truncate-1"], {"vb-cancel-1": 1}, True, "x" * 100_000])
def test_an_error_event_id_of_any_type_is_read_safely(monkeypatch, event_id):
    handler, call, clock = open_handler(monkeypatch)
    provider(handler, type="error", error={"type": "server_error", "code": "server_error", "event_id": event_id})
    assert call.details == [] and call.hung_up == "realtime-failed", "not one of ours: the call's error"
    assert handler.stats.failures["error-event"] == 1


@pytest.mark.parametrize(
    "error, shown",
    [
        ("boom", "- unknown: -"),
        ([1, 2], "- unknown: -"),
        (None, "- unknown: -"),
        ({"type": {"a": 1}, "code": ["x"], "message": {"m": [1]}}, "<object> unknown: <object>"),
        ({"type": "server_error", "code": 42, "message": "x" * 5000}, "server_error server_error: " + "x" * 200 + "..."),
        ({"type": "invalid_request_error", "code": "bad\x00\ncode", "message": "m"}, "invalid_request_error bad\\x00\\ncode: m"),
    ],
)
def test_an_error_event_of_any_shape_fails_the_call_with_a_bounded_detail(monkeypatch, error, shown):
    handler, call, clock = open_handler(monkeypatch)
    failed = []
    monkeypatch.setattr(handler, "_fail", lambda reason, detail: failed.append((reason, detail)))
    provider(handler, type="error", error=error)
    assert failed == [("error-event", shown)] and call.details == []


def test_a_benign_error_code_nested_in_a_list_is_not_benign(monkeypatch):
    handler, call, clock = open_handler(monkeypatch)
    provider(handler, type="error", error={"code": ["response_cancel_not_active"]})
    assert call.hung_up == "realtime-failed" and call.details == []


@pytest.mark.parametrize(
    "response, detail",
    [
        ({"id": {"a": [1]}}, "response.created.response.id is a JSON object, not a string"),
        ({"id": 7}, "response.created.response.id is a JSON number, not a string"),
        ({"id": "r" * 300}, "response.created.response.id is 300 characters, not 1 to 256"),
        ({}, "response.created.response.id is a JSON null, not a string"),
        ([{"id": "resp_1"}], "response.created.response is a JSON array, not an object"),
        (None, "response.created.response is a JSON null, not an object"),
    ],
)
def test_a_response_created_without_a_string_id_is_dropped(monkeypatch, response, detail):
    handler, call, clock = open_handler(monkeypatch)
    provider(handler, type="response.created", response=response)
    assert only_error(call) == ("realtime-bad-field", detail)
    assert handler.responding is None


@pytest.mark.parametrize(
    "response, detail",
    [
        ([1], "response.done.response is a JSON array"),
        ("done", "response.done.response is a JSON string"),
        ({"status": "completed", "output": {"type": "function_call"}}, "response.done.response.output is a JSON object"),
        ({"status": "completed", "output": 3}, "response.done.response.output is a JSON number"),
    ],
)
def test_a_response_done_of_the_wrong_shape_still_ends_the_response(monkeypatch, response, detail):
    handler, call, clock = open_handler(monkeypatch)
    provider(handler, type="response.created", response={"id": "resp_1"})
    provider(handler, type="response.done", response=response)
    assert only_error(call) == ("realtime-bad-field", detail)
    assert handler.responding is None and handler.waiting_for is None


def function_call(handler, name, arguments="{}", call_id="call_1"):
    provider(handler, type="response.created", response={"id": "resp_1"})
    item = {"type": "function_call", "name": name, "call_id": call_id, "arguments": arguments}
    provider(handler, type="response.done", response={"id": "resp_1", "status": "completed", "output": [item, 5, None, []]})


@pytest.mark.parametrize(
    "name, shown",
    [
        ({"end_call": 1}, "<object>"),
        (["end_call"], "<array>"),
        (None, "-"),
        (12, "<number>"),
        ("x" * 100_000, "x" * 64 + "..."),
        ("end\ncall\x00", "end\\ncall\\x00"),
    ],
)
def test_a_tool_name_of_any_type_is_an_unknown_tool_named_safely(monkeypatch, name, shown):
    handler, call, clock = open_handler(monkeypatch)
    function_call(handler, name)
    assert call.details == [] and handler.ending is None
    outputs = [e for e in handler.link.events if e["type"] == "conversation.item.create"]
    assert orjson.loads(outputs[0]["item"]["output"]) == {"ok": False, "error": f"no tool named '{shown}'"}
    assert dict(handler.stats.tool_calls) == {(OTHER, "unknown"): 1}


@pytest.mark.parametrize(
    "arguments",
    [
        orjson.dumps({"destination": {"sales": [1]}}).decode(),
        orjson.dumps({"destination": ["sales"]}).decode(),
        '{"destination":' + nested(1000) + "}",
        '{"destination":' + nested(5000) + "}",
        nested(3000),
        "[not json",
        {"destination": "sales"},  # not a JSON text
        7,
    ],
)
def test_transfer_arguments_of_any_shape_are_refused_safely(monkeypatch, arguments):
    handler, call, clock = open_handler(monkeypatch, transfers={"sales": "+15550100002"})
    function_call(handler, "transfer_call", arguments)
    assert call.details == [] and handler.ending is None
    assert dict(handler.stats.tool_calls) == {("transfer_call", "refused"): 1}
    output = orjson.loads([e for e in handler.link.events if e["type"] == "conversation.item.create"][0]["item"]["output"])
    assert output["error"] in ("unknown destination '<object>'; known: sales", "unknown destination '<array>'; known: sales",
                               "unknown destination '-'; known: sales")  # fmt: skip


@pytest.mark.parametrize("call_id", [{"c": 1}, ["call_1"], 9, "c" * 300])
def test_a_call_id_that_is_not_an_id_gets_no_output_back(monkeypatch, call_id):
    handler, call, clock = open_handler(monkeypatch)
    function_call(handler, "no_such_tool", call_id=call_id)
    assert call.details == []
    assert [e["type"] for e in handler.link.events] == ["response.create"], "the agent is asked to go on, no output"


@pytest.mark.parametrize("item_id", [{"i": 1}, ["item_1"], 5, None, "", "i" * 300])
def test_agent_audio_with_no_item_id_never_reaches_twilio(monkeypatch, item_id):
    handler, call, clock = open_handler(monkeypatch)
    event = {"type": "response.output_audio.delta", "response_id": "r", "delta": base64.b64encode(b"\x55" * 160).decode()}
    if item_id is not None:
        event["item_id"] = item_id
    feed(handler, orjson.dumps(event))
    reason, detail = only_error(call)
    assert reason == "realtime-bad-field" and detail.startswith("response.output_audio.delta.item_id is ")
    assert call.sent == [] and handler.deltas == 0


HOSTILE_VALUES = [
    {},
    [],
    {"a": [{"b": {}}]},
    0,
    -1.5e308,
    True,
    None,
    "",
    "x" * 20_000,
    "\x00\udc80".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    nested(31),
]
FIELDS = ("error", "response", "item_id", "response_id", "delta", "transcript", "session", "event_id", "type_")


@pytest.mark.parametrize(
    "kind",
    [
        "session.updated",
        "response.created",
        "response.done",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "error",
        "conversation.item.input_audio_transcription.completed",
        "response.output_audio_transcript.done",
        "response.output_audio.delta",
    ],
)
def test_no_value_in_any_field_of_any_known_event_escapes(monkeypatch, kind):
    for field in FIELDS:
        for value in HOSTILE_VALUES:
            for wrap in (lambda v: v, lambda v: {"id": v, "output": v, "code": v, "event_id": v, "message": v, "status": v}):
                handler, call, clock = open_handler(monkeypatch, transcripts=True, barge_in_min_ms=100)
                text = value if isinstance(value, str) and value.startswith("[") else orjson.dumps(wrap(value)).decode()
                feed(handler, f'{{"type":"{kind}","{field}":{text}}}')
                for reason, detail in call.details:
                    assert reason in ev.REASONS + ("realtime-bad-audio",) and len(detail) <= 200, (reason, detail)
                clock.advance(60)  # timers armed by whatever was accepted run without error too


# Metric labels: a fixed set, whatever names the provider sends.


def series(handler, name: str) -> list:
    family = next(f for f in RealtimeCollector(handler.clock).collect() if f.name == name)
    return [s.labels for s in family.samples if s.name.endswith("_total")]


def test_5000_distinct_tool_names_make_one_label(monkeypatch):
    handler, call, clock = open_handler(monkeypatch)
    for n in range(5000):
        function_call(handler, f"tool_{n}", call_id=f"call_{n}")
    provider(handler, type="response.created", response={"id": "resp_end"})
    items = [{"type": "function_call", "name": name, "call_id": f"call_{name}"} for name in ("end_call", "tool_after_end")]
    provider(handler, type="response.done", response={"id": "resp_end", "status": "completed", "output": items})
    assert dict(handler.stats.tool_calls) == {(OTHER, "unknown"): 5000, ("end_call", "ok"): 1, (OTHER, "ignored"): 1}
    labels = series(handler, "voicebridge_realtime_tool_calls")
    assert len(labels) == 3 and {label["tool"] for label in labels} == {"end_call", OTHER}


def test_5000_distinct_error_codes_make_one_label(monkeypatch):
    handler, call, clock = open_handler(monkeypatch)
    for n in range(5000):
        provider(
            handler, type="error", error={"type": "invalid_request_error", "code": f"code_{n}", "event_id": f"vb-cancel-{n}"}
        )
    for code in sorted(BENIGN_ERRORS):
        provider(handler, type="error", error={"type": "invalid_request_error", "code": code})
    provider(handler, type="error", error={"type": "invalid_request_error", "code": "invalid_value", "event_id": "vb-truncate-1"})
    assert call.hung_up is None and handler.state == OPEN, "all answers to our own best-effort requests"
    assert dict(handler.stats.provider_errors) == {OTHER: 5000, "invalid_value": 1, **{code: 1 for code in BENIGN_ERRORS}}
    assert len(series(handler, "voicebridge_realtime_provider_errors")) == 2 + len(BENIGN_ERRORS)


def test_labels_come_from_a_fixed_set_and_unhashable_values_are_other():
    assert [tool_label(n) for n in ("end_call", "transfer_call", "End_call", {}, [], None, 3)] == [
        "end_call",
        "transfer_call",
        OTHER,
        OTHER,
        OTHER,
        OTHER,
        OTHER,
    ]
    assert BENIGN_ERRORS <= ERROR_CODES and all(error_label(c) == c for c in ERROR_CODES)
    assert [error_label(c) for c in ("code_1", {}, [], None, "x" * 5000)] == [OTHER] * 5
