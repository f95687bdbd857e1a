"""The relay handler in a real daemon, in front of a real Media Streams application run by the test."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import pytest_twisted

from tests.conftest import PUBLIC, TOKEN
from tests.http import call_form, post_form
from tests.mediaapp import MediaApp, app_media, listen_full, listen_silent
from tests.nginx import free_port
from tests.speech import speech  # noqa: F401  (a fixture)
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)
STREAM_URL = "wss://voice.example.test/twilio-media"
MESSAGE = "Our assistant is unavailable. Please call again later."


def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def apps():
    """MediaApps started by a test; stopped after it."""
    started = []
    yield started
    for app in started:
        app.stop()


def named(daemon, name, **fields):
    return lambda e: e.get("event_name") == name and all(e.get(k) == v for k, v in fields.items())


@pytest_twisted.inlineCallbacks
def test_frames_pass_verbatim_both_ways(start_daemon, apps, speech):  # noqa: F811
    app = yield MediaApp().listen(reactor())
    apps.append(app)
    daemon = start_daemon("--handler", "relay", "--relay-url", app.url)
    script = CallScript(
        frames=len(speech), frame=lambda i: speech[i], interval=0.005, dtmf="5", marks=("twilio-mark",), linger=1.0
    )
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    yield app.closed.addTimeout(10, reactor())

    assert app.frames == outcome.sent_frames, "connected, start, media, dtmf, mark, stop: byte for byte, in order"
    assert [f[:40] for f in outcome.sent_frames[:2]] == [f[:40] for f in app.frames[:2]]
    assert outcome.received_frames == app.sent, "the application's media, mark and clear: byte for byte, in order"
    assert outcome.received == outcome.sent and outcome.marks == ["first"] and outcome.clears == 1
    assert outcome.close_code == 1000 and app.closes[0][:2] == (True, 1000)
    assert "x-twilio-signature" not in app.requests[0].headers, "no token, nothing to sign with"

    opened = yield daemon.wait_for_async(reactor(), named(daemon, "relay.open", callSid=script.call_sid))
    assert opened["url"] == app.url
    closed = yield daemon.wait_for_async(reactor(), named(daemon, "relay.closed", callSid=script.call_sid))
    assert (closed["frames_up"], closed["frames_down"]) == (len(outcome.sent_frames), len(app.sent))
    ended = yield daemon.wait_for_async(reactor(), named(daemon, "call.ended", callSid=script.call_sid))
    assert (ended["frames_in"], ended["frames_out"], ended["reason"]) == (len(speech), len(speech), "stop")
    assert not daemon.named("relay.failed")


def twiml_of(body: bytes):
    root = ET.fromstring(body)
    return root, root.find("./Connect")


@pytest_twisted.inlineCallbacks
def test_application_dying_mid_call_makes_twilio_say_the_fallback(start_daemon, apps, speech):  # noqa: F811
    app = yield MediaApp(die_after=50).listen(reactor())
    apps.append(app)
    daemon = start_daemon(
        "--public-url", PUBLIC, "--handler", "relay", "--relay-url", app.url, "--relay-fallback", "say",
        "--relay-message", MESSAGE, env={"TWILIO_AUTH_TOKEN": TOKEN},
    )  # fmt: skip
    call_sid = "CA" + "7" * 32
    form = call_form(call_sid=call_sid)
    status, _, body = post_form(daemon.port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(PUBLIC + "/voice", form)})
    assert status == 200
    _, connect = twiml_of(body)
    assert connect.get("action") == PUBLIC + "/connect-action", "Twilio is told where to ask when the stream ends"

    script = CallScript(frames=len(speech), frame=lambda i: speech[i], interval=0.01, call_sid=call_sid)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script, signature=SIGNER.sign(STREAM_URL))
    assert outcome.closed_by_server and outcome.close_code == 1000
    assert app.media == 50 and 0 < len(outcome.received) <= 50 < len(speech), "relayed until the application died"
    failed = yield daemon.wait_for_async(reactor(), named(daemon, "relay.failed", callSid=call_sid))
    assert failed["reason"] == "upstream-closed" and "1006" in failed["detail"] and failed["fallback"] == "say"
    signature = app.requests[0].headers["x-twilio-signature"]
    assert SIGNER.valid_stream([app.url], signature), "the application can check the handshake as if Twilio made it"

    action = call_form(call_sid=call_sid, CallStatus="in-progress")
    url = PUBLIC + "/connect-action"
    status, _, body = post_form(daemon.port, "/connect-action", action)
    assert status == 403, "the action request is signed like any webhook"
    status, _, body = post_form(daemon.port, "/connect-action", action, {"X-Twilio-Signature": SIGNER.sign(url, action)})
    assert status == 200
    root, _ = twiml_of(body)
    assert [(child.tag, child.text) for child in root] == [("Say", MESSAGE), ("Hangup", None)]
    status, _, body = post_form(daemon.port, "/connect-action", action, {"X-Twilio-Signature": SIGNER.sign(url, action)})
    assert [child.tag for child in twiml_of(body)[0]] == ["Hangup"], "said once"
    yield daemon.wait_for_async(reactor(), lambda e: len(daemon.named("call.after_stream")) == 2)
    after = daemon.named("call.after_stream")
    assert [(e["answer"], e["because"]) for e in after] == [("say-and-hangup", "upstream-closed"), ("hangup", "-")]
    ended = yield daemon.wait_for_async(reactor(), named(daemon, "call.ended", callSid=call_sid))
    assert ended["reason"] == "relay-failed"


@pytest_twisted.inlineCallbacks
def test_application_hanging_up_ends_the_call_without_fallback(start_daemon, apps):
    app = yield MediaApp(close_after=10).listen(reactor())
    apps.append(app)
    daemon = start_daemon("--handler", "relay", "--relay-url", app.url, "--relay-fallback", "say")
    script = CallScript(frames=500, interval=0.01)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    assert outcome.closed_by_server and outcome.close_code == 1000 and len(outcome.sent) < script.frames
    closed = yield daemon.wait_for_async(reactor(), named(daemon, "relay.closed", callSid=script.call_sid))
    assert "closed the stream" in closed["why"]
    ended = yield daemon.wait_for_async(reactor(), named(daemon, "call.ended", callSid=script.call_sid))
    assert ended["reason"] == "upstream-closed"
    assert not daemon.named("relay.failed")


def test_only_calls_whose_handler_may_need_it_get_a_connect_action(start_daemon, tmp_path):
    config = tmp_path / "vb.toml"
    config.write_text(
        """
[tenants.speaks]
numbers = ["+15550100001"]
handler = "relay"
handler_options = { url = "ws://127.0.0.1:9/app", fallback = "say" }
[tenants.hangs-up]
numbers = ["+15550100002"]
handler = "relay"
handler_options = { url = "ws://127.0.0.1:9/app" }
"""
    )
    daemon = start_daemon("--config", str(config))
    actions = {}
    for to in ("+15550100001", "+15550100002", "+15550100003"):
        status, _, body = post_form(daemon.port, "/voice", call_form(to=to))
        assert status == 200
        actions[to] = twiml_of(body)[1].get("action")
    assert actions == {
        "+15550100001": f"http://127.0.0.1:{daemon.port}/connect-action",
        "+15550100002": None,
        "+15550100003": None,
    }


@pytest.mark.parametrize(
    "case", ["connect-refused", "connect-timeout", "handshake-refused", "handshake-timeout", "tls-failed", "tls-wrong-name"]
)
@pytest_twisted.inlineCallbacks
def test_an_application_that_cannot_be_reached_ends_the_stream_with_the_reason(start_daemon, apps, pki, case, request):
    extra = []
    if case == "connect-refused":
        url = f"ws://127.0.0.1:{free_port()}/media"
    elif case == "connect-timeout":
        listener, fillers = listen_full()
        for sock in (listener, *fillers):
            request.addfinalizer(sock.close)
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}/media"
        extra = ["--relay-connect-timeout", "0.5"]
    elif case == "handshake-refused":
        app = yield MediaApp(refuse=403).listen(reactor())
        apps.append(app)
        url = app.url
    elif case == "handshake-timeout":
        port, factory = yield listen_silent(reactor())
        url = f"ws://127.0.0.1:{port.getHost().port}/media"
        extra = ["--relay-handshake-timeout", "0.5"]
    elif case == "tls-failed":
        app = yield MediaApp().listen(reactor(), tls=pki.leaf())
        apps.append(app)
        url = app.url  # the test's CA is not a system root
    else:
        app = yield MediaApp().listen(reactor(), tls=pki.leaf(names=("other.example.test",)))
        apps.append(app)
        url = app.url  # a trusted CA, but the certificate names another host
        extra = ["--relay-ca", str(pki.root_pem)]
    daemon = start_daemon("--handler", "relay", "--relay-url", url, *extra)
    script = CallScript(frames=1000, interval=0.02)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    assert outcome.closed_by_server and outcome.close_code == 1000 and len(outcome.sent) < 250
    assert outcome.received == []
    failed = yield daemon.wait_for_async(reactor(), named(daemon, "relay.failed", callSid=script.call_sid))
    assert failed["reason"] == case.replace("tls-wrong-name", "tls-failed"), failed
    assert failed["fallback"] == "hangup"
    if case == "handshake-refused":
        assert "403" in failed["detail"]
    if case == "tls-wrong-name":
        assert "DNSMismatch" in failed["detail"], "service_identity checked the name"
    if case == "connect-timeout":
        assert failed["detail"] == "no TCP connection within 0.5s (connect_timeout)", failed
    if case == "handshake-timeout":
        for connection in factory.connections:
            connection.transport.abortConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_wss_to_an_application_with_a_private_ca(start_daemon, apps, pki):
    app = yield MediaApp().listen(reactor(), tls=pki.leaf())
    apps.append(app)
    daemon = start_daemon("--handler", "relay", "--relay-url", app.url, "--relay-ca", str(pki.root_pem))
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), CallScript(frames=20)).addTimeout(30, reactor())
    assert outcome.received == outcome.sent and outcome.close_code == 1000
    yield daemon.wait_for_async(reactor(), lambda e: e.get("event_name") == "call.ended")
    assert not daemon.named("relay.failed")


def junk_then_echo(app, proto, message):
    if message.get("event") == "media" and app.media == 0:
        app.media += 1
        proto.send(app_media("MZ" + "0" * 32, b"\x01" * 160))  # another stream's
        proto.sendMessage(b"\x00\x01", isBinary=True)
        proto.send(b"{not json")
        proto.send(b'{"event":"dance","streamSid":"%s"}' % proto.stream_sid.encode())
        proto.send(app_media(proto.stream_sid, b"\x02" * 160))


@pytest_twisted.inlineCallbacks
def test_what_twilio_would_refuse_from_the_application_is_dropped_and_named(start_daemon, apps):
    app = yield MediaApp(behaviour=junk_then_echo).listen(reactor())
    apps.append(app)
    daemon = start_daemon("--handler", "relay", "--relay-url", app.url)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), CallScript(frames=10)).addTimeout(30, reactor())
    assert outcome.received == [b"\x02" * 160] and outcome.foreign == []
    ended = yield daemon.wait_for_async(reactor(), lambda e: e.get("event_name") == "call.ended")
    reasons = {e["reason"] for e in daemon.named("call.protocol_error")}
    assert reasons == {"upstream-foreign-stream-sid", "upstream-binary-frame", "upstream-invalid-json", "upstream-unknown-event"}
    assert ended["error_summary"]["upstream-foreign-stream-sid"] == 1


@pytest_twisted.inlineCallbacks
def test_an_application_that_stops_reading_is_given_up_not_buffered_forever(start_daemon, apps, tmp_path):
    app = yield MediaApp(stall=True).listen(reactor())
    apps.append(app)
    config = tmp_path / "vb.toml"
    config.write_text(f'[handlers.relay]\nurl = "{app.url}"\nmax_pending = 20\n')
    daemon = start_daemon("--handler", "relay", "--config", str(config))
    big = bytes(range(256)) * 120  # 30 KB frames fill the socket buffers quickly
    script = CallScript(frames=2000, frame=lambda i: big, interval=0.002)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(60, reactor())
    assert outcome.closed_by_server and len(outcome.sent) < 2000
    failed = yield daemon.wait_for_async(reactor(), named(daemon, "relay.failed", callSid=script.call_sid))
    assert failed["reason"] == "upstream-stalled" and "20 frames waited" in failed["detail"]


@pytest_twisted.inlineCallbacks
def test_a_relayed_call_can_be_recorded(start_daemon, apps, tmp_path, speech):  # noqa: F811
    import json
    import wave

    app = yield MediaApp().listen(reactor())
    apps.append(app)
    daemon = start_daemon(
        "--handler", "record", "--record-dir", str(tmp_path), "--record-handler", "relay", "--relay-url", app.url
    )  # fmt: skip
    script = CallScript(frames=100, frame=lambda i: speech[i], interval=0.01, linger=1.0)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    assert app.frames == outcome.sent_frames and outcome.received_frames == app.sent, "still verbatim inside record"
    saved = yield daemon.wait_for_async(reactor(), named(daemon, "record.saved", callSid=script.call_sid))
    meta = json.loads(open(saved["sidecar"]).read())
    assert (meta["handler"], meta["framesIn"], meta["framesOut"]) == ("relay", 100, 100)
    assert [m["name"] for m in meta["marksSent"]] == ["first"]
    with wave.open(saved["wav"]) as w:
        stereo = w.readframes(w.getnframes())
    from voicebridge.audio import codec as audio

    second = audio.channel(stereo, 1)
    position = 0
    for payload in outcome.received:  # each reply, in order, with nothing but silence before it
        pcm = audio.ulaw_to_pcm16(payload)
        found = second.find(pcm, position)
        while found % 2:
            found = second.find(pcm, found + 1)
        assert found >= 0 and second[position:found] == bytes(found - position)
        position = found + len(pcm)
    assert second[position:] == bytes(len(second) - position)
