"""What Twilio hears after a stream: the wishes handlers leave, bounded and expiring, and the TwiML."""

from twisted.internet import task

from voicebridge.twilio import twiml
from voicebridge.web.connectaction import ConnectActions


def test_a_wish_is_answered_once():
    actions = ConnectActions(task.Clock())
    actions.say_and_hang_up("CA1", "Goodbye & thanks", "upstream-closed")
    body, reason = actions.take("CA1")
    assert body == twiml.say_and_hang_up("Goodbye & thanks") and reason == "upstream-closed"
    assert "<Say>Goodbye &amp; thanks</Say><Hangup />" in body
    assert actions.take("CA1") is None and actions.take("CA2") is None


def test_wishes_expire_and_are_bounded(monkeypatch):
    clock = task.Clock()
    actions = ConnectActions(clock)
    actions.say_and_hang_up("CA-old", "m", "r")
    clock.advance(ConnectActions.TTL - 1)
    actions.say_and_hang_up("CA-new", "m", "r")
    clock.advance(2)
    assert actions.take("CA-old") is None, "Twilio asks within moments; an old wish is gone"
    assert actions.take("CA-new") is not None
    monkeypatch.setattr(ConnectActions, "MAX_ENTRIES", 3)
    for i in range(5):
        actions.say_and_hang_up(f"CA{i}", "m", "r")
    assert len(actions) == 3 and actions.take("CA0") is None and actions.take("CA4") is not None


def test_connect_carries_the_action_only_when_asked():
    url = "wss://voice.example.test/twilio-media"
    assert "action" not in twiml.connect_stream(url, {})
    with_action = twiml.connect_stream(url, {}, action="https://voice.example.test/connect-action")
    assert '<Connect action="https://voice.example.test/connect-action"><Stream url="' + url in with_action
    assert twiml.hang_up() == '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>'
