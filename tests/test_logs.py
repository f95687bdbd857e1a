import pytest_twisted

from tests.daemon import twist_command
from tests.http import call_form, post_form
from voicebridge.observe.logs import mask_number, mask_parameters, printable
from voicebridge.tools.twiliosim import CallScript, play_call


def test_masks_numbers_keeping_country_code_and_last_digits():
    assert mask_number("+15551234567") == "+1555*****67"
    assert mask_number("+15551234567", show=True) == "+15551234567"
    assert mask_number("client:alice") == "**********ce"
    assert mask_number("") == ""


def test_masks_number_parameters_only():
    assert mask_parameters({"to": "+15551234567", "plan": "pro"}) == {"to": "+1555*****67", "plan": "pro"}


def test_printable_escapes_control_characters_and_bounds_length():
    assert printable("a\r\nb") == "a\\r\\nb"
    assert printable("x" * 500, 10) == "x" * 10 + "..."
    assert printable(None) == "-"


FORGED = "\nforged-line event_name=call.ended"


@pytest_twisted.inlineCallbacks
def test_a_newline_in_a_callsid_never_makes_a_second_log_line(start_daemon):
    """The text format writes the message as is: every SID from the peer is escaped or refused before it gets there."""
    from twisted.internet import reactor

    daemon = start_daemon("--start-timeout", "1", command=[*twist_command(), "--log-format=text", "voicebridge"])
    form = call_form(call_sid="CA1" + FORGED)
    assert post_form(daemon.port, "/voice", form)[0] == 200
    script = CallScript(frames=3, call_sid="CA2" + FORGED, stream_sid="MZ2" + FORGED)
    outcome = yield play_call(reactor, daemon.url("/twilio-media", "ws"), script)
    assert outcome.close_code == 1008, "its start was refused, so the start timeout ended it"
    yield daemon.wait_for_async(reactor, lambda e: "call ended" in e.get("raw", ""))
    lines = daemon.output.splitlines()
    assert any("webhook callSid=CA1\\nforged-line" in line for line in lines), daemon.output[-3000:]
    assert any("reason=bad-field" in line and "start.streamSid" in line for line in lines), daemon.output[-3000:]
    assert not [line for line in lines if line.startswith("forged-line")], "no line was forged"
