import xml.etree.ElementTree as ET

import pytest

from voicebridge.twilio import twiml


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


def test_urls_that_work_only_locally_are_still_answered():
    """ws://, a port, a loopback host: the webhook warns (diagnosis.check_url), but answers."""
    assert twiml.check_stream_url("wss://h/twilio-media") is None
    assert 'url="ws://127.0.0.1:8080/twilio-media"' in twiml.connect_stream("ws://127.0.0.1:8080/twilio-media", {})


def test_parameters_over_twilio_limits_are_dropped_with_a_reason():
    kept, dropped = twiml.fit_parameters({"ok": "v", "long": "x" * 500, "x" * 500: "v", "none": None})
    assert kept == {"ok": "v"}
    assert len(dropped) == 2


def test_busy_and_reject():
    assert ET.fromstring(twiml.busy()).find("Reject").get("reason") == "busy"
    assert ET.fromstring(twiml.reject()).find("Reject") is not None
