"""Issue 16: small inputs that did damage under the 64 KiB limit, each bounded now, without a reactor.

Nesting anywhere in a message, custom parameters without end, a streamSid the fast path took and
the parser refused, phone numbers in fields nobody listed, a sidecar that could not be written
beside a WAV that stayed, and a worker's usage text on every retry. Each case failed before.
"""

from __future__ import annotations

import json
import os

import orjson
import pytest
from twisted.logger import eventAsJSON

from tests.fakes import captured_log, new_call, registry
from voicebridge.audio.recording import Recording
from voicebridge.observe.logs import loggable_parameters, mask_parameters, mask_url
from voicebridge.twilio import messages as m
from voicebridge.workers.output import StartupOutput

SID, CALL, ACC = "MZ" + "a" * 32, "CA" + "b" * 32, "AC" + "c" * 32


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Where a peer can put a value: every field of every event Twilio sends, and fields it does not.
PLACES = {
    "start.customParameters": '{"event":"start","streamSid":"%s","start":{"callSid":"%s","customParameters":{"a":%%s}}}'
    % (SID, CALL),
    "start.mediaFormat": '{"event":"start","streamSid":"%s","start":{"callSid":"%s","mediaFormat":{"x":%%s}}}' % (SID, CALL),
    "start.tracks": '{"event":"start","streamSid":"%s","start":{"callSid":"%s","tracks":%%s}}' % (SID, CALL),
    "start.unknown": '{"event":"start","streamSid":"%s","start":{"callSid":"%s","new":%%s}}' % (SID, CALL),
    "connected.protocol": '{"event":"connected","protocol":%s}',
    "connected.version": '{"event":"connected","protocol":"Call","version":%s}',
    "media.track": '{"event":"media","streamSid":"%s","media":{"track":%%s,"payload":"AAAA"}}' % SID,
    "media.unknown": '{"event":"media","sequenceNumber":"1","streamSid":"%s","media":{"track":"inbound","chunk":"1",'
    '"timestamp":"0","payload":"AAAA"},"x":%%s}' % SID,
    "dtmf.track": '{"event":"dtmf","streamSid":"%s","dtmf":{"digit":"1","track":%%s}}' % SID,
    "dtmf.digit": '{"event":"dtmf","streamSid":"%s","dtmf":{"digit":%%s}}' % SID,
    "mark.name": '{"event":"mark","streamSid":"%s","mark":{"name":%%s}}' % SID,
    "stop.callSid": '{"event":"stop","streamSid":"%s","stop":{"callSid":%%s}}' % SID,
    "streamSid": '{"event":"media","streamSid":%s,"media":{"payload":"AAAA"}}',
    "sequenceNumber": '{"event":"media","streamSid":"%s","sequenceNumber":%%s,"media":{"payload":"AAAA"}}' % SID,
    "unknown-event": '{"event":"transcription","text":%s}',
    "event": '{"event":%s}',
}


@pytest.mark.parametrize("depth", [9, 100, 990, 1021, 1100])
@pytest.mark.parametrize("place", sorted(PLACES))
def test_nesting_anywhere_gets_too_deep_never_an_unhandled_error(place, depth):
    frame = (PLACES[place] % nested(depth)).encode()
    with pytest.raises(m.MessageError) as info:
        m.parse(frame)
    assert info.value.reason == "too-deep", info.value
    assert m.media_fields(frame) is None


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_wrong_type_anywhere_is_refused_with_a_reason_or_read_as_twilio_means_it(place):
    """Shallow values of every type: a message, or a MessageError; a value that is not a string never becomes one."""
    for value in ("{}", "[]", "[1]", '{"a":{"b":1}}', "1", "1.5", "true", "null", '"x"', '""'):
        frame = (PLACES[place] % value).encode()
        try:
            message = m.parse(frame)
        except m.MessageError as e:
            assert e.reason in {"missing-field", "bad-field", "missing-event", "bad-base64", "too-deep"}, e
            continue
        for name in getattr(message, "__dataclass_fields__", {}):
            got = getattr(message, name)
            if name != "raw":
                assert flat(got), (place, value, name, got)


def flat(value) -> bool:
    """A scalar, or a tuple or dict of scalars: all a message value ever holds (what Unknown keeps aside)."""
    scalar = (str, int, float, bool, bytes, type(None))
    if isinstance(value, dict):
        return all(isinstance(v, scalar) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, scalar) for v in value)
    return isinstance(value, scalar)


@pytest.mark.parametrize("sid", ["MZ1&", "====", "MZ 1", "MZ\u0661", "MZ\u00e9", "a" * 65, "MZ1\n", "MZ1="])
def test_media_fields_refuses_every_stream_sid_parse_refuses(sid):
    frame = m.twilio_media(sid, b"\x01" * 160, 1, 0, 1)
    with pytest.raises(m.MessageError):
        m.parse(frame)
    assert m.media_fields(frame) is None


def test_media_fields_leaves_a_frame_with_any_other_field_to_parse():
    good = orjson.loads(m.twilio_media(SID, b"\x01" * 160, 1, 0, 1))
    for extra in ({"x": 1}, {"x": [[[]]]}):
        assert m.media_fields(orjson.dumps({**good, **extra})) is None
        assert m.media_fields(orjson.dumps({**good, "media": {**good["media"], **extra}})) is None
    assert m.media_fields(orjson.dumps(good)) == (SID, b"\x01" * 160, 0)


def start_with(parameters=None, **start):
    body = {"callSid": CALL, "accountSid": ACC, "tracks": ["inbound"], **start}
    if parameters is not None:
        body["customParameters"] = parameters
    return orjson.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": body})


@pytest.mark.parametrize(
    "parameters, reason",
    [
        ({f"p{i}": "v" for i in range(m.MAX_PARAMETERS + 1)}, "too-many-parameters"),
        ({f"p{i}": "v" for i in range(4000)}, "too-many-parameters"),
        ({"n" * 500: "v"}, "parameter-too-long"),
        ({"n": "v" * 500}, "parameter-too-long"),
        ({"n": 5}, "bad-field"),
        ({"n": ["v"]}, "bad-field"),
        ({"n": None}, "bad-field"),
        ([["n", "v"]], "bad-field"),
    ],
    ids=["33", "4000", "long-name", "long-value", "number", "list", "null", "not-an-object"],
)
def test_custom_parameters_are_bounded_in_count_and_length_and_typed(parameters, reason):
    with pytest.raises(m.MessageError) as info:
        m.parse(start_with(parameters))
    assert info.value.reason == reason
    assert len(str(info.value)) < 300, "the detail is short whatever was sent"


def test_the_largest_parameters_twilio_could_send_are_taken():
    parameters = {f"{i:02d}".ljust(499, "n"): "v" * 499 for i in range(m.MAX_PARAMETERS)}
    assert m.parse(start_with(parameters)).custom_parameters == parameters


@pytest.mark.parametrize(
    "start, field",
    [
        ({"mediaFormat": {"encoding": {"a": 1}}}, "mediaFormat"),
        ({"mediaFormat": {f"k{i}": 1 for i in range(9)}}, "mediaFormat"),
        ({"mediaFormat": {"encoding": "x" * 65}}, "mediaFormat"),
        ({"mediaFormat": {"sampleRate": 10**19}}, "mediaFormat"),
        ({"tracks": ["inbound"] * 5}, "tracks"),
        ({"tracks": ["in bound"]}, "tracks"),
    ],
)
def test_start_fields_have_twilio_s_shape(start, field):
    with pytest.raises(m.MessageError) as info:
        m.parse(start_with(**start))
    assert info.value.reason == "bad-field" and field in info.value.detail


def test_dtmf_and_mark_are_bounded():
    for digit in ("12", "x", "\n"):
        with pytest.raises(m.MessageError):
            m.parse(m.twilio_dtmf(SID, digit, 1))
    assert m.parse(m.twilio_mark(SID, "n" * m.MAX_MARK_NAME, 1)).name == "n" * m.MAX_MARK_NAME
    with pytest.raises(m.MessageError):
        m.parse(m.twilio_mark(SID, "n" * (m.MAX_MARK_NAME + 1), 1))


# A Call: the reason logged once and counted, the frame dropped, the call goes on, every line serialisable.


def line_sizes(events) -> list[int]:
    return [len(eventAsJSON(e)) for e in events]  # raises if a line could not be written


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_call_logs_too_deep_once_counts_it_and_goes_on(place):
    reg, _ = registry()
    call, link = new_call(reg)
    frame = (PLACES[place] % nested(1000)).encode()
    with captured_log() as events:
        call.text_received(frame)
        call.text_received(m.twilio_start(SID, CALL, ACC, {}))
        call.text_received(frame)
        call.text_received(m.twilio_media(SID, b"ok", 1, 0, 2))
    assert call.errors == {"too-deep": 2}
    errors = [e for e in events if e.get("event_name") == "call.protocol_error"]
    assert [e["reason"] for e in errors] == ["too-deep"]
    assert not [e for e in events if "log_failure" in e], "no unhandled error"
    assert [e for e in events if e.get("event_name") == "call.started"], "the good start is logged"
    assert link.sent[-1].payload == b"ok"
    assert max(line_sizes(events)) < 4096


def test_a_start_with_thousands_of_parameters_costs_one_short_line():
    reg, _ = registry()
    call, _ = new_call(reg)
    with captured_log() as events:
        call.text_received(start_with({f"p{i}": "v" * 10 for i in range(4000)}))
    assert call.errors == {"too-many-parameters": 1} and call.state == "handshake"
    assert max(line_sizes(events)) < 2048


def test_call_started_stays_a_few_kilobytes_whatever_the_parameters():
    """The largest start Twilio's rules allow, plus a stream url query of 500 parameters (not Twilio's)."""
    reg, _ = registry()
    call, _ = new_call(reg, query={f"q{i}": "+1555" + str(i).zfill(7) for i in range(500)})
    parameters = {f"{i:02d}".ljust(499, "n"): "\u2028" * 499 for i in range(m.MAX_PARAMETERS)}
    with captured_log() as events:
        call.text_received(start_with(parameters))
    (started,) = [e for e in events if e.get("event_name") == "call.started"]
    assert len(eventAsJSON(started)) < 16384
    assert started["parameters"]["..."] == f"{500 + m.MAX_PARAMETERS - 32} more"
    assert "+1555" + "0" * 7 not in eventAsJSON(started)


# Phone numbers.

NUMBER = "+15557654321"


@pytest.mark.parametrize("field", ["From", "To", "Caller", "Called", "ForwardedFrom", "CalledVia", "forwardedfrom", "to"])
def test_every_twilio_field_that_carries_a_number_is_masked_in_a_url(field):
    url = f"/voice?CallSid={CALL}&{field}=%2B15557654321&businessId=business-1"
    shown = mask_url(url)
    assert "7654321" not in shown and "+1555*****21" in shown and CALL in shown and "business-1" in shown
    assert mask_url(url, show=True) == url


@pytest.mark.parametrize(
    "value", ["+15557654321", "sip:+15557654321@example.com", "(555) 765-4321", "5557654321", "tel:+44 20 7946 0958"]
)
def test_a_number_in_any_other_field_is_masked_too(value):
    from urllib.parse import quote

    shown = mask_url("/voice?Anything=" + quote(value))
    digits = "".join(c for c in value if c.isdigit())
    assert digits not in "".join(c for c in shown if c.isdigit()), shown
    assert mask_parameters({"Anything": value})["Anything"] != value


def test_sids_and_short_values_are_left_alone():
    assert mask_parameters({"callSid": CALL, "plan": "pro", "n": "123456"}) == {"callSid": CALL, "plan": "pro", "n": "123456"}


def test_loggable_parameters_escape_and_cut():
    shown = loggable_parameters({"a\n": "x" * 500, "from": NUMBER})
    assert shown["a\\n"].endswith("...") and len(shown["a\\n"]) < 130 and shown["from"] == "+1555*****21"


# The recording: a WAV on disk always has its sidecar.


def test_a_sidecar_that_cannot_be_written_leaves_no_wav(tmp_path):
    rec = Recording(str(tmp_path), "call")
    rec.caller(b"\xff" * 160, 0)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises((RecursionError, ValueError)):
        rec.finish({"mediaFormat": deep})
    rec.abandon()  # what RecordHandler does when finish fails
    assert os.listdir(tmp_path) == [], "no WAV without its sidecar, and no partial file"


def test_a_saved_recording_has_both_files_and_the_sidecar_is_bounded(tmp_path):
    rec = Recording(str(tmp_path), "call")
    rec.caller(b"\xff" * 160, 0)
    for _ in range(20000):
        rec.mark_played("n" * m.MAX_MARK_NAME)
    wav, sidecar = rec.finish({"parameters": {"a": "b"}})
    assert sorted(os.listdir(tmp_path)) == ["call.json", "call.wav"]
    document = json.loads(open(sidecar).read())
    assert len(document["marksPlayed"]) == 10000 and document["eventsNotKept"] == 10000
    assert os.path.getsize(sidecar) < 4 * 1024 * 1024


# A worker that cannot start.


def test_a_worker_s_usage_text_becomes_one_bounded_line():
    output = StartupOutput()
    output.add(b"Error: /etc/voicebridge.toml is not valid TOML: Invalid value (at line 1, column 12)\n")
    for i in range(69):
        output.add(b"      --option-%d=    what it does\n" % i)
    summary = output.summary()
    assert summary.startswith("Error: /etc/voicebridge.toml is not valid TOML") and "(and 69 more lines" in summary
    for _ in range(100000):
        output.add(b"x" * 1000)
    assert len(output.summary()) < 600 and sum(map(len, output.lines)) <= 16384


def test_a_traceback_is_told_by_its_last_line():
    output = StartupOutput()
    for line in (b"Traceback (most recent call last):", b'  File "x.py", line 1', b"    boom()", b"ValueError: no"):
        output.add(line)
    assert output.summary() == "ValueError: no (and 3 more lines of output)"
    assert StartupOutput().summary() is None


@pytest.mark.parametrize("track", [{"a": 1}, ["inbound"], 5, None, "INBOUND"])
def test_media_fields_reads_any_track_without_raising(track):
    """Found by fuzz/fuzz_messages.py: an object as the track of an otherwise exact media frame raised TypeError."""
    good = orjson.loads(m.twilio_media(SID, b"\x01" * 160, 1, 0, 1))
    frame = orjson.dumps({**good, "media": {**good["media"], "track": track}})
    assert m.media_fields(frame) is None
