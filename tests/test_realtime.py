"""The openai-realtime handler in a real daemon, talking to a local fake of the Realtime API (GA protocol),
with Twilio played by the project's simulator."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.conftest import PUBLIC, TOKEN
from tests.fakerealtime import FakeRealtime, Reply, chunk_audio
from tests.http import call_form, post_form, request
from voicebridge.tools.twiliosim import CallOutcome, CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

KEY = "sk-test-0123456789-secret-key"
ENV = {"OPENAI_API_KEY": KEY}
SIGNER = SignatureChecker(TOKEN)
STREAM_URL = "wss://voice.example.test/twilio-media"


def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def fakes():
    """FakeRealtime servers started by a test; stopped after it."""
    started = []

    @defer.inlineCallbacks
    def start(tls=None, **kwargs):
        fake = yield FakeRealtime(**kwargs).listen(reactor(), tls=tls)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def named(name, **fields):
    return lambda e: e.get("event_name") == name and all(e.get(k) == v for k, v in fields.items())


def frame_index(audio: bytes) -> int:
    return int.from_bytes(audio[:4], "big")  # tone_frame(i) leads with i


@pytest.mark.parametrize("switch", [[], ["--no-fast-path"]], ids=["fast-path", "no-fast-path"])
@pytest_twisted.inlineCallbacks
def test_greeting_heard_and_caller_audio_arrives_byte_exact(switch, start_daemon, fakes):
    fake = yield fakes(replies=[Reply(chunks=25, transcript="Welcome to Acme, café ouvert")], padding="x" * 70_000,
                       expect={"audio.output.voice": "coral",
                               "instructions": "You answer for business-1 (plan pro)."})  # fmt: skip
    daemon = start_daemon(
        "--handler", "openai-realtime", "--realtime-url", fake.url, "--realtime-voice", "coral",
        "--realtime-instructions", "You answer for {businessId} (plan {plan}).", "--realtime-greeting", "Welcome to Acme",
        "--realtime-transcripts", *switch, env=ENV,
    )  # fmt: skip
    script = CallScript(
        frames=60, interval=0.005, custom_parameters={"businessId": "business-1", "plan": "pro"}, dtmf="7", linger=1.0
    )
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    yield fake.closed.addTimeout(10, reactor())

    request_ = fake.requests[0]
    assert request_.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-beta" not in request_.headers, "the GA shape: no beta header"
    assert request_.path == "/v1/realtime" and request_.params == {"model": ["gpt-realtime"]}
    assert fake.problems == [], "the session is the GA shape, mu-law both ways, with the options asked for"
    assert fake.session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert [t["name"] for t in fake.session["tools"]] == ["end_call"], "no transfers configured: no transfer_call"

    greeting = fake.types("response.create")[0]
    assert "Welcome to Acme" in greeting["response"]["instructions"], "the agent speaks first"
    assert fake.agent_audio["item_1"] == b"".join(chunk_audio(1, i) for i in range(25))
    assert b"".join(outcome.received) == fake.agent_audio["item_1"] + fake.agent_audio["item_2"], (
        "the greeting, then the answer to the key"
    )
    assert len(outcome.marks) == 30, "a mark per chunk, so the handler knows what was heard"
    assert fake.audio == b"".join(outcome.sent), "the caller's audio reaches the API byte for byte, in order"
    assert fake.appends == len(outcome.sent) == 60
    assert outcome.close_code == 1000
    assert fake.closes and fake.closes[0][1] == 1000, "the provider link closes with the call"
    keyed = [i for i in fake.items if i and i.get("role") == "user"]
    assert len(keyed) == 1 and "pressed the key 7" in keyed[0]["content"][0]["text"], "DTMF reaches the agent as an item"

    transcript = yield daemon.wait_for_async(reactor(), named("realtime.transcript", role="agent"))
    assert "Welcome to Acme" in transcript["text"]
    ended = yield daemon.wait_for_async(reactor(), named("call.ended", callSid=script.call_sid))
    assert ended["reason"] == "stop"
    yield daemon.wait_for_async(reactor(), named("realtime.closed", callSid=script.call_sid))
    assert not daemon.named("realtime.failed")
    assert KEY not in daemon.output, "the API key never reaches the log"
    _, _, body = request(daemon.port, "GET", "/metrics")
    text = body.decode()
    assert "voicebridge_realtime_calls_total 1.0" in text
    assert "voicebridge_realtime_bridge_latency_seconds_count 30.0" in text


@pytest_twisted.inlineCallbacks
def test_barge_in_clears_and_truncates_at_the_played_position(start_daemon, fakes):
    outcome = CallOutcome()
    spoke = []

    def barge_in(fake, proto, event):
        # Twilio "played" 25 chunks (500 ms) and holds the rest; the caller speaks in a frame Twilio
        # sent after returning the 25th mark, so the daemon has those marks before the speech.
        if event.get("type") != "input_audio_buffer.append" or spoke or len(outcome.marks_returned) < 25:
            return
        import base64

        if int.from_bytes(base64.b64decode(event["audio"])[:4], "big") >= outcome.marks_returned[24][1]:
            spoke.append(True)
            proto.event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": "item_in"})

    fake = yield fakes(replies=[Reply(chunks=100)], behaviour=barge_in)
    daemon = start_daemon("--handler", "openai-realtime", "--realtime-url", fake.url, "--realtime-greeting", "Hi", env=ENV)
    script = CallScript(frames=150, interval=0.01, mark_limit=25, linger=1.0)
    yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script, outcome=outcome).addTimeout(30, reactor())
    yield fake.closed.addTimeout(10, reactor())

    assert spoke and outcome.clears == 1, "Twilio's buffer was cleared"
    assert fake.truncates == [("item_1", 0, 500)], "cut at exactly what Twilio confirmed played: 25 x 20 ms"
    assert fake.problems == [], "never beyond the audio sent"
    cleared = [name for name, _, by_clear in outcome.marks_returned if by_clear]
    assert len(cleared) == 75, "the clear returned the held marks at once; they do not count as heard"
    event = yield daemon.wait_for_async(reactor(), named("realtime.barge_in", callSid=script.call_sid))
    assert (event["audio_end_ms"], event["sent_ms"]) == (500, 2000)
    assert not daemon.named("realtime.failed")


@pytest_twisted.inlineCallbacks
def test_short_sound_is_not_a_barge_in_with_the_guard(start_daemon, fakes):
    outcome = CallOutcome()
    state = {"phase": 0}

    def cough_then_speak(fake, proto, event):
        if event.get("type") != "input_audio_buffer.append" or len(outcome.marks_returned) < 10:
            return
        if state["phase"] == 0:  # a cough: started and stopped in one breath (one read)
            state["phase"] = 1
            proto.event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 100, "item_id": "in_1"})
            proto.event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 150, "item_id": "in_1"})
        elif state["phase"] == 1 and fake.appends >= 40:  # real speech: no stop follows
            state["phase"] = 2
            proto.event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 900, "item_id": "in_2"})

    fake = yield fakes(replies=[Reply(chunks=200, done=False)], behaviour=cough_then_speak,
                       expect={"audio.input.turn_detection": {"type": "server_vad", "interrupt_response": False}})  # fmt: skip
    daemon = start_daemon(
        "--handler", "openai-realtime", "--realtime-url", fake.url, "--realtime-greeting", "Hi",
        "--realtime-barge-in-min-ms", "200", env=ENV,
    )  # fmt: skip
    script = CallScript(frames=150, interval=0.01, mark_limit=10, linger=1.0)
    yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script, outcome=outcome).addTimeout(30, reactor())
    yield fake.closed.addTimeout(10, reactor())

    assert fake.problems == []
    assert state["phase"] == 2 and outcome.clears == 1, "the cough cleared nothing; the speech did"
    assert fake.truncates == [("item_1", 0, 200)] and fake.cancels == 1, "the bridge cancels the response itself"
    yield daemon.wait_for_async(reactor(), named("realtime.barge_in_ignored", callSid=script.call_sid))
    assert len(daemon.named("realtime.barge_in")) == 1


def config_file(tmp_path, fake_url: str, **tables) -> str:
    lines = ['handler = "openai-realtime"', "[handlers.openai-realtime]", f'url = "{fake_url}"']
    for key, value in tables.items():
        lines.append(f"{key} = {value}")
    lines += [
        "[tenants.acme]",
        'numbers = ["+15550100001"]',
        "[tenants.acme.handler_options]",
        'greeting = "Acme, hello"',
        'transfers = { sales = "+15550100002", support = "sip:support@pbx.example.com" }',
    ]
    path = tmp_path / "vb.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def signed_post(daemon, path: str, form):
    return post_form(daemon.port, path, form, {"X-Twilio-Signature": SIGNER.sign(PUBLIC + path, form)})


@pytest_twisted.inlineCallbacks
def test_transfer_call_ends_in_dial_and_unknown_destinations_are_refused(start_daemon, fakes, tmp_path):
    fake = yield fakes(replies=[
        Reply(chunks=5, tool=("transfer_call", {"destination": "billing"})),  # not in the table
        Reply(chunks=10, tool=("transfer_call", {"destination": "sales"}), transcript="Transferring you to sales"),
    ])  # fmt: skip
    daemon = start_daemon(
        "--public-url", PUBLIC, "--config", config_file(tmp_path, fake.url), env={**ENV, "TWILIO_AUTH_TOKEN": TOKEN}
    )
    call_sid = "CA" + "5" * 32
    status, _, body = signed_post(daemon, "/voice", call_form(call_sid=call_sid))
    assert status == 200
    connect = ET.fromstring(body).find("./Connect")
    assert connect.get("action") == PUBLIC + "/connect-action", "a handler with transfers gets <Connect action>"
    params = {p.get("name"): p.get("value") for p in connect.iter("Parameter")}

    script = CallScript(frames=300, interval=0.01, call_sid=call_sid, custom_parameters=params)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script, signature=SIGNER.sign(STREAM_URL))
    assert outcome.closed_by_server and outcome.close_code == 1000, "the stream ends so Twilio asks what next"
    assert [t["name"] for t in fake.session["tools"]] == ["end_call", "transfer_call"]
    assert fake.session["tools"][1]["parameters"]["properties"]["destination"]["enum"] == ["sales", "support"]
    refused = [i for i in fake.items if i and i.get("type") == "function_call_output"]
    assert refused and refused[0]["call_id"] == "call_1" and "unknown destination 'billing'" in refused[0]["output"]
    assert b"".join(outcome.received) == fake.agent_audio["item_1"] + fake.agent_audio["item_2"], "the last words played"
    assert outcome.marks[-1] == "vb-rt-bye", "the transfer waits for the mark after the last words"

    status, _, body = signed_post(daemon, "/connect-action", call_form(call_sid=call_sid, CallStatus="in-progress"))
    root = ET.fromstring(body)
    assert [(c.tag, [(g.tag, g.text) for g in c]) for c in root] == [("Dial", [("Number", "+15550100002")])]
    after = yield daemon.wait_for_async(reactor(), named("call.after_stream"))
    assert (after["answer"], after["because"]) == ("dial", "transfer_call:sales")
    ended = yield daemon.wait_for_async(reactor(), named("call.ended", callSid=call_sid))
    assert ended["reason"] == "transfer"
    yield fake.closed.addTimeout(10, reactor())
    assert fake.closes[0][1] == 1000


@pytest_twisted.inlineCallbacks
def test_end_call_hangs_up_after_the_goodbye_played(start_daemon, fakes):
    fake = yield fakes(replies=[
        Reply(chunks=0, tool=("end_call", {})),  # no words: the agent is asked for a goodbye first
        Reply(chunks=15, transcript="Goodbye!"),
    ])  # fmt: skip
    daemon = start_daemon("--handler", "openai-realtime", "--realtime-url", fake.url, "--realtime-greeting", "Hi", env=ENV)
    script = CallScript(frames=300, interval=0.01)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())

    output = [i for i in fake.items if i and i.get("type") == "function_call_output"]
    assert output and output[0]["call_id"] == "call_1" and "goodbye" in output[0]["output"]
    assert b"".join(outcome.received) == fake.agent_audio["item_2"], "the goodbye was sent whole"
    assert outcome.marks[-1] == "vb-rt-bye" and len(outcome.marks) == 16
    assert outcome.closed_by_server and outcome.close_code == 1000 and not outcome.stop_sent
    ended = yield daemon.wait_for_async(reactor(), named("call.ended", callSid=script.call_sid))
    assert ended["reason"] == "agent-hangup"
    yield fake.closed.addTimeout(10, reactor())


FAILURES = {
    # tenant: (how the fake misbehaves, the reason realtime.failed names)
    "unreachable": (None, "connect-refused"),
    "refused-401": ({"refuse": 401}, "unauthorized"),
    "refused-429": ({"refuse": 429}, "rate-limited"),
    "silent": ("silent", "handshake-timeout"),
    "dies": ({"close_after": 10}, "closed"),
    "errors": ({"error_on_session": True}, "error-event"),
    "stalls": ({"replies": [Reply(hold=True)]}, "stalled"),
}


@pytest_twisted.inlineCallbacks
def test_each_failure_ends_in_the_fallback_with_its_reason(start_daemon, fakes, tmp_path):
    from tests.mediaapp import listen_silent
    from tests.nginx import free_port

    silent_port, silent = yield listen_silent(reactor())
    lines = [
        'handler = "openai-realtime"',
        "[handlers.openai-realtime]",
        'greeting = "Hello"',
        "handshake_timeout = 1",
        "stall_timeout = 1",
        'fallback = "say"',
        'message = "Our assistant is away."',
    ]
    for i, (tenant, (misbehaviour, _)) in enumerate(FAILURES.items()):
        if misbehaviour is None:
            url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
        elif misbehaviour == "silent":
            url = f"ws://127.0.0.1:{silent_port.getHost().port}/v1/realtime"
        else:
            url = (yield fakes(**misbehaviour)).url
        lines += [f"[tenants.{tenant}]", f'numbers = ["+1555010{i:04d}"]', f'handler_options = {{ url = "{url}" }}']
    path = tmp_path / "vb.toml"
    path.write_text("\n".join(lines) + "\n")
    from tests.daemon import twist_command

    # At debug level Autobahn logs whole handshakes: the key must not be in them.
    daemon = start_daemon("--config", str(path), env=ENV, command=[*twist_command(), "--log-level=debug", "voicebridge"])

    scripts = {tenant: CallScript(frames=300, interval=0.01, custom_parameters={"businessId": tenant}) for tenant in FAILURES}
    calls = [play_call(reactor(), daemon.url("/twilio-media", "ws"), script) for script in scripts.values()]
    outcomes = yield defer.gatherResults(calls).addTimeout(60, reactor())
    try:
        for (tenant, (_, reason)), script, outcome in zip(FAILURES.items(), scripts.values(), outcomes, strict=True):
            assert outcome.closed_by_server and outcome.close_code == 1000 and not outcome.stop_sent, tenant
            failed = yield daemon.wait_for_async(reactor(), named("realtime.failed", callSid=script.call_sid))
            assert (failed["reason"], failed["fallback"]) == (reason, "say"), (tenant, failed["detail"])
            ended = yield daemon.wait_for_async(reactor(), named("call.ended", callSid=script.call_sid))
            assert ended["reason"] == "realtime-failed"
            status, _, body = post_form(daemon.port, "/connect-action", call_form(call_sid=script.call_sid))
            root = ET.fromstring(body)
            assert [(c.tag, c.text) for c in root] == [("Say", "Our assistant is away."), ("Hangup", None)], tenant
    finally:
        for connection in silent.connections:
            connection.transport.abortConnection()
        yield silent_port.stopListening()
    assert KEY not in daemon.output
    _, _, body = request(daemon.port, "GET", "/metrics")
    for _, reason in FAILURES.values():
        assert f'voicebridge_realtime_failures_total{{reason="{reason}"}} 1.0' in body.decode()


@pytest_twisted.inlineCallbacks
def test_recorded_call_holds_both_sides_and_the_transcripts(start_daemon, fakes, tmp_path):
    import json

    from tests.test_record import read_wav
    from voicebridge.audio.codec import ulaw_to_pcm16

    def caller_words(fake, proto, event):
        if event.get("type") == "input_audio_buffer.append" and fake.appends == 30:
            proto.event({"type": "conversation.item.input_audio_transcription.completed", "item_id": "in_1",
                         "content_index": 0, "transcript": "I need an appointment, call me on 5551234567"})  # fmt: skip

    fake = yield fakes(replies=[Reply(chunks=20, transcript="Acme dental, hello")], behaviour=caller_words)
    daemon = start_daemon(
        "--handler", "record", "--record-dir", str(tmp_path), "--record-handler", "openai-realtime",
        "--realtime-url", fake.url, "--realtime-greeting", "Hello", "--realtime-transcripts", env=ENV,
    )  # fmt: skip
    script = CallScript(frames=60, interval=0.005, linger=1.0)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    event = yield daemon.wait_for_async(reactor(), named("record.saved", callSid=script.call_sid), timeout=15)

    left, right = read_wav(event["wav"])
    caller = ulaw_to_pcm16(b"".join(outcome.sent))
    agent = ulaw_to_pcm16(fake.agent_audio["item_1"])
    import struct

    as_ints = lambda pcm: list(struct.unpack(f"<{len(pcm) // 2}h", pcm))  # noqa: E731
    assert left[: len(caller) // 2] == as_ints(caller), "the caller, as Twilio sent them"
    start = next(i for i, v in enumerate(right) if v)  # the greeting plays from when it arrived
    assert right[start : start + len(agent) // 2] == as_ints(agent), "the agent, as the caller heard it"
    assert not any(right[start + len(agent) // 2 :]), "and nothing else"
    sidecar = json.loads(open(event["sidecar"]).read())
    assert sidecar["handler"] == "openai-realtime"
    assert [(t["role"], t["text"]) for t in sidecar["transcripts"]] == [
        ("agent", "Acme dental, hello"),
        ("caller", "I need an appointment, call me on 5551234567"),
    ]
    said = yield daemon.wait_for_async(reactor(), named("realtime.transcript", role="caller"))
    assert "I need an appointment, call me on" in said["text"] and "5551234567" not in daemon.output, (
        "a number the caller says is masked in the log (the recording's sidecar, the customer's own, keeps it)"
    )


@pytest_twisted.inlineCallbacks
def test_the_documented_receptionist_transfers_to_its_sip_desk(start_daemon, fakes, tmp_path):
    """docs/handlers.md's worked example, run as written (paths and the API's URL swapped for the test's)."""
    from tests.test_handler_docs import block

    def caller_asks(fake, proto, event):  # "Billing, please": the server's VAD ends the turn and answers
        if event.get("type") == "input_audio_buffer.append" and fake.appends == 50:
            proto.event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1000, "item_id": "in_1"})
            proto.respond(fake.replies.pop(0))

    fake = yield fakes(behaviour=caller_asks, replies=[
        Reply(chunks=10, transcript="Acme Dental, this is the front desk."),
        Reply(chunks=5, tool=("transfer_call", {"destination": "billing"}), transcript="Putting you through to billing."),
    ])  # fmt: skip
    (tmp_path / "bobs").mkdir()
    instructions = tmp_path / "receptionist.txt"
    instructions.write_text(block("text", "# /etc/voicebridge/receptionist.txt").split("\n", 1)[1])
    config = block("toml", "# vb.toml").replace("/etc/voicebridge/receptionist.txt", str(instructions))
    config = config.replace("/var/lib/voicebridge/bobs-bikes", str(tmp_path / "bobs"))
    config = config.replace("[handlers.openai-realtime]\n", f'[handlers.openai-realtime]\nurl = "{fake.url}"\n')
    (tmp_path / "vb.toml").write_text(config)
    daemon = start_daemon("--config", str(tmp_path / "vb.toml"), "--public-url", PUBLIC, env={**ENV, "TWILIO_AUTH_TOKEN": TOKEN})

    call_sid = "CA" + "9" * 32
    status, _, body = signed_post(daemon, "/voice", call_form(call_sid=call_sid, to="+15550100001"))
    params = {p.get("name"): p.get("value") for p in ET.fromstring(body).iter("Parameter")}
    script = CallScript(frames=400, interval=0.01, call_sid=call_sid, custom_parameters=params)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script, signature=SIGNER.sign(STREAM_URL))
    assert outcome.closed_by_server
    assert fake.session["instructions"].startswith(
        "You are the receptionist of acme-dental on the phone with a caller from +1555"
    )
    assert (
        fake.session["audio"]["output"]["voice"] == "coral"
        and fake.session["audio"]["input"]["turn_detection"]["interrupt_response"] is False
    )
    _, _, body = signed_post(daemon, "/connect-action", call_form(call_sid=call_sid))
    assert "<Dial><Sip>sip:billing@pbx.acme-dental.example</Sip></Dial>" in body.decode()
    _, _, metrics = request(daemon.port, "GET", "/metrics")
    assert "voicebridge_realtime_turn_latency_seconds_count 1.0" in metrics.decode(), "one turn: speech_stopped to first audio"
    assert 'voicebridge_realtime_tool_calls_total{outcome="ok",tool="transfer_call"} 1.0' in metrics.decode()


@pytest_twisted.inlineCallbacks
def test_wss_to_the_api_is_verified_and_a_wrong_ca_is_a_tls_failure(start_daemon, fakes, pki, tmp_path):
    from tests.pki import PKI

    fake = yield fakes(tls=pki.leaf(), replies=[Reply(chunks=20)])
    daemon = start_daemon("--handler", "openai-realtime", "--realtime-url", fake.url, "--realtime-ca", str(pki.root_pem),
                          "--realtime-greeting", "Hi", env=ENV)  # fmt: skip
    script = CallScript(frames=40, interval=0.01, linger=1.0)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    assert b"".join(outcome.received) == fake.agent_audio["item_1"] and fake.audio == b"".join(outcome.sent)
    assert not daemon.named("realtime.failed")

    other = PKI(tmp_path / "other-ca")
    daemon = start_daemon(
        "--handler", "openai-realtime", "--realtime-url", fake.url, "--realtime-ca", str(other.root_pem), env=ENV
    )
    script = CallScript(frames=100, interval=0.01)
    outcome = yield play_call(reactor(), daemon.url("/twilio-media", "ws"), script).addTimeout(30, reactor())
    failed = yield daemon.wait_for_async(reactor(), named("realtime.failed", callSid=script.call_sid))
    assert failed["reason"] == "tls-failed" and outcome.closed_by_server
