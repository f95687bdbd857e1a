"""Hostile input against a real ``twist voicebridge``: every case gets a precise answer, and a good call still works.

Each test sends one kind of abuse from a raw socket (tests/hostile.py), checks the answer on the
wire and in the log, then plays a good signed call (voicebridge.tools.twiliosim) that must be echoed
frame for frame, and checks that /healthz still answers 200. The daemons are shared per module,
so the cases also pile up on one process, as they would in production.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet import defer

from tests import hostile
from tests.conftest import PUBLIC, TOKEN
from tests.daemon import Daemon
from tests.http import call_form, post_form, request, upgrade_request
from tests.nginx import free_port
from tests.tlsclient import trust_root
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio import messages as m
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)
STREAM_URL = PUBLIC.replace("https://", "wss://") + "/twilio-media"
SID, ACC = "MZ" + "5" * 32, "AC" + "6" * 32

# Short bounds, so timeouts show within a test; good calls (0.4 s, media every 20 ms) stay inside them.
# Autobahn runs its ping timers on whole seconds: a ping goes out 0-1 s after the interval is due.
HOSTILE_ARGS = [
    "--public-url",
    PUBLIC,
    "--start-timeout",
    "1",
    "--idle-timeout",
    "3",
    "--handshake-timeout",
    "1.5",
    "--ping-interval",
    "1",
    "--ping-timeout",
    "1",
    "--max-body-size",
    "4096",
    "--max-send-buffer",
    "65536",
]


def start(*args, env=None) -> Daemon:
    return Daemon([*args, "--listen", "tcp:0:interface=127.0.0.1"], env=env).start()


@pytest.fixture(scope="module")
def daemon():
    d = start(*HOSTILE_ARGS, env={"TWILIO_AUTH_TOKEN": TOKEN})
    yield d
    d.stop()
    assert TOKEN not in d.output, "the auth token never appears in the log"


@defer.inlineCallbacks
def good_call(daemon: Daemon, frames: int = 8):
    """A signed call that must be echoed frame for frame and end cleanly; then /healthz must be 200."""
    from twisted.internet import reactor

    script = CallScript(frames=frames, linger=0.2)
    outcome = yield play_call(
        reactor, daemon.url("/twilio-media", "ws"), script, signature=SIGNER.sign(STREAM_URL), timeout=5
    ).addTimeout(15, reactor)
    assert outcome.opened, "the good call was not let in"
    assert len(outcome.sent) == frames and outcome.received == outcome.sent, "every frame echoed, in order"
    assert outcome.close_code == 1000 and outcome.closed_by_server
    assert request(daemon.port, "GET", "/healthz")[0] == 200
    return outcome


def signed_stream(daemon: Daemon, start_call=True, call_sid="CA" + "7" * 32, params=None, **kwargs) -> hostile.RawStream:
    stream = hostile.RawStream(daemon.port, headers={"X-Twilio-Signature": SIGNER.sign(STREAM_URL)}, **kwargs)
    assert stream.status == 101, stream.response
    stream.text(m.twilio_connected())
    if start_call:
        stream.text(m.twilio_start(SID, call_sid, ACC, params))
    return stream


def raw_post(path: str, body: bytes, headers: dict) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: voice.example.test\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


# Webhook signatures.

WEBHOOK_URL = f"{PUBLIC}/voice?businessId=business-1"


def webhook_case(case: str):
    """(form, headers) for one kind of bad or good webhook."""
    form = call_form()
    good = SIGNER.sign(WEBHOOK_URL, form)
    if case == "unsigned":
        return form, {}
    if case == "forged":
        return form, {"X-Twilio-Signature": SignatureChecker("not-the-token").sign(WEBHOOK_URL, form)}
    if case == "tampered-parameter":
        return [(k, "+19005550000" if k == "To" else v) for k, v in form], {"X-Twilio-Signature": good}
    if case == "added-parameter":
        return form + [("Injected", "1")], {"X-Twilio-Signature": good}
    if case == "replayed-for-another-url":
        return form, {"X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice?businessId=business-2", form)}
    if case == "stream-signature-replayed":
        return form, {"X-Twilio-Signature": SIGNER.sign(STREAM_URL)}
    if case == "odd-bytes":
        return form, {"X-Twilio-Signature": "\xff\xfe\x80" + "A" * 4000}
    if case == "unsupported-algorithm":
        return form, {"X-Twilio-Signature": good, "X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_MD5"}
    raise ValueError(case)


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize(
    "case",
    [
        "unsigned",
        "forged",
        "tampered-parameter",
        "added-parameter",
        "replayed-for-another-url",
        "stream-signature-replayed",
        "odd-bytes",
        "unsupported-algorithm",
    ],
)
def test_bad_webhook_signatures_get_403(daemon, case):
    log = daemon.since()
    form, headers = webhook_case(case)
    body = urlencode(form).encode()
    headers = {**headers, "Content-Type": "application/x-www-form-urlencoded", "Content-Length": len(body)}
    answer = hostile.exchange(daemon.port, raw_post("/voice?businessId=business-1", body, headers))
    assert hostile.status_of(answer) == 403, answer[:300]
    assert b"<Response>" not in answer
    refused = log.wait("webhook.refused")
    assert refused["reason"] == ("signature-missing" if case == "unsigned" else "signature-invalid")
    assert WEBHOOK_URL in refused["message"]
    assert not log.named("webhook.answered")
    yield good_call(daemon)


def test_repeated_parameters_are_all_signed(daemon):
    form = call_form() + [("Digits", "1"), ("Digits", "2")]
    signature = SIGNER.sign(WEBHOOK_URL, form)
    assert post_form(daemon.port, "/voice?businessId=business-1", form, {"X-Twilio-Signature": signature})[0] == 200
    dropped = [p for p in form if p != ("Digits", "2")]
    assert post_form(daemon.port, "/voice?businessId=business-1", dropped, {"X-Twilio-Signature": signature})[0] == 403


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("case", ["unsigned", "forged", "other-url", "webhook-signature-replayed", "odd-bytes"])
def test_bad_handshake_signatures_get_403(daemon, case):
    log = daemon.since()
    signature = {
        "unsigned": None,
        "forged": SignatureChecker("not-the-token").sign(STREAM_URL),
        "other-url": SIGNER.sign("wss://voice.example.test/other-media"),
        "webhook-signature-replayed": SIGNER.sign(WEBHOOK_URL, call_form()),
        "odd-bytes": "\xff\x01" * 100,
    }[case]
    headers = {"X-Twilio-Signature": signature} if signature else {}
    with hostile.RawStream(daemon.port, headers=headers) as stream:
        assert stream.status == 403, stream.response
    refused = log.wait("handshake.refused")
    assert refused["reason"] == ("signature-missing" if case == "unsigned" else "signature-invalid")
    assert STREAM_URL in refused["message"]
    assert not log.named("handshake.accepted")
    yield good_call(daemon)


# Malformed and oversized HTTP.


def chunked(total: int) -> bytes:
    piece = b"a" * 1024
    return b"".join(b"400\r\n" + piece + b"\r\n" for _ in range(total // 1024)) + b"0\r\n\r\n"


HTTP_CASES = {
    # name: (raw request, status, diagnosis)
    "non-utf8-form": (
        raw_post(
            "/voice",
            b"From=\xff\xfe&To=%2B1",
            {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "15", "X-Twilio-Signature": "x"},
        ),
        415,
        b"bad-form",
    ),
    "too-many-form-fields": (
        raw_post(
            "/voice",
            b"&".join(b"f%d=" % i for i in range(600)),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Content-Length": str(len(b"&".join(b"f%d=" % i for i in range(600)))),
            },
        ),
        400,
        b"too-many-fields",
    ),
    "json-body": (
        raw_post("/voice", b'{"CallSid":"CA1"}', {"Content-Type": "application/json", "Content-Length": "17"}),
        415,
        b"bad-form",
    ),
    "body-over-limit-announced": (
        raw_post("/voice", b"", {"Content-Length": "10000000", "Expect": "100-continue"}),
        413,
        b"body-too-large",
    ),
    "body-over-limit-chunked": (
        raw_post("/voice", chunked(8192), {"Transfer-Encoding": "chunked", "Content-Type": "application/x-www-form-urlencoded"}),
        413,
        b"body-too-large",
    ),
    "huge-query-string": (
        b"GET /voice?" + b"x=1&" * 3000 + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        400,
        b"too-many-fields",
    ),
    "request-line-over-16k": (b"GET /voice?" + b"x" * 17000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, b"request-line-too-long"),
    "header-over-16k": (b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", 431, b"header-too-large"),
    "too-many-headers": (
        b"GET /healthz HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
        431,
        b"too-many-headers",
    ),
    "nul-in-header": (b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Twilio-Signature: a\x00b\r\n\r\n", 400, b"malformed-request"),
    "bad-content-length": (b"POST /voice HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\n", 400, b"malformed-request"),
    "garbage-request-line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", 400, b"malformed-request"),
    "post-to-the-stream": (
        b"POST /twilio-media HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        405,
        b"method-not-allowed",
    ),
    "bad-websocket-version": (
        b"GET /twilio-media HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n"
        b"X-Twilio-Signature: " + SIGNER.sign(STREAM_URL).encode() + b"\r\n\r\n",
        400,
        None,
    ),
}


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_malformed_http_gets_a_precise_answer(daemon, case):
    raw, status, diagnosis = HTTP_CASES[case]
    answer = hostile.exchange(daemon.port, raw)
    assert hostile.status_of(answer) == status, answer[:400]
    if diagnosis is not None:
        assert b"X-Voicebridge-Diagnosis: " + diagnosis in answer
        body = answer.split(b"\r\n\r\n", 1)[1]
        assert body.startswith(b"%d: " % status) and len(body) > 20, "the body says what was wrong"
    assert b"Traceback" not in answer and b"Processing Failed" not in answer
    yield good_call(daemon)


def test_an_announced_oversized_body_is_refused_before_it_is_sent(daemon):
    with hostile.connect(daemon.port) as sock:
        sock.sendall(raw_post("/voice", b"", {"Content-Length": "1000000000", "Expect": "100-continue"}))
        answer = hostile.read_response(sock, 3)
    assert hostile.status_of(answer) == 413 and b"100 Continue" not in answer


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("what", ["silent", "dribbled-headers", "dribbled-upgrade", "dribbled-body"])
def test_slow_clients_are_cut_off_after_the_handshake_timeout(daemon, what):
    """Slowloris: a connection that never completes its request holds nothing for long (--handshake-timeout 1.5)."""
    log = daemon.since()
    prefix = {
        "silent": b"",
        "dribbled-headers": b"POST /voice HTTP/1.1\r\nHost: voice.example.test\r\n",
        "dribbled-upgrade": b"GET /twilio-media HTTP/1.1\r\nHost: voice.example.test\r\nUpgrade: websocket\r\n",
        "dribbled-body": b"POST /voice HTTP/1.1\r\nHost: h\r\nContent-Length: 500\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\nFrom=",
    }[what]
    dribbled = 0  # bytes the client sent before the answer: each would keep an idle timer fed
    with hostile.connect(daemon.port) as sock:
        sock.sendall(prefix)
        sock.settimeout(0.2)
        answer = b""
        for _ in range(25):  # 5 s at most; the daemon's deadline is 1.5 s
            try:
                if what != "silent":
                    sock.sendall(b"X")
                    dribbled += 1
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                continue
            except OSError:
                break
    assert hostile.status_of(answer) == 408, answer
    assert log.wait("http.refused", reason="request-timeout")["status"] == 408, "the deadline, not an error, ended it"
    if what != "silent":
        assert dribbled > 1, "the client was still sending: the deadline is for the whole request, not for silence"
    yield good_call(daemon)


def test_a_kept_alive_connection_idle_after_a_request_is_closed_after_the_handshake_timeout(daemon):
    """It was held 60 s (twisted.web's idle limit), whatever --handshake-timeout said (1.5 s here)."""
    with hostile.connect(daemon.port, timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: voice.example.test\r\n\r\n")
        assert hostile.status_of(hostile.read_head(sock)) == 200
        sock.settimeout(20)
        rest = b""
        try:
            while chunk := sock.recv(4096):
                rest += chunk
        except TimeoutError:
            raise AssertionError("still open 20 s later: held to twisted.web's 60 s, not --handshake-timeout") from None
        except ConnectionResetError:
            pass
    assert b"408" not in rest.split(b"\r\n\r\n", 1)[-1][:20], "an idle connection is closed, not answered"


# Frames.

FRAME_CASES = {
    # name: (what to send after start, close code, protocol-error reason)
    "binary-frame": (lambda s: s.send(hostile.BINARY, b"\x00\x01" * 80), 1003, "binary-frame"),
    "message-over-64k": (lambda s: s.text(b"x" * 70000), 1009, "message-too-big"),
    "fragments-over-64k": (
        lambda s: (s.send(hostile.TEXT, b"a" * 40000, fin=False), s.send(0x0, b"a" * 40000)),
        1009,
        "message-too-big",
    ),
    "invalid-utf8": (lambda s: s.text(b'{"event":"media","x":"\xff\xfe"}'), 1007, "invalid-utf8"),
    "unmasked-frame": (lambda s: s.send(hostile.TEXT, b"{}", mask=False), 1002, "websocket-protocol"),
    "reserved-opcode": (lambda s: s.send(0x3, b"?"), 1002, "websocket-protocol"),
}


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("case", sorted(FRAME_CASES))
def test_frames_that_break_websocket_close_with_their_code(daemon, case):
    send, code, reason = FRAME_CASES[case]
    log = daemon.since()
    call_sid = "CA" + case.replace("-", "").ljust(32, "0")[:32]
    with signed_stream(daemon, call_sid=call_sid) as stream:
        send(stream)
        closed_with, why, _ = stream.until_close(5)
    assert closed_with == code, why
    error = log.wait("call.protocol_error", callSid=call_sid)
    assert error["reason"] == reason
    ended = log.wait("call.ended", callSid=call_sid)
    assert ended["close_code"] == code and ended["reason"] == reason and ended["error_summary"] == {reason: 1}
    yield good_call(daemon)


JUNK_CASES = {
    # name: (frame, sent before start?)
    "invalid-json": (b"{not json", False),
    "non-object-json": (b'["media"]', False),
    "no-event": (b'{"streamSid":"MZ1"}', False),
    "media-before-start": (m.twilio_media(SID, b"\x01" * 160, 1, 0, 1), True),
    "foreign-stream-sid": (m.twilio_media("MZ" + "f" * 32, b"\x01" * 160, 1, 0, 1), False),
    "bad-base64": (b'{"event":"media","streamSid":"%s","media":{"payload":"not base64!"}}' % SID.encode(), False),
    "unknown-event": (b'{"event":"transcription","streamSid":"%s","text":"hi"}' % SID.encode(), False),
    # About 2 KB nested 1000 deep, in each field Twilio sends and in one it does not: a RecursionError
    # before (an "Unhandled Error" traceback, the connection aborted, nothing counted).
    "too-deep-custom-parameters": (
        b'{"event":"start","streamSid":"%s","start":{"callSid":"CA1","customParameters":{"a":%s}}}'
        % (SID.encode(), b"[" * 1000 + b"]" * 1000),
        False,
    ),
    "too-deep-connected-protocol": (b'{"event":"connected","protocol":%s}' % (b"[" * 1000 + b"]" * 1000), False),
    "too-deep-media-track": (
        b'{"event":"media","streamSid":"%s","media":{"track":%s,"payload":"AAAA"}}' % (SID.encode(), b"[" * 1000 + b"]" * 1000),
        False,
    ),
    "too-deep-dtmf-track": (
        b'{"event":"dtmf","streamSid":"%s","dtmf":{"digit":"1","track":%s}}' % (SID.encode(), b"[" * 1000 + b"]" * 1000),
        False,
    ),
    "too-deep-media-format": (
        b'{"event":"start","streamSid":"%s","start":{"callSid":"CA1","mediaFormat":%s}}'
        % (SID.encode(), b'{"a":' * 960 + b"1" + b"}" * 960),
        False,
    ),
    "too-deep-unknown-field": (
        b'{"event":"transcription","streamSid":"%s","x":%s}' % (SID.encode(), b"[" * 1000 + b"]" * 1000),
        False,
    ),
    # 4,000 parameters fit in 64 KiB: a 176 KB call.started line before.
    "too-many-parameters": (m.twilio_start(SID, "CA" + "8" * 32, ACC, {f"p{i}": "v" for i in range(4000)}), True),
}
REASONS = {"non-object-json": "not-object", "no-event": "missing-event", "too-many-parameters": "too-many-parameters"}
REASONS.update({case: "too-deep" for case in JUNK_CASES if case.startswith("too-deep")})


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("case", sorted(JUNK_CASES))
def test_junk_frames_are_counted_logged_once_and_the_call_goes_on(daemon, case):
    junk, before_start = JUNK_CASES[case]
    reason = REASONS.get(case, case)
    log = daemon.since()
    call_sid = "CA" + case.replace("-", "").ljust(32, "1")[:32]
    with signed_stream(daemon, start_call=False) as stream:
        if before_start:
            for _ in range(5):
                stream.text(junk)
        stream.text(m.twilio_start(SID, call_sid, ACC))
        if not before_start:
            for _ in range(5):
                stream.text(junk)
        stream.text(m.twilio_media(SID, b"\x42" * 160, 1, 0, 9))
        opcode, echo = stream.next_message()
        assert opcode == hostile.TEXT and m.parse_outbound(echo).payload == b"\x42" * 160, "the call still works"
        stream.text(m.twilio_stop(SID, call_sid, ACC, 10))
        code, _, _ = stream.until_close(5)
    assert code == 1000
    ended = log.wait("call.ended", callSid=call_sid) if not before_start else log.wait("call.ended", callSid=call_sid)
    assert ended["error_summary"] == {reason: 5}, "every occurrence is counted"
    assert ended["frames_in"] == ended["frames_out"] == 1
    logged = [e for e in log.named("call.protocol_error") if e["reason"] == reason]
    assert len(logged) == 1, "logged once per call and reason"
    assert log.named("call.started", callSid=call_sid), "the call's start line is there"
    assert max(map(len, daemon.lines[log.start :])) < 8192, "every line it cost is short"
    assert "Unhandled Error" not in "\n".join(daemon.lines[log.start :])
    yield good_call(daemon)


# Timeouts.


@pytest_twisted.inlineCallbacks
def test_no_start_closes_the_stream_after_the_start_timeout(daemon):
    log = daemon.since()
    with signed_stream(daemon, start_call=False) as stream:
        code, why, _ = stream.until_close(5)
    assert code == 1008 and why.startswith("start-timeout"), why
    timeout = log.wait("call.timeout")
    assert timeout["reason"] == "start-timeout" and timeout["conn"] > 0
    assert "no start within 1s" in timeout["detail"]
    ended = log.wait("call.ended", reason="start-timeout", conn=timeout["conn"])
    assert ended["close_code"] == 1008
    conn = [e.get("event_name") for e in log.named("handshake.accepted", conn=timeout["conn"]) + [timeout, ended]]
    assert conn == ["handshake.accepted", "call.timeout", "call.ended"], "opened, then nothing until the timeout"
    yield good_call(daemon)


@pytest_twisted.inlineCallbacks
def test_no_media_closes_the_call_after_the_idle_timeout(daemon):
    log = daemon.since()
    call_sid = "CA" + "1d1e" * 8
    with signed_stream(daemon, call_sid=call_sid) as stream:
        code, why, _ = stream.until_close(5)  # answers pings, sends no media
    assert code == 1008 and why.startswith("idle-timeout"), why
    timeout = log.wait("call.timeout", callSid=call_sid)
    assert timeout["reason"] == "idle-timeout" and "--idle-timeout 3" in timeout["detail"]
    assert log.wait("call.ended", callSid=call_sid)["reason"] == "idle-timeout"
    assert not log.named("call.protocol_error", callSid=call_sid), "the peer kept the connection healthy: only silence"
    yield good_call(daemon)


@pytest_twisted.inlineCallbacks
def test_a_call_ends_at_the_maximum_duration(start_daemon):
    from twisted.internet import reactor

    d = start_daemon("--public-url", PUBLIC, "--max-duration", "1.5", env={"TWILIO_AUTH_TOKEN": TOKEN})
    log = d.since()
    script = CallScript(frames=150)  # 3 s of media against --max-duration 1.5
    outcome = yield play_call(reactor, d.url("/twilio-media", "ws"), script, signature=SIGNER.sign(STREAM_URL)).addTimeout(
        15, reactor
    )
    assert outcome.close_code == 1008 and outcome.close_reason.startswith("max-duration")
    assert len(outcome.sent) < 150, "the call was ended before Twilio's side was done"
    assert outcome.received and outcome.received == outcome.sent[: len(outcome.received)], "echoed until then"
    ended = log.wait("call.ended", callSid=script.call_sid)
    assert ended["reason"] == "max-duration" and ended["frames_in"] > 0
    assert not log.named("call.timeout", callSid=script.call_sid, reason="idle-timeout")
    yield good_call(d)


@pytest_twisted.inlineCallbacks
def test_a_dead_peer_is_noticed_by_websocket_pings(daemon):
    """It completed the handshake and start, then went silent and answers no ping (--ping-interval 1, --ping-timeout 1)."""
    log = daemon.since()
    call_sid = "CA" + "dead" * 8
    with signed_stream(daemon, call_sid=call_sid) as stream:
        assert stream.is_closed_by_server(5)
    ended = log.wait("call.ended", callSid=call_sid)
    assert "ping timeout" in ended["close_reason"] and ended["reason"] == "closed", "the ping, not the idle timeout (3 s)"
    yield good_call(daemon)


def never_read(daemon: Daemon, call_sid: str, tls=None) -> int:
    """Send media as fast as possible and read nothing, until the daemon gives up on this peer; returns frames sent."""
    log = daemon.since()
    audio = b"\x55" * 6000
    sent = 0
    with signed_stream(daemon, call_sid=call_sid, rcvbuf=4096, tls=tls) as stream:
        stream.sock.settimeout(10)
        try:
            for i in range(3000):  # ~24 MB of echo at most; the kernel's buffers hold a few MB
                stream.text(m.twilio_media(SID, audio, i + 1, i * 20, i + 2))
                sent += 1
                if i % 50 == 0 and log.named("call.slow_reader"):
                    break
        except OSError:
            pass
    slow = log.wait("call.slow_reader", callSid=call_sid, timeout=10)
    assert slow["reason"] == "slow-reader" and "--max-send-buffer" in slow["detail"]
    ended = log.wait("call.ended", callSid=call_sid, timeout=10)
    assert ended["reason"] == "slow-reader" and ended["frames_in"] <= sent
    return sent


@pytest_twisted.inlineCallbacks
def test_a_peer_that_never_reads_is_cut_off(daemon):
    """The echo piles up in the daemon until --max-send-buffer (64 KiB here), then the call ends."""
    never_read(daemon, "CA" + "5105" * 8)
    yield good_call(daemon)


@pytest_twisted.inlineCallbacks
def test_over_tls_too(start_daemon, pki):
    """The send-buffer watch sits on the TLS layer when voicebridge terminates TLS itself."""
    import ssl

    from twisted.internet import reactor

    leaf = pki.leaf()
    listen = f"ssl:0:interface=127.0.0.1:privateKey={leaf.key}:certKey={leaf.cert}:extraCertChain={leaf.chain}"
    d = start_daemon(*HOSTILE_ARGS, "--listen", listen, env={"TWILIO_AUTH_TOKEN": TOKEN})
    never_read(d, "CA" + "7150" * 8, tls=ssl.create_default_context(cafile=str(pki.root_pem)))
    outcome = yield play_call(
        reactor,
        STREAM_URL,
        CallScript(frames=20, linger=0.2),
        signature=SIGNER.sign(STREAM_URL),
        trust_root=trust_root(pki),
        connect_to=("127.0.0.1", d.port),
    ).addTimeout(15, reactor)
    assert outcome.received == outcome.sent and len(outcome.sent) == 20 and outcome.close_code == 1000


# Proxies and Host headers.


@pytest.fixture(scope="module")
def behind_proxy():
    """No --public-url: the URL comes from Host, and X-Forwarded-* from 127.0.0.1 is believed."""
    d = start("--trusted-proxy", "127.0.0.1", env={"TWILIO_AUTH_TOKEN": TOKEN})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def untrusting():
    """The same, but only 10.0.0.0/8 is a proxy: the test client's X-Forwarded-* are ignored."""
    d = start("--trusted-proxy", "10.0.0.0/8", env={"TWILIO_AUTH_TOKEN": TOKEN})
    yield d
    d.stop()


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "voice.example.test", "X-Forwarded-For": "203.0.113.7"}


@pytest_twisted.inlineCallbacks
def test_forwarded_headers_count_from_a_trusted_proxy(behind_proxy):
    form = call_form()
    headers = {**FORWARDED, "X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice", form)}
    status, _, body = post_form(behind_proxy.port, "/voice", form, headers)
    assert status == 200, body
    assert ET.fromstring(body).find("./Connect/Stream").get("url") == STREAM_URL
    answered = behind_proxy.wait_for(lambda e: e.get("event_name") == "webhook.answered")
    assert answered["client"] == "203.0.113.7"
    status, _, _ = upgrade_request(behind_proxy.port, headers={**FORWARDED, "X-Twilio-Signature": SIGNER.sign(STREAM_URL)})
    assert status == 101
    from twisted.internet import reactor

    outcome = yield play_call(
        reactor,
        behind_proxy.url("/twilio-media", "ws"),
        CallScript(frames=5, linger=0.2),
        signature=SIGNER.sign(STREAM_URL),
        headers=FORWARDED,
    )
    assert outcome.received == outcome.sent and len(outcome.sent) == 5


def test_forwarded_headers_from_anyone_else_are_ignored(untrusting):
    log = untrusting.since()
    form = call_form()
    headers = {**FORWARDED, "X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice", form)}
    status, _, _ = post_form(untrusting.port, "/voice", form, headers)
    assert status == 403
    refused = log.wait("webhook.refused")
    assert f"http://127.0.0.1:{untrusting.port}/voice" in refused["message"], "checked against what the daemon saw"
    assert refused["client"] == "127.0.0.1", "X-Forwarded-For from an untrusted peer is not the client"
    status, _, _ = upgrade_request(untrusting.port, headers={**FORWARDED, "X-Twilio-Signature": SIGNER.sign(STREAM_URL)})
    assert status == 403
    # Signed for the URL the daemon really serves, the same request passes.
    own = f"http://127.0.0.1:{untrusting.port}/voice"
    assert post_form(untrusting.port, "/voice", form, {**FORWARDED, "X-Twilio-Signature": SIGNER.sign(own, form)})[0] == 200


@pytest.mark.parametrize(
    "host, status",
    [("voice.example.test:99999", 400), ("a b", 400), ("\xff\xfe", 400), ("[::1", 400), ("evil.example/x", 400), ("", 400)],
)
def test_garbage_host_headers_get_400_not_500(behind_proxy, host, status):
    for path, extra in [("/voice", {}), ("/twilio-media", {"Upgrade": "websocket", "Connection": "Upgrade"})]:
        raw = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-Twilio-Signature: x\r\n"
        raw += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        answer = hostile.exchange(behind_proxy.port, raw.encode("latin-1") + b"\r\n")
        assert hostile.status_of(answer) == status, answer[:300]
        assert b"bad-host" in answer or b"malformed-request" in answer
    assert request(behind_proxy.port, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize(
    "public, signed", [("https://voice.example.test:443", PUBLIC), (PUBLIC, "https://voice.example.test:443")]
)
def test_https_port_dropping_as_twilio_signs(start_daemon, public, signed):
    d = start_daemon("--public-url", public, env={"TWILIO_AUTH_TOKEN": TOKEN})
    form = call_form()
    assert post_form(d.port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(f"{signed}/voice", form)})[0] == 200
    stream = signed.replace("https://", "wss://") + "/twilio-media"
    assert upgrade_request(d.port, headers={"X-Twilio-Signature": SIGNER.sign(stream)})[0] == 101
    assert upgrade_request(d.port, headers={"X-Twilio-Signature": SIGNER.sign(stream + "/")})[0] == 101


def test_development_mode_behind_a_local_proxy_serves_only_local_clients(start_daemon):
    d = start_daemon("--trusted-proxy", "127.0.0.1")  # no token
    assert post_form(d.port, "/voice", call_form(), {"X-Forwarded-For": "127.0.0.1"})[0] == 200
    status, headers, _ = post_form(d.port, "/voice", call_form(), {"X-Forwarded-For": "198.51.100.4"})
    assert status == 403 and headers["x-voicebridge-diagnosis"] == "development-mode"
    status, headers, _ = upgrade_request(d.port, headers={"X-Forwarded-For": "198.51.100.4"})
    assert status == 403 and headers["x-voicebridge-diagnosis"] == "development-mode"


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_signed_calls_pass_through_a_real_nginx(start_daemon, start_nginx):
    """nginx terminates nothing here, but says what Twilio used (https, the public host) in X-Forwarded-*."""
    from twisted.internet import reactor

    d = start_daemon("--trusted-proxy", "127.0.0.1", env={"TWILIO_AUTH_TOKEN": TOKEN})
    port = free_port()
    start_nginx(
        f"""
map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{d.port};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-Host voice.example.test;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_read_timeout 3600s;
    }}
}}""",
        [port],
    )
    form = call_form()
    status, _, body = post_form(port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice", form)})
    assert status == 200, body
    forged = post_form(port, "/voice", form, {"X-Twilio-Signature": SignatureChecker("x").sign(f"{PUBLIC}/voice", form)})
    assert forged[0] == 403
    outcome = yield play_call(
        reactor, f"ws://127.0.0.1:{port}/twilio-media", CallScript(frames=10, linger=0.2), signature=SIGNER.sign(STREAM_URL)
    ).addTimeout(15, reactor)
    assert outcome.received == outcome.sent and len(outcome.sent) == 10


# Limits.

LIMITS_CONFIG = """
[tenants.small]
numbers = ["+15550100001"]
max_calls = 1

[tenants.big]
numbers = ["+15550100002"]
"""


@pytest.fixture
def limited(start_daemon, tmp_path):
    config = tmp_path / "limits.toml"
    config.write_text(LIMITS_CONFIG)
    return start_daemon("--public-url", PUBLIC, "--max-calls", "2", "-c", str(config), env={"TWILIO_AUTH_TOKEN": TOKEN})


def webhook(d, call_sid, to):
    form = call_form(call_sid=call_sid, to=to)
    status, _, body = post_form(d.port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice", form)})
    assert status == 200, body
    return ET.fromstring(body)


def is_busy(twiml) -> bool:
    reject = twiml.find("./Reject")
    return reject is not None and reject.get("reason") == "busy" and twiml.find("./Connect") is None


def test_webhooks_over_a_limit_are_answered_busy(limited):
    log = limited.since()
    assert not is_busy(webhook(limited, "CA1", "+15550100001"))
    assert is_busy(webhook(limited, "CA2", "+15550100001")), "tenant small allows one call"
    assert not is_busy(webhook(limited, "CA3", "+15550100002"))
    assert is_busy(webhook(limited, "CA4", "+15550100002")), "the daemon allows two"
    assert not is_busy(webhook(limited, "CA1", "+15550100001")), "Twilio asking again for a call it was given"
    busy = log.named("webhook.busy")
    assert [e["callSid"] for e in busy] == ["CA2", "CA4"]
    assert "tenant small" in busy[0]["message"] and "--max-calls" in busy[1]["message"]


@pytest_twisted.inlineCallbacks
def test_handshakes_over_the_limit_get_503_and_starts_over_a_tenant_limit_are_closed(limited):
    log = limited.since()
    first = signed_stream(limited, call_sid="CA" + "a" * 32, params={"to": "+15550100001"})  # tenant small
    second = signed_stream(limited, start_call=False)
    try:
        refused = hostile.RawStream(limited.port, headers={"X-Twilio-Signature": SIGNER.sign(STREAM_URL)})
        assert refused.status == 503, refused.response
        assert b"--max-calls" in refused.rest()
        refused.sock.close()
        assert log.wait("handshake.refused", reason="over-capacity")["status"] == 503
        # The second stream names tenant small, which already has its one call.
        second.text(m.twilio_start(SID, "CA" + "b" * 32, ACC, {"to": "+15550100001"}))
        code, why, _ = second.until_close(5)
        assert code == 1008 and why.startswith("tenant-limit")
        over = log.wait("call.over_limit")
        assert over["callSid"] == "CA" + "b" * 32 and "tenant small" in over["detail"]
    finally:
        second.sock.close()
    # A slot is free again: a good call gets through while the first is still up.
    first.text(m.twilio_media(SID, b"\x01" * 160, 1, 0, 3))
    assert first.next_message()[0] == hostile.TEXT
    yield good_call(limited)
    first.sock.close()


# Secrets and privacy.


def test_the_token_and_the_numbers_stay_out_of_the_log(start_daemon):
    d = start_daemon("--public-url", PUBLIC, env={"TWILIO_AUTH_TOKEN": TOKEN})
    number = "+15557654321"
    fields = {"From": number, "To": "+15550100001", "CallSid": "CA9", "ForwardedFrom": "+15551230001"}
    path = "/voice?" + urlencode({**fields, "CalledVia": "+15551230002", "Caller": number, "Called": "+15550100001"})
    assert request(d.port, "GET", path, headers={"X-Twilio-Signature": SIGNER.sign(PUBLIC + path)})[0] == 200
    assert request(d.port, "GET", path, headers={"X-Twilio-Signature": "forged"})[0] == 403
    post_form(d.port, "/voice", call_form(from_=number), {"X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice", call_form())})
    hostile.exchange(d.port, b"GET /voice?From=" + number.encode() + b"&" + b"x" * 17000 + b" HTTP/1.1\r\n\r\n")
    upgrade_request(d.port, "/twilio-media?to=%2B15557654321")  # a stream url with a query (not Twilio's)
    upgrade_request(d.port, "/twilio-media?to=%2B15557654321", {"X-Twilio-Signature": SIGNER.sign(STREAM_URL + "?x=1")})
    d.wait_for(lambda e: e.get("event_name") == "http.refused")
    forged = d.wait_for(lambda e: e.get("event_name") == "handshake.refused" and e.get("reason") == "signature-invalid")
    assert "twilio-media?to=+1555*****21" in forged["message"], "the candidate URLs are shown, numbers masked"
    access = [e for e in d.named("http.access") if e["uri"].startswith("/voice?")]
    assert access and all("*****" in e["uri"] for e in access), "the access log masks numbers in the query"
    for shown in (number, "+15551230001", "+15551230002", "+15550100001"):
        assert shown not in d.output and shown.replace("+", "%2B") not in d.output, shown
        assert shown[1:] not in d.output, shown
    assert TOKEN not in d.output
    shown = start_daemon("--public-url", PUBLIC, "--show-numbers", env={"TWILIO_AUTH_TOKEN": TOKEN})
    request(shown.port, "GET", path, headers={"X-Twilio-Signature": SIGNER.sign(PUBLIC + path)})
    shown.wait_for(lambda e: e.get("event_name") == "http.access" and e.get("uri", "").startswith("/voice?"))
    assert number.replace("+", "%2B") in shown.output, "--show-numbers shows them"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--start-timeout", "0"], "--start-timeout must be at least"),
        (["--max-calls", "-1"], "--max-calls must be at least 0"),
        (["--idle-timeout", "nan"], "--idle-timeout must be at least"),
        (["--max-body-size", "10"], "--max-body-size must be at least 1024"),
    ],
)
def test_bad_limit_options_fail_start_up_with_the_flag_named(args, expected):
    from tests.daemon import usage_error

    assert expected in usage_error(args)



def test_a_deep_media_format_under_record_costs_no_sidecar_and_a_wav_always_has_one(start_daemon, tmp_path):
    """Depth 960 wrote a 1.85 MB sidecar from a 2 KB message; depth 1015 left a WAV without one (record.failed)."""
    d = start_daemon("--handler", "record", "--record-dir", str(tmp_path), "--record-handler", "echo")
    for depth in (960, 1015):
        call_sid = "CA" + str(depth).ljust(32, "0")
        deep = b'{"event":"start","streamSid":"%s","start":{"callSid":"%s","mediaFormat":%s}}' % (
            SID.encode(),
            call_sid.encode(),
            b'{"a":' * depth + b"1" + b"}" * depth,
        )
        with hostile.RawStream(d.port) as stream:
            assert stream.status == 101
            stream.text(m.twilio_connected())
            stream.text(deep)
            stream.text(m.twilio_start(SID, call_sid, ACC, {f"p{i}": "v" * 499 for i in range(20)}))
            stream.text(m.twilio_media(SID, b"\x42" * 160, 1, 0, 3))
            assert m.parse_outbound(stream.next_message()[1]).payload == b"\x42" * 160
            stream.text(m.twilio_stop(SID, call_sid, ACC, 4))
            assert stream.until_close(5)[0] == 1000
        saved = d.wait_for(lambda e, sid=call_sid: e.get("event_name") == "record.saved" and e.get("callSid") == sid)
        assert d.named("call.protocol_error", reason="too-deep"), "the deep start was refused, precisely"
        sidecar = tmp_path / saved["sidecar"].rsplit("/", 1)[-1]
        assert sidecar.stat().st_size < 64 * 1024, "about the size of what the peer sent, not its square"
    assert not d.named("record.failed")
    wavs, sidecars = sorted(p.stem for p in tmp_path.glob("*.wav")), sorted(p.stem for p in tmp_path.glob("*.json"))
    assert wavs == sidecars and len(wavs) == 2
