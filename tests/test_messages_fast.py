"""The hot-path readers and writers in voicebridge/twilio/messages.py say exactly what the general ones say."""

from __future__ import annotations

import base64
import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebridge.twilio import messages as m

SID = "MZ" + "a" * 32
AUDIO = bytes(range(160))

GOOD = {"sequenceNumber": "5", "streamSid": SID, "track": "inbound", "chunk": "3", "timestamp": "40"}
ODD_COUNTERS = [None, True, False, 0, 7, -1, 2**63 - 1, "", "-1", "1.5", "\u0663", "\u00b2", "1" * 19, "1" * 18, " 7", "0", "07"]
ODD_PAYLOADS = [None, 7, "", "=", "==", "AA", "AA=", "AA==", "AAA=", "A===", "AB==CD==", "AB=C", "QUJD\n", "QUJD ", "\u00e9"]
ODD_PAYLOADS += ["QU JD", "QUJD====", "=QUJD", "QUJ", "QUJD", "Q\u00e9JD"]


def frame_with(**changes):
    """A Twilio media frame with some fields replaced (``None``: removed)."""
    fields = {**GOOD, "payload": base64.b64encode(AUDIO).decode(), **changes}
    media = {k: fields[k] for k in ("track", "chunk", "timestamp", "payload") if fields.get(k, None) is not None}
    obj = {k: fields[k] for k in ("sequenceNumber", "streamSid") if fields.get(k, None) is not None}
    obj = {"event": fields.get("event", "media"), **obj, "media": media}
    return orjson.dumps(obj)


def assert_agree(data):
    fast = m.media_fields(data)
    try:
        full = m.parse(data)
    except m.MessageError:
        full = None
    if fast is not None:
        assert isinstance(full, m.Media), data
        assert fast == (full.stream_sid, full.payload, full.timestamp), data
    return fast, full


@pytest.mark.parametrize("field", ["sequenceNumber", "chunk", "timestamp"])
@pytest.mark.parametrize("value", ODD_COUNTERS, ids=repr)
def test_media_fields_agrees_on_odd_counters(field, value):
    assert_agree(frame_with(**{field: value}))


@pytest.mark.parametrize("value", ODD_PAYLOADS, ids=repr)
def test_media_fields_agrees_on_odd_payloads(value):
    fast, _ = assert_agree(frame_with(payload=value))
    if value in ("", "AA==", "AAA=", "QUJD"):
        assert fast is not None, "canonical base64 takes the fast path"


def field_values(good, odd):
    return st.one_of(st.just(good), st.just(good), st.just(good), st.sampled_from(odd))


@st.composite
def media_frames(draw):
    changes = {
        "sequenceNumber": draw(field_values("5", ODD_COUNTERS)),
        "chunk": draw(field_values("3", ODD_COUNTERS)),
        "timestamp": draw(field_values("40", ODD_COUNTERS)),
        "streamSid": draw(field_values(SID, ["", 7, None])),
        "track": draw(field_values("inbound", ["", None, 3])),
        "event": draw(field_values("media", ["mark", "Media"])),
        "payload": draw(
            st.one_of(st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()), st.sampled_from(ODD_PAYLOADS))
        ),
    }
    return frame_with(**changes)


@settings(max_examples=1500, deadline=None)
@given(data=media_frames())
def test_media_fields_accepts_only_what_parse_accepts_with_the_same_values(data):
    assert_agree(data)


def test_media_fields_takes_twilio_frames():
    frame = m.twilio_media(SID, AUDIO, chunk=3, timestamp=40, sequence_number=5)
    assert m.media_fields(frame) == (SID, AUDIO, 40)
    sample = (
        b'{"event":"media","sequenceNumber":"3","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
        b'"media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"no+JhoaJjpzSHxAKBgYJDRQ="}}'
    )
    assert m.media_fields(sample) == ("MZ18ad3ab5a668481ce02b83e7395059f0", base64.b64decode("no+JhoaJjpzSHxAKBgYJDRQ="), 5)


def test_media_fields_given_the_calls_sid_takes_only_that_streams_frames():
    frame = m.twilio_media(SID, AUDIO, chunk=3, timestamp=40, sequence_number=5)
    assert m.media_fields(frame, SID) == (SID, AUDIO, 40)
    assert m.media_fields(frame, "MZ" + "0" * 32) is None, "another stream's frame goes to parse (and its check)"
    assert m.media_fields(m.twilio_media("MZ1&", AUDIO, 1, 0, 2), SID) is None


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"event":"start"}', m.twilio_stop(SID, "CA1", "AC1", 3), b'{"event":"media"}'],
)
def test_media_fields_leaves_everything_else_to_parse(data):
    assert m.media_fields(data) is None


@pytest.mark.parametrize("sid", [SID, 'MZ"quoted"', "MZ\\back", "MZ%d%s", "MZ\u00e9\u20ac", "MZ\n\t"])
def test_media_writer_is_orjson_byte_for_byte(sid):
    for audio in (b"", AUDIO, os.urandom(321)):
        expected = orjson.dumps({"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(audio).decode()}})
        assert m.media(sid, audio) == expected


@pytest.mark.parametrize("sid", [SID, 'MZ"q"', "MZ%d%%s"])
def test_twilio_media_template_is_twilio_media_byte_for_byte(sid):
    template = m.twilio_media_template(sid)
    for n in (0, 1, 999999):
        b64 = base64.b64encode(AUDIO[: n % 160]).decode()
        assert template % (n + 1, n + 2, n * 20, b64.encode()) == m.twilio_media(sid, AUDIO[: n % 160], n + 2, n * 20, n + 1)


@pytest.mark.parametrize(
    "data",
    [
        m.media(SID, AUDIO),
        orjson.dumps({"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(AUDIO).decode()}}),
        b'{"event":"media","streamSid":"MZ1","media":{"payload":"QUJD"}}',
        b'{"event": "media", "streamSid": "MZ1", "media": {"payload": "QUJD"}}',
        b'{"event":"media","streamSid":"MZ1","media":{"payload":"QU\\/D"}}',
        b'{"event":"mark","streamSid":"MZ1","mark":{"name":"payload"}}',
        b'{"event":"media","streamSid":"\\"payload\\":\\"x","media":{"payload":"QUJD"}}',
        b'{"event":"clear","streamSid":"MZ1"}',
    ],
)
def test_outbound_media_payload_agrees_with_parse_outbound(data):
    fast = m.outbound_media_payload(data)
    if fast is not None:
        # What the JSON says, whatever else is wrong with the message (a quote-laden streamSid
        # must not fool the scan into reading another field).
        obj = orjson.loads(data)
        assert obj["event"] == "media" and fast.decode() == obj["media"]["payload"]
    try:
        full = m.parse_outbound(data)
    except m.MessageError as e:
        assert e.reason == "bad-field"  # the streamSid that is not a SID
        return
    if fast is not None:
        assert isinstance(full, m.Media)
        assert base64.b64decode(fast) == full.payload
