"""Draining on SIGTERM: no new calls, live calls untouched until they end or the timeout, then exit 0.

Real ``twist voicebridge`` processes, real signals, Twilio played by the test; and the Drain itself
on a fake clock for the cases that need minutes.
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from tests.fakes import captured_log, new_call, registry
from tests.http import call_form, post_form, request, upgrade_request
from voicebridge.call.capacity import RESERVATION_SECONDS
from voicebridge.config.limits import Limits
from voicebridge.daemon.drain import Drain
from voicebridge.tools.twiliosim import CallScript, play_call


def _in_thread(f, *args, **kwargs):
    return threads.deferToThread(f, *args, **kwargs)


@pytest_twisted.inlineCallbacks
def test_sigterm_drains_a_live_call_then_exits_0(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--drain-timeout", "60")
    assert request(daemon.port, "GET", "/readyz")[0] == 200
    call = play_call(reactor, daemon.url("/twilio-media", "ws"), CallScript(frames=150))
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")

    daemon.signal(signal.SIGTERM)
    draining = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "service.draining")
    assert draining["count"] == 1 and draining["timeout"] == 60

    # The ports stay open: everything new gets a precise 503 rather than a refused connection.
    status, _, body = yield _in_thread(request, daemon.port, "GET", "/readyz")
    assert (status, body) == (503, b"draining\n")
    assert (yield _in_thread(request, daemon.port, "GET", "/healthz"))[0] == 200
    status, headers, body = yield _in_thread(post_form, daemon.port, "/voice", call_form())
    assert status == 503 and headers["x-voicebridge-diagnosis"] == "draining" and b"draining" in body
    status, headers, _ = yield _in_thread(upgrade_request, daemon.port)
    assert status == 503 and headers["x-voicebridge-diagnosis"] == "draining"
    # Twilio's <Connect action> belongs to a live call: it is served (and still checked).
    status, _, body = yield _in_thread(post_form, daemon.port, "/connect-action", call_form(CallStatus="in-progress"))
    assert status == 200 and b"<Hangup />" in body
    refused = yield daemon.wait_for_async(
        reactor, lambda e: e.get("event_name") == "handshake.refused" and e.get("reason") == "draining"
    )
    assert refused["status"] == 503
    assert [e["reason"] for e in daemon.named("webhook.refused")] == ["draining"]

    outcome = yield call.addTimeout(30, reactor)
    assert len(outcome.sent) == 150 and outcome.received == outcome.sent, "the live call went on untouched"
    assert outcome.close_code == 1000
    code = yield _in_thread(daemon.wait_exit, 15)
    assert code == 0
    assert daemon.named("service.drained")
    ended = daemon.named("call.ended")[0]
    assert (ended["reason"], ended["close_code"]) == ("stop", 1000)


@pytest_twisted.inlineCallbacks
def test_drain_timeout_closes_live_calls_with_1001(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--drain-timeout", "1")
    call = play_call(reactor, daemon.url("/twilio-media", "ws"), CallScript(frames=2000))
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")
    daemon.signal(signal.SIGTERM)
    outcome = yield call.addTimeout(30, reactor)
    assert outcome.close_code == 1001 and outcome.closed_by_server
    assert 0 < len(outcome.received) < 2000
    assert (yield _in_thread(daemon.wait_exit, 15)) == 0
    assert daemon.named("service.drain_timeout")[0]["count"] == 1
    ended = daemon.named("call.ended")[0]
    assert (ended["reason"], ended["close_code"]) == ("shutdown", 1001)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
@pytest_twisted.inlineCallbacks
def test_a_second_signal_exits_at_once(start_daemon, second):
    from twisted.internet import reactor

    daemon = start_daemon()  # the default drain timeout: 300 s
    call = play_call(reactor, daemon.url("/twilio-media", "ws"), CallScript(frames=5000))
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")
    daemon.signal(signal.SIGTERM)
    draining = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "service.draining")
    assert draining["timeout"] == 300
    daemon.signal(second)
    code = yield _in_thread(daemon.wait_exit, 30)
    assert code == 0
    assert daemon.named("service.drain_cut")[0]["count"] == 1
    names = [e.get("event_name") for e in daemon.events]
    assert names.index("service.drain_cut") < names.index("call.ended") < names.index("service.drained")
    assert "service.drain_timeout" not in names, "the cut ended the drain, not its 300 s timeout"
    outcome = yield call.addTimeout(10, reactor)
    assert outcome.close_code in (1001, 1006), "the caller's stream ends with the process"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_without_calls_a_signal_exits_0_at_once(start_daemon, sig):
    daemon = start_daemon()
    daemon.signal(sig)
    assert daemon.wait_exit(30) == 0
    assert daemon.named("service.draining")[0]["count"] == 0
    names = [e.get("event_name") for e in daemon.events]
    assert names.index("service.draining") < names.index("service.drained")
    assert "service.drain_timeout" not in names and "service.drain_progress" not in names, "nothing to wait for"


def test_drain_timeout_option_is_checked():
    from tests.daemon import usage_error

    assert "--drain-timeout must be between 0 and 86400, got -1.0" in usage_error(["--drain-timeout", "-1"])


# The Drain on a fake clock.


def _drain(timeout=300.0):
    # These calls stay silent through the drain: keep the call guards' own timeouts (tested in
    # test_guards) out of the way.
    reg, clock = registry(limits=Limits(start_timeout=3600, idle_timeout=3600))
    return Drain(reg, clock, timeout), reg, clock


def _advance(clock, seconds, step=0.1):
    for _ in range(int(seconds / step)):
        clock.advance(step)


def test_drain_waits_for_the_handler_to_finish_stopping():
    from voicebridge.twilio import messages

    class SlowStop:
        stopping = defer.Deferred()

        def on_stop(self, reason):
            return self.stopping

    drain, reg, clock = _drain()
    call, link = new_call(reg)
    call.text_received(messages.twilio_start("MZ1", "CA1", "AC1", {}, 1))
    call.handler = handler = SlowStop()
    done = drain.run()
    assert reg.draining and not done.called
    link.close(1000, "caller hung up")
    assert not reg.calls, "the call left the registry; its handler has not finished"
    _advance(clock, 10)
    assert not done.called, "nothing is lost: the drain waits for the handler"
    handler.stopping.callback(None)
    _advance(clock, 0.5)
    assert done.called


def test_drain_timeout_hangs_up_with_1001_on_the_fake_clock():
    drain, reg, clock = _drain(timeout=120)
    calls = [new_call(reg) for _ in range(3)]
    done = drain.run()
    _advance(clock, 119)
    assert not done.called and all(link.closed is None for _, link in calls)
    _advance(clock, 2)
    assert all(link.closed == (1001, "shutdown") for _, link in calls)
    _advance(clock, 1)
    assert done.called


def test_cut_before_the_timeout():
    drain, reg, clock = _drain()
    call, link = new_call(reg)
    done = drain.run()
    _advance(clock, 5)
    drain.cut()
    assert link.closed == (1001, "shutdown")
    _advance(clock, 1)
    assert done.called


class SlowStop:
    """A handler whose stop takes ``seconds`` on the clock (a relay closing its application, a recording's save)."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds, self.stopped = clock, seconds, None

    def on_stop(self, reason):
        self.stopped = reason
        return task.deferLater(self.clock, self.seconds, lambda: None)


def _started(reg, clock, call_sid="CA1", seconds=8.0):
    from voicebridge.twilio import messages

    call, link = new_call(reg)
    call.text_received(messages.twilio_start("MZ1", call_sid, "AC1", {}, 1))
    call.handler = handler = SlowStop(clock, seconds)
    return call, link, handler


def test_a_cut_waits_for_the_calls_to_finish_their_handlers():
    """On a second signal the calls get 1001, and the process goes once their handlers have finished
    (a recording saved), within a grace derived from the close handshake and the relay's own close."""
    drain, reg, clock = _drain()
    call, link, handler = _started(reg, clock, seconds=8.0)
    done = drain.run()
    with captured_log() as events:
        drain.cut()
        assert link.closed == (1001, "shutdown") and handler.stopped == "shutdown"
        clock.advance(7.9)
        assert not done.called, "the handler is still finishing"
        clock.advance(0.1)
        assert done.called
    names = [e.get("event_name") for e in events]
    assert "service.drain_abandoned" not in names and names[-1] == "service.drained"
    assert Drain.grace >= 5 + 5, "the close handshake, then a relay's close grace"


def test_a_call_that_never_finishes_is_abandoned_after_the_grace():
    drain, reg, clock = _drain()
    call, link, handler = _started(reg, clock, seconds=3600)
    done = drain.run()
    with captured_log() as events:
        drain.cut()
        clock.advance(Drain.grace - 0.1)
        assert not done.called
        clock.advance(0.1)
        assert done.called
    abandoned = [e for e in events if e.get("event_name") == "service.drain_abandoned"]
    assert abandoned[0]["count"] == 1


def test_the_drain_takes_and_waits_for_the_stream_of_a_call_just_answered():
    from voicebridge.twilio import messages
    from voicebridge.web.admission import DRAINING, Admission

    drain, reg, clock = _drain()
    admission = Admission(reg.settings, reg)
    assert reg.capacity.reserve("CA1", None) is None  # the webhook answered <Connect> just before SIGTERM
    done = drain.run()
    assert admission.webhook("127.0.0.1", "http://h/voice", [], None, None) is DRAINING, "no new calls"
    assert admission.stream("127.0.0.1", "ws://h/twilio-media", "", None) is None, "CA1's stream is taken"
    call, link = new_call(reg)
    assert admission.stream("127.0.0.1", "ws://h/twilio-media", "", None) is DRAINING, "one stream per answered call"
    clock.advance(5)
    assert not done.called, "the answered call is waited for"
    call.text_received(messages.twilio_start("MZ1", "CA1", "AC1", {}, 1))
    assert reg.capacity.counts() == (1, 0, 0)
    clock.advance(60)
    assert not done.called
    call.text_received(messages.twilio_stop("MZ1", "CA1", "AC1", 9))
    assert done.called


def test_an_answered_call_whose_stream_never_comes_is_waited_for_a_while():
    """Twilio connects within moments of the answer: the drain waits answer_wait for it, not the whole reservation."""
    from voicebridge.web.admission import DRAINING, Admission

    drain, reg, clock = _drain()
    admission = Admission(reg.settings, reg)
    reg.capacity.reserve("CA1", None)
    clock.advance(2)
    done = drain.run()
    clock.advance(Drain.answer_wait - 2 - 0.1)
    assert not done.called
    clock.advance(0.1)
    assert done.called
    assert admission.stream("127.0.0.1", "ws://h/twilio-media", "", None) is None, "still its stream, while the process runs"
    clock.advance(RESERVATION_SECONDS)
    assert admission.stream("127.0.0.1", "ws://h/twilio-media", "", None) is DRAINING


@pytest.mark.parametrize("handler", ["sigTerm", "sigInt"])
def test_the_reactors_own_signal_handlers_lead_to_the_drain_too(handler):
    """Between the reactor installing its handlers and the service installing ours, a signal goes to
    the reactor's: it must start the same drain, and not mark the process to exit "killed by signal"."""
    from twisted.internet.selectreactor import SelectReactor

    from voicebridge.daemon.signals import ProcessSignals

    reactor = SelectReactor()
    cuts = []
    signals = ProcessSignals(reactor, lambda: cuts.append(True), lambda: None)
    reactor.startRunning(installSignalHandlers=False)  # running, without touching this process's handlers
    getattr(reactor, handler)(signal.SIGTERM, None)  # what the reactor's installed handler calls
    reactor.runUntilCurrent()  # the handler only schedules; the work runs in the reactor
    assert signals.stop_requests == 1 and cuts == []
    assert getattr(reactor, "_exitSignal", None) is None, "twist would re-raise the signal at exit"
    getattr(reactor, handler)(signal.SIGINT, None)
    reactor.runUntilCurrent()
    assert signals.stop_requests == 2 and cuts == [True], "a second signal exits at once"
