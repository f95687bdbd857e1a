"""The Media Streams wire format, without a reactor."""

import base64

import orjson
import pytest

from voicebridge.twilio import messages as m

SID = "MZ" + "a" * 32


def test_parses_every_event_twilio_documents():
    assert m.parse(m.twilio_connected()) == m.Connected("Call", "1.0.0")
    start = m.parse(m.twilio_start(SID, "CA1", "AC1", {"businessId": "business-1"}))
    assert (start.stream_sid, start.call_sid, start.account_sid) == (SID, "CA1", "AC1")
    assert start.custom_parameters == {"businessId": "business-1"}
    assert start.media_format["encoding"] == "audio/x-mulaw" and start.tracks == ("inbound",)
    media = m.parse(m.twilio_media(SID, b"\x01\xff" * 80, chunk=2, timestamp=40, sequence_number=3))
    assert media == m.Media(SID, b"\x01\xff" * 80, 40, "inbound", 2, 3)
    assert m.parse(m.twilio_dtmf(SID, "#", 4)) == m.Dtmf(SID, "#", "inbound_track")
    assert m.parse(m.twilio_mark(SID, "greeting done", 5)) == m.Mark(SID, "greeting done")
    assert m.parse(m.twilio_stop(SID, "CA1", "AC1", 6)) == m.Stop(SID, "CA1", "AC1")


def test_parses_the_documented_sample_verbatim():
    sample = (
        b'{"event":"media","sequenceNumber":"3","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
        b'"media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"no+JhoaJjpzSHxAKBgYJDRQ="}}'
    )
    media = m.parse(sample)
    assert media.timestamp == 5 and media.chunk == 1 and media.sequence_number == 3
    assert media.payload == base64.b64decode("no+JhoaJjpzSHxAKBgYJDRQ=")


def test_unknown_events_are_values_not_errors():
    message = m.parse(b'{"event":"transcription","streamSid":"MZ1","text":"hi"}')
    assert isinstance(message, m.Unknown) and message.event == "transcription"


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"{not json", "invalid-json"),
        (b"[1,2]", "not-object"),
        (b'"media"', "not-object"),
        (b"{}", "missing-event"),
        (b'{"event": 5}', "missing-event"),
        (b'{"event":"media","streamSid":"MZ1","media":{"payload":"***"}}', "bad-base64"),
        (b'{"event":"media","streamSid":"MZ1","media":{}}', "missing-field"),
        (b'{"event":"media","media":{"payload":""}}', "missing-field"),
        (b'{"event":"media","streamSid":"MZ1","media":{"payload":"","timestamp":"-1"}}', "bad-field"),
        (b'{"event":"start","start":{"streamSid":"MZ1"}}', "missing-field"),
        (b'{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","customParameters":[1]}}', "bad-field"),
        (b'{"event":"dtmf","streamSid":"MZ1","dtmf":{}}', "missing-field"),
        (b'{"event":"mark","streamSid":"MZ1"}', "missing-field"),
    ],
)
def test_broken_frames_raise_with_a_reason(frame, reason):
    with pytest.raises(m.MessageError) as info:
        m.parse(frame)
    assert info.value.reason == reason


def test_outbound_messages_are_what_twilio_documents():
    assert orjson.loads(m.media(SID, b"\x00\x7f")) == {"event": "media", "streamSid": SID, "media": {"payload": "AH8="}}
    assert orjson.loads(m.mark(SID, "x")) == {"event": "mark", "streamSid": SID, "mark": {"name": "x"}}
    assert orjson.loads(m.clear(SID)) == {"event": "clear", "streamSid": SID}


def test_outbound_round_trip():
    assert m.parse_outbound(m.media(SID, b"abc")).payload == b"abc"
    assert m.parse_outbound(m.mark(SID, "n")) == m.Mark(SID, "n")
    assert m.parse_outbound(m.clear(SID)) == m.Clear(SID)
