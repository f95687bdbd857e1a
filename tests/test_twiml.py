import xml.etree.ElementTree as ET

import pytest

from voicebridge import twiml


def test_connect_stream_carries_parameters():
    xml = twiml.connect_stream("wss://voice.example.test/twilio-media", {"businessId": "b1", "plan": "pro & co"})
    root = ET.fromstring(xml)
    stream = root.find("./Connect/Stream")
    assert stream.get("url") == "wss://voice.example.test/twilio-media"
    assert [(p.get("name"), p.get("value")) for p in stream] == [("businessId", "b1"), ("plan", "pro & co")]


@pytest.mark.parametrize("url", ["wss://h/twilio-media?businessId=1", "wss://h/x?", "https://h/x", "wss:///x"])
def test_stream_urls_twilio_refuses_are_never_answered(url):
    with pytest.raises(twiml.StreamURLError) as info:
        twiml.connect_stream(url, {})
    if "?" in url:
        assert "31920" in str(info.value)


def test_ws_scheme_is_a_warning_for_development():
    assert twiml.check_stream_url("wss://h/twilio-media") == []
    assert "31922" in twiml.check_stream_url("ws://127.0.0.1:8080/twilio-media")[0]


def test_parameters_over_twilio_limits_are_dropped_with_a_reason():
    kept, dropped = twiml.fit_parameters({"ok": "v", "long": "x" * 500, "x" * 500: "v", "none": None})
    assert kept == {"ok": "v"}
    assert len(dropped) == 2


def test_busy_and_reject():
    assert ET.fromstring(twiml.busy()).find("Reject").get("reason") == "busy"
    assert ET.fromstring(twiml.reject()).find("Reject") is not None
