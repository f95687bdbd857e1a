"""The probe's per-line verdicts, without processes (voicebridge/tools/probe/judge.py)."""

from __future__ import annotations

from voicebridge.tools.diagnosis import FAIL, OK, SKIP, STREAM, WARN, WEBHOOK, read_twiml
from voicebridge.tools.probe import judge

TWIML = (
    b'<Response><Connect><Stream url="wss://h.example/twilio-media"><Parameter name="a" value="1"/></Stream></Connect></Response>'
)


def test_urls():
    ok = judge.judge_url("wss://h.example/twilio-media", STREAM, local=False)
    assert ok.status == OK and ok.summary == "wss://, no query string, port 443, host h.example"
    local = judge.judge_url("ws://127.0.0.1:8080/twilio-media", STREAM, local=True)
    assert local.status == WARN and local.warnings and local.data["problems"]
    bad = judge.judge_url("wss://h.example/twilio-media?x=1", STREAM, local=False)
    assert bad.status == FAIL and "31920" in bad.summary
    assert judge.judge_url("http://h.example/voice", WEBHOOK, local=False).status == WARN


def test_twiml_and_what_to_expect():
    verdict, expect = judge.judge_twiml(read_twiml("text/xml", TWIML), "echo")
    assert verdict.status == OK and expect == "echo" and "a" in verdict.summary
    one_way = TWIML.replace(b"Connect", b"Start")
    verdict, expect = judge.judge_twiml(read_twiml("text/xml", one_way), "echo")
    assert verdict.status == WARN and expect == "none"
    verdict, _ = judge.judge_twiml(read_twiml("application/json", b"{}"), "media")
    assert verdict.status == FAIL


def media(**kw):
    data = {"sent": 10, "received": 10, "echoed": 10, "expect": "echo", "closed_early": False, "close_code": 1000}
    data.update(open_seconds=1.0, **kw)
    return data


def test_media():
    assert judge.judge_media(media(), [], []).status == OK
    assert judge.judge_media(media(echoed=9), [], []).status == FAIL
    assert judge.judge_media(media(expect="media", received=0, echoed=0), [], []).status == FAIL
    assert judge.judge_media(media(expect="none", received=0, echoed=0), [], []).status == OK
    early = judge.judge_media(media(closed_early=True, close_code=1011), [], [])
    assert early.status == FAIL and "closed the stream after 1.0 s (code 1011)" in early.summary
    foreign = judge.judge_media(media(), ["hello"], [])
    assert foreign.status == WARN and "31951" in foreign.warnings[0]


def test_stop():
    assert judge.judge_stop(False, True, 1000).status == SKIP
    assert "the app closed" in judge.judge_stop(True, True, 1000).summary
    assert "Twilio's side closed" in judge.judge_stop(True, False, 1000).summary


def test_tls_rules():
    assert judge.tls_failure_status("untrusted", local=True) == WARN
    assert judge.tls_failure_status("no-tls", local=True) == FAIL
    assert judge.tls_failure_status("expired", local=False) == FAIL
    assert judge.tls_warnings("/ca.pem", verified_by_cafile=True)[0].startswith("the chain verifies only against --cafile")
    assert judge.tls_warnings("/ca.pem", verified_by_cafile=False) == []
    assert judge.tls_warnings(None, verified_by_cafile=True) == []


def test_plain_http_answers():
    assert judge.plain_http_answer(b"HTTP/1.1 200 OK\r\nServer: voicebridge\r\n\r\n") == "HTTP/1.1 200 OK"
    nginx = b"HTTP/1.1 400 Bad Request\r\n\r\n<html>The plain HTTP request was sent to HTTPS port</html>"
    assert judge.plain_http_answer(nginx) is None
    assert judge.plain_http_answer(b"HTTP/1.1 497 \r\n\r\n") is None
    assert judge.plain_http_answer(b"\x15\x03\x03\x00\x02\x02\x46") is None  # a TLS alert
    assert judge.plain_http_answer(b"") is None
    go = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    assert judge.plain_http_answer(go) is None
    assert judge.conclusive_while_waiting("HTTP/1.1 200 OK") and judge.conclusive_while_waiting("HTTP/1.1 404 Not Found")
    assert not judge.conclusive_while_waiting("HTTP/1.1 400 Bad Request")


def test_what_voicebridge_answers_names():
    body = b"403: X-Twilio-Signature does not match url http://h.example/voice with 9 form parameters; is ..."
    assert judge.checked_url(body) == "http://h.example/voice"
    assert judge.checked_url(b"Forbidden") is None
    upgrade = b"...\n    proxy_pass http://127.0.0.1:8080;   # this daemon, as the proxy reached it\n"
    assert judge.upstream_of(upgrade) == "http://127.0.0.1:8080"
    assert judge.upstream_of(b"proxy_pass http://x;") is None


def test_resolve_warnings():
    assert judge.resolve_warnings("h", ["10.0.0.1"], routed=False, local=False)
    assert judge.resolve_warnings("h", ["10.0.0.1"], routed=True, local=False) == []
    assert judge.resolve_warnings("h", ["93.184.216.34", "10.0.0.1"], routed=False, local=False) == []
