"""The probe's reasoning, without a network: TwiML, urls, handshakes, TLS findings and the one diagnosis."""

from __future__ import annotations

import datetime

import pytest

from tests.daemon import REPO
from voicebridge.tls import inspect as tlscheck
from voicebridge.tools import diagnosis as dx
from voicebridge.tools.diagnosis import FAIL, OK, SKIP, WARN, HTTPAnswer, Step
from voicebridge.tools.probe import ConnectTo, UsageError, parse_connect_to, sibling_path

# TwiML, read as Twilio reads it.


@pytest.mark.parametrize(
    "content_type, body, problem, verb",
    [
        (
            "text/xml",
            b'<Response><Connect><Stream url="wss://h/m"><Parameter name="a" value="1"/></Stream></Connect></Response>',
            None,
            "Connect",
        ),
        (
            "application/xml; charset=utf-8",
            b'<Response><Say>hi</Say><Connect><Stream url="wss://h/m"/></Connect></Response>',
            None,
            "Connect",
        ),
        ("text/xml", b'<Response><Start><Stream url="wss://h/m"/></Start><Say>hi</Say></Response>', None, "Start"),
        ("text/xml", b"<Response><Say>closed</Say></Response>", "no-stream-in-twiml", None),
        ("text/xml", b"<Response><Reject/><Connect><Stream url='wss://h/m'/></Connect></Response>", "no-stream-in-twiml", None),
        ("text/xml", b"<Response><Connect><Room>r</Room></Connect></Response>", "no-stream-in-twiml", None),
        ("text/xml", b"<Response><Connect><Stream/></Connect></Response>", "no-stream-in-twiml", "Connect"),
        ("text/xml", b"<Response><Redirect>/next</Redirect></Response>", "no-stream-in-twiml", None),
        ("text/plain", b"hello", "no-stream-in-twiml", None),
        ("audio/mpeg", b"ID3", "no-stream-in-twiml", None),
        ("application/json", b'{"ok": true}', "not-twiml", None),
        (None, b"<Response/>", "not-twiml", None),
        ("text/xml", b"<Response><Connect>", "not-twiml", None),
        ("text/xml", b"<response/>", "not-twiml", None),
    ],
)
def test_read_twiml(content_type, body, problem, verb):
    twiml = dx.read_twiml(content_type, body)
    assert (twiml.problem, twiml.verb) == (problem, verb), twiml.reason


def test_read_twiml_keeps_parameters_and_notes_one_way_streams():
    twiml = dx.read_twiml(
        "text/xml",
        b'<Response><Connect><Stream url="wss://h/m"><Parameter name="businessId" value="b1"/>'
        b'<Parameter name="plan" value="pro"/></Stream></Connect></Response>',
    )
    assert twiml.stream_url == "wss://h/m" and twiml.parameters == {"businessId": "b1", "plan": "pro"}
    one_way = dx.read_twiml("text/xml", b'<Response><Start><Stream url="wss://h/m"/></Start></Response>')
    assert any("one-way" in note for note in one_way.notes)


# Urls.


@pytest.mark.parametrize(
    "url, local, fatal, warnings",
    [
        ("wss://voice.example.com/twilio-media", False, [], []),
        ("wss://voice.example.com:443/twilio-media", False, [], []),
        ("wss://voice.example.com/twilio-media?businessId=b1", False, ["query"], []),
        ("wss://voice.example.com/twilio-media?businessId=b1", True, ["query"], []),
        ("wss://voice.example.com/m?", False, ["query"], []),
        ("ws://voice.example.com/twilio-media", False, ["scheme"], []),
        ("ws://127.0.0.1:8080/twilio-media", True, [], ["scheme", "host"]),
        ("https://voice.example.com/twilio-media", True, ["scheme"], []),
        ("/twilio-media", False, ["scheme"], []),
        ("wss://voice.example.com:8443/twilio-media", False, ["port"], []),
        ("wss://voice.example.com:8443/twilio-media", True, [], ["port"]),
        ("wss://app:8080/media", False, ["port", "host"], []),
        ("wss://10.0.0.5/media", False, ["host"], []),
        ("wss://[::1]/media", False, ["host"], []),
        ("wss://voice.localhost/media", False, ["host"], []),
        ("wss://printer.local/media", False, ["host"], []),
    ],
)
def test_stream_url_checks(url, local, fatal, warnings):
    problems = dx.check_url(url, dx.STREAM, local)
    assert sorted(p.kind for p in problems if p.fatal) == sorted(fatal)
    assert sorted(p.kind for p in problems if not p.fatal) == sorted(warnings)


def test_stream_url_codes_in_the_order_twilio_meets_them():
    def code(url):
        return dx.url_code(dx.check_url(url, dx.STREAM))

    assert code("ws://app:8080/m?x=1") == "stream-url-query-string"
    assert code("ws://app:8080/m") == "stream-url-not-wss"
    assert code("wss://app:8080/m") == "url-not-public"
    assert code("wss://voice.example.com:8443/m") == "stream-url-port"
    assert code("wss://voice.example.com/m") is None


def test_webhook_url_checks():
    assert [p.kind for p in dx.check_url("https://voice.example.com/voice", dx.WEBHOOK)] == []
    http = dx.check_url("http://voice.example.com/voice", dx.WEBHOOK)
    assert [(p.kind, p.fatal) for p in http] == [("scheme", False)], "Twilio accepts http webhooks: a warning"
    assert [(p.kind, p.fatal) for p in dx.check_url("http://127.0.0.1:8080/voice", dx.WEBHOOK, local=True)] == [("host", False)]
    assert [(p.kind, p.fatal) for p in dx.check_url("https://192.168.1.4/voice", dx.WEBHOOK)] == [("host", True)]


@pytest.mark.parametrize(
    "host, public",
    [
        ("voice.example.com", True),
        ("203.0.113.9", False),  # documentation range: reserved
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("localhost", False),
        ("172.16.0.3", False),
        ("169.254.1.1", False),
        ("::ffff:10.0.0.1", False),
        ("app", False),
        ("svc.internal", False),
    ],
)
def test_not_public(host, public):
    assert (dx.not_public(host) is None) == public


# The handshake: stripped upgrade, missing path, or refusal.

NF_JSON = b'{"message":"Route GET:%s not found","error":"Not Found","statusCode":404}'


def nf(path):
    return HTTPAnswer(404, {"content-type": "application/json"}, NF_JSON % path.encode())


P, S = "/media", "/media-voicebridge-probe-0a1b2c3d"


@pytest.mark.parametrize(
    "case, upgrade, plain, sibling_upgrade, sibling_plain, code, certain",
    [
        (
            "voicebridge names the missing upgrade",
            HTTPAnswer(426, {"x-voicebridge-diagnosis": "upgrade-missing"}),
            None,
            None,
            None,
            "upgrade-stripped",
            True,
        ),
        (
            "voicebridge names a rewritten Connection",
            HTTPAnswer(426, {"x-voicebridge-diagnosis": "connection-upgrade-missing"}),
            None,
            None,
            None,
            "upgrade-stripped",
            True,
        ),
        (
            "voicebridge 404",
            HTTPAnswer(404, {"x-voicebridge-diagnosis": "not-found"}),
            None,
            None,
            None,
            "stream-path-not-found",
            True,
        ),
        (
            "voicebridge refuses a signature",
            HTTPAnswer(403, {"x-voicebridge-diagnosis": "signature-invalid"}),
            None,
            None,
            None,
            "handshake-rejected",
            True,
        ),
        (
            "route answers plain GETs 426, upgrade got 426",
            HTTPAnswer(426),
            HTTPAnswer(426),
            nf(S),
            nf(S),
            "upgrade-stripped",
            True,
        ),
        (
            "route answers plain GETs 400, upgrade got 400",
            HTTPAnswer(400),
            HTTPAnswer(400, body=b"not a websocket"),
            nf(S),
            nf(S),
            "upgrade-stripped",
            True,
        ),
        (
            "route answers 200 page, upgrade got the page",
            HTTPAnswer(200),
            HTTPAnswer(200, body=b"<h1>ws</h1>"),
            nf(S),
            nf(S),
            "upgrade-stripped",
            True,
        ),
        ("everything 404s the same", nf(P), nf(P), nf(S), nf(S), "stream-path-not-found", False),
        (
            "404 while upgrades visibly reach the app elsewhere",
            nf(P),
            nf(P),
            HTTPAnswer(400, body=b"wrong path"),
            nf(S),
            "stream-path-not-found",
            True,
        ),
        ("ws server with another path option", HTTPAnswer(400), nf(P), HTTPAnswer(400), nf(S), "stream-path-not-found", True),
        ("route refuses the upgrade", HTTPAnswer(403), HTTPAnswer(426), nf(S), nf(S), "handshake-rejected", True),
        ("426 to a request that carried Upgrade", HTTPAnswer(426), None, None, None, "upgrade-stripped", True),
        (
            "426 asking for another WebSocket version",
            HTTPAnswer(426, {"sec-websocket-version": "8"}),
            HTTPAnswer(400),
            nf(S),
            nf(S),
            "handshake-rejected",
            True,
        ),
        ("no comparison possible, 404", HTTPAnswer(404), None, None, None, "stream-path-not-found", False),
        ("no answer at all", HTTPAnswer(None, error="connection closed"), None, None, None, "handshake-rejected", True),
        (
            "101 that is not a handshake",
            HTTPAnswer(101, error="Sec-WebSocket-Accept bogus"),
            None,
            None,
            None,
            "handshake-rejected",
            True,
        ),
    ],
)
def test_classify_handshake(case, upgrade, plain, sibling_upgrade, sibling_plain, code, certain):
    verdict = dx.classify_handshake(upgrade, plain, sibling_upgrade, sibling_plain, P, S)
    assert (verdict.code, verdict.certain) == (code, certain), f"{case}: {verdict.reason}"


def test_pages_differing_only_by_path_and_ids_compare_equal():
    a = HTTPAnswer(404, body=b"<p>No route /media (request 7f3a9c0e12, 2025-01-01 10:00:01)</p>")
    b = HTTPAnswer(404, body=b"<p>No route /media-voicebridge-probe-0a1b2c3d (request 99aa77bb66, 2025-01-01 10:00:02)</p>")
    assert dx.same_page(a, b, (P, S)) is True
    assert dx.same_page(a, HTTPAnswer(404, body=b"<h1>nginx</h1>"), (P, S)) is False


def test_sibling_path_stays_under_the_same_prefix():
    assert sibling_path("/twilio-media", "ab12") == "/twilio-media-voicebridge-probe-ab12"
    assert sibling_path("/ws/", "ab12") == "/ws/voicebridge-probe-ab12"


# TLS findings, from certificates made here.


def test_tls_classification_from_openssl_errors(pki):
    leaf = pki.leaf("good").certificate
    root, intermediate = pki.root.cert, pki.intermediate.cert
    other = pki.leaf("other", names=("other.example.test",)).certificate
    expired = pki.leaf("old", expired=True).certificate
    selfsigned = pki.self_signed().certificate
    host = "voice.example.test"
    E = tlscheck.VerifyError

    def problem(chain, errors, hostname=host):
        return tlscheck.classify(chain, errors, hostname).problem

    assert problem([leaf, intermediate], []) is None
    assert problem([leaf], [E(0, 20, leaf), E(0, 21, leaf)]) == "incomplete-chain"
    assert problem([leaf, intermediate], [E(1, 20, intermediate)]) == "untrusted"
    assert problem([leaf, intermediate, root], [E(2, 19, root)]) == "untrusted"
    assert problem([selfsigned], [E(0, 18, selfsigned)]) == "untrusted"
    assert problem([expired, intermediate], [E(0, 10, expired)]) == "expired"
    assert problem([other, intermediate], []) == "hostname-mismatch"
    assert problem([leaf, intermediate], [], hostname="127.0.0.1") is None, "IP addresses are checked as IPs"
    assert problem([], []) == "handshake-failed"
    # Several problems: the most useful fix first, the others listed.
    findings = tlscheck.classify([selfsigned], [E(0, 18, selfsigned)], "elsewhere.example.test")
    assert findings.problem == "hostname-mismatch" and len(findings.problems) == 2
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    assert tlscheck.classify([leaf, intermediate], [E(0, 10, leaf)], host, now=later).problem == "expired"


# The diagnosis.


def steps(*specs):
    return [Step(name, layer, status, data=data) for name, layer, status, data in specs]


def test_the_first_failing_layer_is_the_diagnosis():
    run = steps(
        ("url", "url", OK, {}),
        ("resolve", "resolve", OK, {}),
        ("connect", "connect", FAIL, {"error": "refused", "address": "127.0.0.1:443"}),
        ("tls", "tls", SKIP, {}),
    )
    diagnosis = dx.diagnose(run)
    assert (diagnosis.code, diagnosis.step, diagnosis.ok) == ("connection-refused", "connect", False)
    assert diagnosis.twilio_error.startswith("11205")
    stream = steps(("stream-connect", "connect", FAIL, {"error": "timeout", "role": "stream", "address": "h:443"}))
    assert dx.diagnose(stream).twilio_error.startswith("31901")


def test_a_query_string_wins_over_what_fails_after_it():
    run = steps(
        ("stream-url", "stream-url", FAIL, {"url": "wss://h/m?x=1", "problems": [{"kind": "query", "fatal": True, "text": "q"}]}),
        ("handshake", "handshake", FAIL, {"answers": {"upgrade": {"status": 404}}, "path": "/m"}),
    )
    diagnosis = dx.diagnose(run)
    assert diagnosis.code == "stream-url-query-string"
    assert "stream-path-not-found" in diagnosis.message


def test_warnings_do_not_fail_a_run():
    run = steps(("url", "url", WARN, {}), ("media", "media", OK, {}))
    assert dx.diagnose(run, local=True).code == "ok"


@pytest.mark.parametrize(
    "data, code",
    [
        ({"status": 404}, "webhook-not-found"),
        ({"status": 403, "signed": True}, "signature-rejected"),
        ({"status": 401}, "signature-rejected"),
        ({"status": 401, "www_authenticate": "Basic"}, "webhook-error"),
        ({"status": 403, "diagnosis_header": "development-mode"}, "webhook-error"),
        ({"status": 500}, "webhook-error"),
        ({"error": "timeout", "reason": "no answer within 15 s"}, "webhook-error"),
    ],
)
def test_webhook_answers(data, code):
    assert dx.diagnose(steps(("webhook", "webhook", FAIL, data))).code == code


def test_media_outcomes():
    closed = dx.diagnose(steps(("media", "media", FAIL, {"closed_early": True, "close_code": 1011})))
    assert closed.code == "stream-closed-early" and "1011" in closed.message
    silent = dx.diagnose(steps(("media", "media", FAIL, {"expect": "media", "received": 0})))
    assert silent.code == "no-media-back" and "--expect none" in silent.fix
    wrong_echo = dx.diagnose(steps(("media", "media", FAIL, {"expect": "echo", "received": 10, "echoed": 4, "sent": 10})))
    assert wrong_echo.code == "no-media-back" and "4 of 10" in wrong_echo.message


def test_every_code_has_help_a_message_and_a_twilio_error():
    assert set(dx.TEXTS) == set(dx.CODES)
    for code in dx.CODES:
        assert dx.CODES[code].help
        assert dx.twilio_error(code) and dx.twilio_error(code) != "-"


def test_every_code_and_probe_option_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Probing a deployment", 1)[1].split("\n## ", 1)[0]
    for code in dx.CODES:
        assert f"`{code}`" in section, f"{code} is not documented"
    for flag in (
        "--auth-token",
        "--auth-token-file",
        "--param",
        "--seconds",
        "--cafile",
        "--connect-to",
        "--json",
        "--local",
        "--expect",
        "--timeout",
    ):
        assert flag in section, f"{flag} is not documented"


# Arguments.


def test_connect_to_has_curls_meaning():
    rule = parse_connect_to("voice.example.com:443:127.0.0.1:8443")
    assert rule.target("voice.example.com", 443) == ("127.0.0.1", 8443)
    assert rule.target("voice.example.com", 80) is None
    assert rule.target("other.example.com", 443) is None
    assert parse_connect_to("::[::1]:").target("any.example", 443) == ("::1", 443)
    assert parse_connect_to("voice.example.com:443::8443").target("voice.example.com", 443) == ("voice.example.com", 8443)
    assert parse_connect_to("voice.example.com::10.0.0.2:") == ConnectTo("voice.example.com", None, "10.0.0.2", None)
    for bad in ("voice.example.com:443:127.0.0.1", "a:99999:b:1", "a:b:c:d"):
        with pytest.raises(UsageError):
            parse_connect_to(bad)
