"""The hooks handlers get beyond events: raw frames, outbound audio, wrapping, routing. No sockets."""

import json
import os

import pytest
from twisted.internet import task
from twisted.internet.interfaces import IReactorThreads
from zope.interface import implementer

from tests.fakes import new_call, registry
from voicebridge import handlers
from voicebridge.call.resolve import resolve_handlers
from voicebridge.config.file import Settings, parse_config
from voicebridge.handlers import Handler, UnknownHandler
from voicebridge.twilio import messages as m

SID, CALL, ACC = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32


class FrameTaker(Handler):
    wants_frames = True
    seen = []

    def on_start(self, start):
        self.seen.append(("opening", list(self.call.opening_frames)))

    def on_media(self, audio, timestamp):
        self.seen.append(("media", self.call.frame))

    def on_dtmf(self, digit):
        self.seen.append(("dtmf", self.call.frame))

    def on_stop(self, reason):
        self.seen.append(("stop", self.call.frame))


class Talker(Handler):
    """Sends something back for each event, so a watcher has something to hear."""

    def on_start(self, start):
        self.call.send_audio(b"\x01" * 160)
        self.call.send_mark("greeting")

    def on_media(self, audio, timestamp):
        self.call.send_audio(audio)

    def on_dtmf(self, digit):
        self.call.clear()


@pytest.fixture
def extra_handlers(monkeypatch):
    monkeypatch.setitem(handlers.BUILTIN, "frametaker", "tests.test_handler_interface:FrameTaker")
    monkeypatch.setitem(handlers.BUILTIN, "talker", "tests.test_handler_interface:Talker")
    FrameTaker.seen.clear()


def test_a_handler_that_wants_frames_sees_them_byte_for_byte(extra_handlers):
    reg, _ = registry(handler="frametaker")
    call, _ = new_call(reg)
    connected, start = m.twilio_connected(), m.twilio_start(SID, CALL, ACC, {"k": "v"})
    media = b'{"event": "media", "streamSid": "%s", "media": {"payload": "AAEC", "timestamp": "0"}}' % SID.encode()
    dtmf, stop = m.twilio_dtmf(SID, "7", 4), m.twilio_stop(SID, CALL, ACC, 5)
    call.text_received(connected)
    call.text_received(start)
    assert FrameTaker.seen == [("opening", [connected, start])]
    assert call.opening_frames == [], "taken in on_start; the raw start frame is not kept for the whole call"
    for frame in (media, dtmf, stop):
        call.text_received(frame)
    assert FrameTaker.seen == [("opening", [connected, start]), ("media", media), ("dtmf", dtmf), ("stop", stop)]
    assert call.frame is None, "the frame is kept only while it is dispatched"


class FrameSpy(Handler):
    """Notes whether the raw frame was at hand while its media was handled."""

    def on_media(self, audio, timestamp):
        self.spied = self.call.frame


def test_other_calls_go_back_to_the_plain_path_at_start(monkeypatch):
    from voicebridge import handlers

    monkeypatch.setitem(handlers.BUILTIN, "spy", "tests.test_handler_interface:FrameSpy")
    reg, _ = registry(handler="spy")
    call, _ = new_call(reg)
    start = m.twilio_start(SID, CALL, ACC)
    call.text_received(start)
    assert not call.keeps_frames and call.opening_frames == []
    media = m.twilio_media(SID, b"x" * 160, 1, 0, 2)
    call.text_received(media)
    assert call.handler.spied is None and call.frames_in == 1, "media took the plain path: no frame kept"
    FrameSpy.wants_frames = True
    try:
        reg2, _ = registry(handler="spy")
        keeper, _ = new_call(reg2)
        keeper.text_received(start)
        keeper.text_received(media)
        assert keeper.keeps_frames and keeper.handler.spied == media and keeper.frame is None
    finally:
        FrameSpy.wants_frames = False


class Watcher:
    def __init__(self):
        self.heard = []

    def sent_audio(self, audio):
        self.heard.append(("audio", audio))

    def sent_mark(self, name):
        self.heard.append(("mark", name))

    def sent_clear(self):
        self.heard.append(("clear",))


def test_watchers_hear_what_the_call_sends_including_forwarded_frames(extra_handlers):
    reg, _ = registry(handler="talker")
    call, link = new_call(reg)
    watcher = Watcher()
    call.watch_outbound(watcher)
    call.text_received(m.twilio_start(SID, CALL, ACC))
    call.text_received(m.twilio_media(SID, b"\x02" * 160, 1, 0, 2))
    call.text_received(m.twilio_dtmf(SID, "1", 3))
    forwarded = m.media(SID, b"\x03" * 80)
    call.forward(m.parse_outbound(forwarded), forwarded)
    assert watcher.heard == [
        ("audio", b"\x01" * 160),
        ("mark", "greeting"),
        ("audio", b"\x02" * 160),
        ("clear",),
        ("audio", b"\x03" * 80),
    ]
    assert (call.frames_out, call.bytes_out, call.marks_out) == (3, 400, 1)
    assert len(link.sent) == 5
    call.text_received(m.twilio_stop(SID, CALL, ACC, 9))
    call.forward(m.parse_outbound(forwarded), forwarded)
    assert len(link.sent) == 5 and len(watcher.heard) == 5, "nothing goes out, or is heard, after the stream stopped"


REFUSING = {"unknown_tenant": "refuse", "tenants": {"b1": {"numbers": ["+15550100"]}}}


def test_a_stream_for_no_known_tenant_is_refused_like_the_webhook_refuses():
    reg, _ = registry(parse_config(REFUSING))
    call, link = new_call(reg)
    call.text_received(m.twilio_start(SID, CALL, ACC, {"businessId": "stranger", "to": "+15559999"}))
    assert link.closed == (1008, "no tenant for this call")
    assert call.end_reason == "refused" and call.handler is None and reg.active == 0
    known, known_link = new_call(reg)
    known.text_received(m.twilio_start(SID, CALL, ACC, {"to": "+15550100"}))
    assert known_link.closed is None and known.tenant.id == "b1"


def test_record_wraps_another_handler_and_saves_both_directions(tmp_path):
    config = parse_config(
        {
            "tenants": {
                "b1": {
                    "numbers": ["+15550100"],
                    "handler": "record",
                    "handler_options": {"dir": str(tmp_path), "handler": "echo"},
                }
            }
        }
    )
    reg, clock = registry(config)
    call, link = new_call(reg)
    call.text_received(m.twilio_connected())
    call.text_received(m.twilio_start(SID, CALL, ACC, {"to": "+15550100", "businessId": "b1"}))
    assert call.handler_name == "record" and call.handler.inner_name == "echo"
    for i in range(3):
        call.text_received(m.twilio_media(SID, bytes([i + 1]) * 160, i + 1, i * 20, i + 3))
    call.text_received(m.twilio_dtmf(SID, "9", 7))
    assert [x.payload for x in link.sent] == [bytes([i + 1]) * 160 for i in range(3)], "echo still works inside record"
    clock.advance(1)
    call.text_received(m.twilio_stop(SID, CALL, ACC, 8))
    assert call.finished.called
    name = f"{CALL}-{SID}"
    assert sorted(os.listdir(tmp_path)) == [f"{name}.json", f"{name}.wav"]
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert (meta["framesIn"], meta["framesOut"], meta["digits"], meta["tenant"], meta["handler"]) == (3, 3, "9", "b1", "echo")
    assert meta["parameters"] == {"to": "+15550100", "businessId": "b1"} and meta["endReason"] == "stop"


def settings_for(data, **flags):
    return Settings(listen=[], config=parse_config(data), **flags)


def test_wrapped_handlers_get_their_own_options_per_tenant(tmp_path):
    data = {
        "handlers": {"relay": {"url": "ws://127.0.0.1:9/global"}},
        "tenants": {
            "b1": {
                "handler": "record",
                "handler_options": {"dir": str(tmp_path), "handler": "relay", "relay": {"url": "wss://app.example.test/b1"}},
            },
            "b2": {"handler": "record", "handler_options": {"dir": str(tmp_path), "handler": "relay"}},
        },
    }
    resolved = resolve_handlers(settings_for(data))
    assert resolved["b1"][2]["inner"][2]["url"] == "wss://app.example.test/b1"
    assert resolved["b2"][2]["inner"][2]["url"] == "ws://127.0.0.1:9/global"
    assert resolved[None][0] == "echo"


@pytest.mark.parametrize(
    "data, flags, message",
    [
        ({"handlers": {"recrod": {}}}, {}, "[handlers.recrod]: no handler named 'recrod'"),
        ({}, {"handler": "record"}, "dir: required"),
        ({}, {"handler": "record", "handler_options": {"record": {"dir": "/nonexistent/x"}}}, "does not exist"),
        ({}, {"handler": "relay"}, "url: required"),
        ({}, {"handler": "relay", "handler_options": {"relay": {"url": "http://x"}}}, "is not a ws:// or wss:// URL"),
        ({}, {"handler": "relay", "handler_options": {"relay": {"url": "ws://x", "fallback": "pray"}}}, "fallback: 'pray'"),
        ({}, {"handler": "relay", "handler_options": {"relay": {"url": "ws://x", "connect_timeout": 0}}}, "connect_timeout"),
        ({}, {"handler": "relay", "handler_options": {"relay": {"url": "ws://x", "ca_file": "/nonexistent"}}}, "cannot read CA"),
        ({}, {"handler": "relay", "handler_options": {"relay": {"url": "ws://x", "urll": "y"}}}, "unknown option(s) urll"),
        (
            {"tenants": {"b": {"handler": "echo", "handler_options": {"relay": {"url": "ws://x"}}}}},
            {},
            "does not hand calls to 'relay'",
        ),
    ],
)
def test_handler_mistakes_stop_start_up_with_their_place(data, flags, message):
    with pytest.raises((ValueError, UnknownHandler)) as info:
        resolve_handlers(settings_for(data, **flags))
    assert message in str(info.value)


def test_a_handler_cannot_wrap_itself(tmp_path):
    flags = {"handler": "record", "handler_options": {"record": {"dir": str(tmp_path), "handler": "record"}}}
    with pytest.raises(ValueError, match="wraps itself"):
        resolve_handlers(settings_for({}, **flags))


def test_a_recording_is_saved_however_the_call_ends(tmp_path):
    reg, _ = registry(handler="record", handler_options={"record": {"dir": str(tmp_path)}})
    call, _ = new_call(reg)
    call.text_received(m.twilio_start(SID, CALL, ACC))
    call.text_received(m.twilio_media(SID, b"\x05" * 160, 1, 0, 2))
    call.connection_lost(1006, "gone")  # no stop: Twilio's side dropped
    meta = json.loads((tmp_path / f"{CALL}-{SID}.json").read_text())
    assert meta["endReason"] == "closed" and meta["framesIn"] == 1 and call.finished.called


def test_a_recording_that_cannot_be_written_is_removed_and_logged(tmp_path, monkeypatch):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        reg, _ = registry(handler="record", handler_options={"record": {"dir": str(tmp_path)}})
        call, _ = new_call(reg)
        call.text_received(m.twilio_start(SID, CALL, ACC))
        call.text_received(m.twilio_media(SID, b"\x05" * 160, 1, 0, 2))

        def disk_full(*args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", disk_full)
        call.text_received(m.twilio_stop(SID, CALL, ACC, 3))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert os.listdir(tmp_path) == [], "neither a final name nor a partial file is left"
    failed = [e for e in events if e.get("event_name") == "record.failed"]
    assert len(failed) == 1 and "No space left" in failed[0]["error"] and call.finished.called


def test_a_ca_file_must_hold_certificates(tmp_path):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    flags = {"handler": "relay", "handler_options": {"relay": {"url": "wss://x.example", "ca_file": str(not_pem)}}}
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        resolve_handlers(settings_for({}, **flags))


def test_a_recording_that_cannot_start_hangs_the_call_up(tmp_path):
    directory = tmp_path / "gone"
    directory.mkdir()
    reg, _ = registry(handler="record", handler_options={"record": {"dir": str(directory), "handler": "echo"}})
    directory.rmdir()  # removed after start-up checked it
    call, link = new_call(reg)
    call.text_received(m.twilio_start(SID, CALL, ACC))
    assert link.closed == (1011, "handler error") and call.errors["handler-error"] == 1
    assert call.finished.called and not directory.exists()


@implementer(IReactorThreads)
class ThreadedClock(task.Clock):
    """A fake clock that, like the reactor, has a thread pool: work sent to it waits until the test runs it."""

    def __init__(self):
        super().__init__()
        self.jobs = []

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def run_jobs(self):
        while self.jobs:
            on_result, f, args, kwargs = self.jobs.pop(0)
            on_result(True, f(*args, **kwargs))


def test_a_call_ending_inside_a_send_leaves_the_finishing_recording_alone(tmp_path):
    """A slow reader ends the call inside echo's send: the recording is finishing in a thread, and must
    hear nothing more from the reactor (the send that ended the call included)."""
    from voicebridge.call.registry import CallRegistry
    from voicebridge.config.limits import Limits

    clock = ThreadedClock()
    reg = CallRegistry(
        Settings(
            listen=[],
            handler="record",
            handler_options={"record": {"dir": str(tmp_path), "handler": "echo"}},
            limits=Limits(max_send_buffer=16 * 1024),
        ),
        clock,
    )
    call, link = new_call(reg)
    call.text_received(m.twilio_start(SID, CALL, ACC))
    recording = call.handler.recording
    call.guards.pauseProducing()  # Twilio stopped reading what is sent to it
    i = 0
    while not clock.jobs and i < 1000:
        call.text_received(m.twilio_media(SID, b"\x05" * 160, i + 1, i * 20, i + 2))
        i += 1
    assert call.end_reason == "slow-reader" and len(clock.jobs) == 1, "the recording is being finished in a thread"
    assert recording.finishing
    sent_while_finishing = dict(recording.counts)
    call.text_received(m.twilio_media(SID, b"\x05" * 160, i + 1, i * 20, i + 2))  # one more in flight
    call.handler.sent_audio(b"\x05" * 160)  # a watcher call after finishing began is a no-op
    assert recording.counts == sent_while_finishing
    clock.run_jobs()
    meta = json.loads((tmp_path / f"{CALL}-{SID}.json").read_text())
    assert meta["endReason"] == "slow-reader" and meta["framesIn"] == i
    assert meta["framesOut"] == sent_while_finishing["framesOut"] == i - 1, "the send that ended the call is not in it"
    assert call.finished.called


def test_handlers_are_resolved_once_at_start_up(monkeypatch, tmp_path):
    """Options resolve and check every handler; the registry (and check-config) use that, not a second pass."""
    from voicebridge.call.registry import CallRegistry
    from voicebridge.daemon.tap import Options

    loads = []
    real_load = handlers.load
    monkeypatch.setattr(handlers, "load", lambda name: loads.append(name) or real_load(name))
    options = Options()
    options.parseOptions(["--handler", "record", "--record-dir", str(tmp_path), "--record-handler", "echo"])
    assert loads, "start-up checks the handlers"
    loads.clear()
    registry = CallRegistry(options.settings(), task.Clock())
    assert loads == [] and registry.route({})[1:3] == ("record", handlers.load("record"))


class Sayer(Handler):
    """Asks Twilio to say goodbye after the stream, on the first key press; reads the clock and liveness."""

    seen = []

    @classmethod
    def uses_connect_action(cls, options):
        return True

    @classmethod
    def close_grace(cls, options):
        return 20.0

    def on_dtmf(self, digit):
        self.seen.append((self.call.live, self.call.clock.seconds()))
        self.call.say_and_hang_up("Goodbye", "test-why", "said")

    def on_stop(self, reason):
        self.seen.append((self.call.live, reason))


def test_the_handler_api_is_what_a_handler_sees_of_its_call(monkeypatch):
    from voicebridge.daemon.drain import GRACE, Drain
    from voicebridge.handlers.api import HandlerCall

    monkeypatch.setitem(handlers.BUILTIN, "sayer", "tests.test_handler_interface:Sayer")
    Sayer.seen.clear()
    reg, clock = registry(handler="sayer")
    clock.advance(7)
    call, link = new_call(reg)
    call.text_received(m.twilio_start(SID, CALL, ACC, {"k": "v"}))
    surface = call.handler.call
    assert type(surface) is HandlerCall and surface is not call
    assert (surface.call_sid, surface.stream_sid, surface.parameters["k"], surface.started_at) == (CALL, SID, "v", 7)
    with pytest.warns(DeprecationWarning, match="call.clock"):
        assert surface.registry is reg, "the old way in still works, with a warning"
    call.text_received(m.twilio_dtmf(SID, "5", 2))
    assert Sayer.seen == [(True, 7), (False, "said")]
    assert link.closed == (1000, "said") and call.end_reason == "said"
    twiml, why = reg.connect_actions.take(CALL)
    assert "Goodbye" in twiml and "<Hangup" in twiml and why == "test-why"
    assert reg.close_grace == 20.0 and Drain(reg, clock).grace == 5 + 20, "a handler that declares more gets it"
    assert Drain(registry()[0], clock).grace == GRACE == 12, "echo: the built-ins' grace, as before"


def test_handlers_declare_their_close_grace(tmp_path):
    from voicebridge.call.resolve import close_grace

    def grace(**settings):
        return close_grace(resolve_handlers(Settings(listen=[], **settings)))

    relay = {"relay": {"url": "ws://127.0.0.1:9/"}}
    assert grace() == 0.0
    assert grace(handler="relay", handler_options=relay) == 5.0
    assert grace(handler="record", handler_options={"record": {"dir": str(tmp_path)}}) == 2.0
    recorded_relay = {**relay, "record": {"dir": str(tmp_path), "handler": "relay"}}
    assert grace(handler="record", handler_options=recorded_relay) == 7.0, "the save comes after the relay's close"
