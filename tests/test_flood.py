"""A bounded flood of bad handshakes and junk frames on loopback, while good calls run: none of them loses a frame.

Latency under the flood is measured, not asserted, by benchmarks/flood.py.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest_twisted
from twisted.internet import defer, threads

from tests import hostile
from tests.conftest import PUBLIC, TOKEN
from tests.http import request
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)
STREAM_URL = PUBLIC.replace("https://", "wss://") + "/twilio-media"
BAD_HANDSHAKES = 300
JUNK_STREAMS, JUNK_PER_STREAM = 10, 300
GOOD_CALLS, GOOD_FRAMES = 6, 100


def flood(port: int) -> tuple[Counter, int]:
    """Bad handshakes and junk streams from 4 threads; returns (statuses, junk frames sent)."""
    kinds = hostile.BAD_HANDSHAKES
    with ThreadPoolExecutor(4) as pool:
        handshakes = pool.map(lambda i: hostile.bad_handshake(port, kinds[i % len(kinds)]), range(BAD_HANDSHAKES))
        junk = pool.map(
            lambda i: hostile.junk_stream(port, SIGNER.sign(STREAM_URL), JUNK_PER_STREAM, f"CAjunk{i:04d}"), range(JUNK_STREAMS)
        )
        return Counter(handshakes), sum(junk)


@pytest_twisted.inlineCallbacks
def test_good_calls_are_echoed_whole_during_a_flood(start_daemon):
    from twisted.internet import reactor

    daemon = start_daemon("--public-url", PUBLIC, "--handshake-timeout", "2", env={"TWILIO_AUTH_TOKEN": TOKEN})
    flooding = threads.deferToThread(flood, daemon.port)
    scripts = [CallScript(frames=GOOD_FRAMES, linger=0.3) for _ in range(GOOD_CALLS)]
    calls = []
    for script in scripts:  # joining while the flood runs
        calls.append(play_call(reactor, daemon.url("/twilio-media", "ws"), script, signature=SIGNER.sign(STREAM_URL)))
        yield threads.deferToThread(lambda: None)
    outcomes = yield defer.gatherResults(calls).addTimeout(90, reactor)
    statuses, junk_sent = yield flooding.addTimeout(120, reactor)

    for outcome in outcomes:
        assert outcome.opened and len(outcome.sent) == GOOD_FRAMES
        assert outcome.received == outcome.sent, "every good frame echoed, in order"
        assert outcome.close_code == 1000
    assert request(daemon.port, "GET", "/healthz")[0] == 200
    assert statuses == Counter({403: 120, 426: 60, 400: 60, None: 60}), statuses
    assert junk_sent == JUNK_STREAMS * JUNK_PER_STREAM

    yield daemon.wait_for_async(reactor, lambda e: len(daemon.named("call.ended")) >= JUNK_STREAMS + GOOD_CALLS, 20)
    junk_calls = [e for e in daemon.named("call.ended") if e["callSid"].startswith("CAjunk")]
    assert len(junk_calls) == JUNK_STREAMS
    assert all(sum(e["error_summary"].values()) == JUNK_PER_STREAM for e in junk_calls), "every junk frame counted"
    # Each junk frame breaks the protocol its own way: one line per call and reason, however many frames.
    assert len(daemon.named("call.protocol_error")) == JUNK_STREAMS * len(hostile.JUNK_FRAMES)
    good = {e["callSid"]: e for e in daemon.named("call.ended")}
    assert all(good[s.call_sid]["frames_out"] == GOOD_FRAMES for s in scripts)
