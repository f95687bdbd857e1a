"""``voicebridge probe`` against real deployments built on loopback: each scenario asserts its diagnosis.

voicebridge runs as real ``twist`` subprocesses, behind a real nginx with good and broken
configurations and certificates made by the test; the apps that are not voicebridge are small
twisted.web/Autobahn apps (tests/fakeapps.py). Host names never reach DNS: ``--connect-to``
sends voice.example.test to the loopback port of each scenario, as curl's option does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.conftest import TOKEN
from tests.daemon import REPO, Daemon, source_env
from tests.fakeapps import FakeApp
from tests.mediaapp import listen_full
from tests.nginx import Nginx, free_port, free_ports
from tests.pki import PKI
from voicebridge.tools.probe import ConnectTo, Probe, ProbeOptions

HOST = "voice.example.test"
WEBHOOK = f"https://{HOST}/voice"

UPGRADE = """
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;"""
NO_UPGRADE = """
        proxy_http_version 1.1;"""


def server(port, cert, key, upstream, upgrade=UPGRADE, extra="", name=HOST):
    return f"""
server {{
    listen 127.0.0.1:{port} ssl;
    server_name {name};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    {extra}
    location / {{
        proxy_pass http://127.0.0.1:{upstream};{upgrade}
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_read_timeout 3600s;
    }}
}}"""


class Deployment:
    """Everything the scenarios probe, started once for the module."""

    def __init__(self, directory):
        from twisted.internet import reactor

        self.pki = PKI(directory / "pki")
        good = self.pki.leaf("good")
        other = self.pki.leaf("other", names=("other.example.test",))
        expired = self.pki.leaf("expired", expired=True)
        selfsigned = self.pki.self_signed()
        self.signed = Daemon(
            ["--public-url", f"https://{HOST}", "--listen", "tcp:0:interface=127.0.0.1"], env={"TWILIO_AUTH_TOKEN": TOKEN}
        )
        self.dev = Daemon(["--listen", "tcp:0:interface=127.0.0.1"])
        self.nginx = None
        self.app = FakeApp(reactor)
        try:
            self.signed.start()
            self.dev.start()
            vb, dev, app = self.signed.port, self.dev.port, self.app.address
            self.ports = free_ports(list(SERVERS))
            blocks = {
                "vb-good": server(self.ports["vb-good"], good.fullchain, good.key, vb),
                "vb-strip": server(self.ports["vb-strip"], good.fullchain, good.key, vb, NO_UPGRADE),
                "vb-wrongpath": server(
                    self.ports["vb-wrongpath"],
                    good.fullchain,
                    good.key,
                    vb,
                    extra=f"location /twilio-media {{ proxy_pass http://127.0.0.1:{vb}/media-v2;{UPGRADE} }}",
                ),
                "vb-leafonly": server(self.ports["vb-leafonly"], good.cert, good.key, vb),
                "vb-selfsigned": server(self.ports["vb-selfsigned"], selfsigned.fullchain, selfsigned.key, vb),
                "vb-othername": server(self.ports["vb-othername"], other.fullchain, other.key, vb),
                "vb-expired": server(self.ports["vb-expired"], expired.fullchain, expired.key, vb),
                "dev-behind-tls": server(self.ports["dev-behind-tls"], good.fullchain, good.key, dev),
                "app-good": server(self.ports["app-good"], good.fullchain, good.key, app),
                "app-strip": server(self.ports["app-strip"], good.fullchain, good.key, app, NO_UPGRADE),
                "plain-http": f"server {{ listen 127.0.0.1:{self.ports['plain-http']}; "
                f"location / {{ proxy_pass http://127.0.0.1:{vb}; }} }}",
            }
            body = "map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n" + "\n".join(blocks.values())
            self.nginx = Nginx(directory / "nginx", body, list(self.ports.values())).start()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.nginx is not None:
            self.nginx.stop()
        self.signed.stop()
        self.dev.stop()
        self.app.stop()

    def options(self, scenario: str, url: str = WEBHOOK, **kwargs) -> ProbeOptions:
        port = self.ports[scenario]
        kwargs.setdefault("auth_token", TOKEN)
        kwargs.setdefault("cafile", str(self.pki.root_pem))
        kwargs.setdefault("seconds", 0.5)
        routes = [ConnectTo(HOST, None, "127.0.0.1", port), ConnectTo("app", None, "127.0.0.1", port)]
        return ProbeOptions(url, connect_to=routes + kwargs.pop("connect_to", []), **kwargs)


SERVERS = (
    "vb-good",
    "vb-strip",
    "vb-wrongpath",
    "vb-leafonly",
    "vb-selfsigned",
    "vb-othername",
    "vb-expired",
    "dev-behind-tls",
    "app-good",
    "app-strip",
    "plain-http",
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.nginx import nginx_binary

    nginx_binary()  # skip (or fail under CI) without nginx
    site = Deployment(tmp_path_factory.mktemp("probe"))
    yield site
    site.stop()


def run_probe(options: ProbeOptions) -> defer.Deferred:
    from twisted.internet import reactor

    return Probe(reactor, options).run().addTimeout(60, reactor)


def assert_diagnosis(report, code: str):
    print(report.text())
    assert report.diagnosis.code == code, report.text()
    assert report.exit_status == (0 if code == "ok" else 1)
    assert report.diagnosis.message and report.diagnosis.fix
    if code != "ok":
        failing = [s for s in report.steps if s.status == "fail"]
        assert failing, report.text()


# voicebridge behind nginx.


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_voicebridge_behind_a_good_nginx_is_ok_and_echoes_every_frame(deployment):
    # A query string on the webhook URL is signed too, and comes back as a <Parameter>.
    url = WEBHOOK + "?businessId=business-7"
    report = yield run_probe(deployment.options("vb-good", url=url, expect="echo", seconds=1))
    assert_diagnosis(report, "ok")
    assert report.step("twiml").data["parameters"]["businessId"] == "business-7"
    # --cafile made the chain verify: Twilio would not (a warning; the exit status stays 0).
    assert [s.status for s in report.steps] == ["ok"] * 3 + ["warn"] + ["ok"] * 6, report.text()
    assert "only against --cafile" in report.step("tls").warnings[0] and report.exit_status == 0
    media = report.step("media").data
    assert media["sent"] == 50 and media["echoed"] == 50
    assert report.step("tls").data["chain"][0]["issuer"] == "voicebridge test intermediate CA"
    assert report.step("twiml").data["parameters"]["callSid"].startswith("CA")
    # The daemon saw the call the probe played, with the TwiML's parameters in start.
    from twisted.internet import reactor

    started = yield deployment.signed.wait_for_async(
        reactor,
        lambda e: (
            e.get("event_name") == "call.started" and e.get("callSid") == report.step("twiml").data["parameters"]["callSid"]
        ),
    )
    assert started["parameters"]["to"] == "+1555*****00"
    assert started["parameters"]["businessId"] == "business-7"


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_nginx_without_upgrade_headers_in_front_of_voicebridge(deployment):
    report = yield run_probe(deployment.options("vb-strip"))
    assert_diagnosis(report, "upgrade-stripped")
    assert "voicebridge answered 426 (upgrade-missing)" in report.diagnosis.message
    assert "proxy_set_header Upgrade $http_upgrade;" in report.diagnosis.fix
    assert report.diagnosis.twilio_error.startswith("31920")
    assert report.step("webhook").status == "ok", "the webhook passes; only the upgrade is lost"


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_nginx_pointing_the_stream_at_a_wrong_path(deployment):
    report = yield run_probe(deployment.options("vb-wrongpath"))
    assert_diagnosis(report, "stream-path-not-found")
    assert "voicebridge answered 404" in report.diagnosis.message


@pytest.mark.nginx
@pytest.mark.parametrize(
    "scenario, options, code, twilio",
    [
        ("vb-leafonly", {}, "tls-incomplete-chain", "11237"),
        ("vb-selfsigned", {}, "tls-untrusted", "11237"),
        ("vb-good", {"cafile": None}, "tls-untrusted", "11237"),  # a private CA nobody trusts
        ("vb-othername", {}, "tls-hostname-mismatch", "11235"),
        ("vb-expired", {}, "tls-expired", "11236"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_tls_problems_are_told_apart(deployment, scenario, options, code, twilio):
    report = yield run_probe(deployment.options(scenario, **options))
    assert_diagnosis(report, code)
    assert report.step("tls").status == "fail"
    assert report.step("webhook").status == "skip", "nothing is sent over a connection Twilio would refuse"
    assert report.diagnosis.twilio_error.startswith(twilio)


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_incomplete_chain_names_the_missing_intermediate_and_the_fix(deployment):
    report = yield run_probe(deployment.options("vb-leafonly"))
    assert "voicebridge test intermediate CA" in report.diagnosis.message
    assert "fullchain.pem" in report.diagnosis.fix
    assert len(report.step("tls").data["chain"]) == 1


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_local_turns_tls_problems_into_warnings(deployment):
    report = yield run_probe(deployment.options("vb-selfsigned", local=True, expect="echo"))
    assert_diagnosis(report, "ok")
    assert report.step("tls").status == "warn"
    assert "Twilio would refuse it" in report.step("tls").warnings[0]


@pytest.mark.nginx
@pytest.mark.parametrize(
    "token, url, code",
    [
        ("another-token", WEBHOOK, "signature-rejected"),
        ("", WEBHOOK, "signature-rejected"),
        (TOKEN, f"https://{HOST}/voicex", "webhook-not-found"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_webhook_refusals_of_voicebridge(deployment, token, url, code):
    report = yield run_probe(deployment.options("vb-good", url=url, auth_token=token or None))
    assert_diagnosis(report, code)
    if code == "signature-rejected":
        assert ("--auth-token" in report.diagnosis.fix) == (not token)


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_voicebridge_without_public_url_behind_tls_answers_ws(deployment):
    # Development mode (no token) behind a TLS proxy it does not trust: it derives ws:// from the request.
    report = yield run_probe(deployment.options("dev-behind-tls", auth_token=None))
    assert_diagnosis(report, "stream-url-not-wss")
    assert report.step("twiml").data["stream_url"] == f"ws://{HOST}/twilio-media"
    assert "--public-url" in report.diagnosis.fix


# Apps that are not voicebridge, behind nginx.


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_other_app_behind_a_good_nginx_is_ok(deployment):
    report = yield run_probe(deployment.options("app-good", expect="echo"))
    assert_diagnosis(report, "ok")
    assert deployment.app.starts[-1].custom_parameters == {"businessId": "business-1", "plan": "pro"}


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_nginx_dropping_the_upgrade_in_front_of_another_app(deployment):
    report = yield run_probe(deployment.options("app-strip"))
    assert_diagnosis(report, "upgrade-stripped")
    answers = report.step("handshake").data["answers"]
    assert (answers["upgrade"]["status"], answers["plain"]["status"], answers["sibling_plain"]["status"]) == (426, 426, 404)


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_the_same_app_behind_a_good_nginx_is_not_called_stripped_when_the_path_is_wrong(deployment):
    report = yield run_probe(deployment.options("app-good", url=f"https://{HOST}/voice-wrongpath"))
    assert_diagnosis(report, "stream-path-not-found")


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_limit_an_app_that_404s_plain_gets_on_its_websocket_route_behind_a_stripping_proxy(deployment):
    # Express with ws answers a plain GET on its WebSocket route like an unknown route: with the
    # upgrade stripped, nothing on the wire tells the two apart. The probe says so.
    report = yield run_probe(deployment.options("app-strip", url=f"https://{HOST}/voice-expresslike"))
    assert_diagnosis(report, "stream-path-not-found")
    assert "a proxy dropping the upgrade looks just like this" in report.diagnosis.message
    stripped_nothing = yield run_probe(deployment.options("app-good", url=f"https://{HOST}/voice-expresslike"))
    assert_diagnosis(stripped_nothing, "ok")


@pytest.mark.nginx
@pytest.mark.parametrize(
    "path, code",
    [
        ("/voice-port", "stream-url-port"),
        ("/voice-container", "url-not-public"),
        ("/voice-query", "stream-url-query-string"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_stream_url_problems_behind_nginx(deployment, path, code):
    extra = [ConnectTo(HOST, 8443, "127.0.0.1", deployment.ports["app-good"])]
    report = yield run_probe(deployment.options("app-good", url=f"https://{HOST}{path}", connect_to=extra))
    assert_diagnosis(report, code)
    assert report.step("stream-url").status == "fail"


# Apps that are not voicebridge, reached directly (a developer's machine: --local).


@pytest.mark.parametrize(
    "path, code",
    [
        ("/voice", "ok"),
        ("/voice-redirect", "ok"),
        ("/voice-closing", "stream-closed-early"),
        ("/voice-silent", "no-media-back"),
        ("/voice-deny", "handshake-rejected"),
        ("/voice-wrongpath", "stream-path-not-found"),
        ("/voice-query", "stream-url-query-string"),
        ("/voice-query-nowhere", "stream-url-query-string"),
        ("/nothing-here", "webhook-not-found"),
        ("/voice-500", "webhook-error"),
        ("/voice-loop", "webhook-error"),
        ("/voice-json", "not-twiml"),
        ("/voice-broken", "not-twiml"),
        ("/voice-say", "no-stream-in-twiml"),
        ("/voice-auth", "webhook-error"),
        ("user:secret@/voice-auth", "ok"),
        ("user:wrong@/voice-auth", "webhook-error"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_fake_apps_directly(path, code):
    from twisted.internet import reactor

    app = FakeApp(reactor)
    credentials, _, path = path.rpartition("@")
    url = app.url(path).replace("http://", f"http://{credentials}@" if credentials else "http://")
    try:
        report = yield run_probe(ProbeOptions(url, local=True, seconds=0.5, auth_token=TOKEN))
    finally:
        yield app.stop()
    assert_diagnosis(report, code)
    if path == "/voice-auth" and code != "ok":
        assert report.step("webhook").data["status"] == 401
        assert ("refused the credentials" in report.diagnosis.fix) == bool(credentials)
    if path == "/voice-redirect":
        assert "307 redirect" in report.step("webhook").warnings[0]
    if path == "/voice-query-nowhere":
        # Twilio refuses the query string first, whatever fails after it.
        assert report.step("handshake").status == "fail"
        assert "stream-path-not-found" in report.diagnosis.message
    if path == "/voice-closing":
        assert report.step("media").data["close_code"] == 1000
        assert report.diagnosis.twilio_error.startswith("31921")
    if path == "/voice-deny":
        assert report.step("handshake").data["answers"]["upgrade"]["status"] == 403
    assert "secret" not in report.text() + json.dumps(report.as_json()), "passwords in the URL are not shown"
    if code == "ok":
        # What the app saw was what Twilio sends: a signed POST with the call's fields.
        method, _, headers = app.webhooks[-1]
        assert method == b"POST" and b"X-Twilio-Signature" in headers


# Nothing there.


@pytest_twisted.inlineCallbacks
def test_nothing_listening_is_connection_refused():
    port = free_port()
    report = yield run_probe(ProbeOptions(WEBHOOK, connect_to=[ConnectTo(HOST, 443, "127.0.0.1", port)]))
    assert_diagnosis(report, "connection-refused")
    assert report.diagnosis.twilio_error.startswith("11205")


@pytest_twisted.inlineCallbacks
def test_a_listener_that_never_accepts_is_a_connect_timeout():
    listener, fillers = listen_full()  # later SYNs are dropped
    try:
        port = listener.getsockname()[1]
        report = yield run_probe(ProbeOptions(WEBHOOK, timeout=1, connect_to=[ConnectTo(HOST, 443, "127.0.0.1", port)]))
    finally:
        for sock in (*fillers, listener):
            sock.close()
    assert_diagnosis(report, "connect-timeout")


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_an_https_url_on_a_plain_http_port_is_no_tls(deployment):
    report = yield run_probe(deployment.options("plain-http"))
    assert_diagnosis(report, "no-tls")
    assert "plain HTTP" in report.diagnosis.message and "HTTP/1.1" in report.step("tls").data["reason"]
    assert report.diagnosis.twilio_error.startswith("11220")


# The command itself.


def cli(*args, env=None, prefix=()):
    from twisted.internet import reactor, utils

    command = [*prefix, sys.executable, "-m", "voicebridge", "probe", *args]
    return utils.getProcessOutputAndValue(command[0], command[1:], env=source_env(env), path=str(REPO), reactor=reactor)


@pytest_twisted.inlineCallbacks
def test_readme_first_run_probes_ok_with_local(start_daemon):
    daemon = start_daemon()
    out, err, code = yield cli("--local", "--expect", "echo", "--seconds", "0.5", daemon.url("/voice"))
    assert code == 0, out.decode() + err.decode()
    text = out.decode()
    assert "warn  stream-url" in text and "ws:// is not encrypted" in text
    assert "diagnosis: ok" in text
    out, err, code = yield cli("--seconds", "0.5", daemon.url("/voice"))
    assert code == 1
    assert "diagnosis: url-not-public" in out.decode()


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_json_output(deployment):
    port = deployment.ports["vb-strip"]
    out, err, code = yield cli(
        "--json",
        "--cafile",
        str(deployment.pki.root_pem),
        "--connect-to",
        f"{HOST}:443:127.0.0.1:{port}",
        "--param",
        "To=+15550100001",
        WEBHOOK,
        env={"TWILIO_AUTH_TOKEN": TOKEN},
    )
    assert code == 1, err.decode()
    result = json.loads(out)
    assert {"ok", "diagnosis", "message", "steps"} <= set(result)
    assert (result["ok"], result["diagnosis"]) == (False, "upgrade-stripped")
    names = [s["name"] for s in result["steps"]]
    assert names == ["url", "resolve", "connect", "tls", "webhook", "twiml", "stream-url", "handshake", "media", "stop"]
    assert [s["status"] for s in result["steps"]][-3:] == ["fail", "skip", "skip"]
    assert result["steps"][5]["data"]["parameters"]["to"] == "+15550100001", "--param reached the webhook"
    assert TOKEN not in out.decode() + err.decode()


@pytest.mark.parametrize(
    "args, message",
    [
        (["voice.example.test/voice"], "is not an http(s):// webhook URL"),
        (["--connect-to", "a:b:c", WEBHOOK], "is not HOST:PORT:ADDR:PORT"),
        (["--param", "novalue", WEBHOOK], "--param 'novalue' is not NAME=VALUE"),
        (["--seconds", "0", WEBHOOK], "--seconds must be"),
        (["--cafile", "/nonexistent/ca.pem", WEBHOOK], "--cafile: cannot read CA file /nonexistent/ca.pem"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_bad_arguments_exit_2_with_a_precise_message(args, message):
    out, err, code = yield cli(*args)
    assert code == 2
    assert message in err.decode()


def _netns_available() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _netns_available(), reason="needs unshare -n (root, or user namespaces) for an offline network namespace")
@pytest_twisted.inlineCallbacks
def test_a_name_that_does_not_resolve_is_a_dns_failure():
    # In a fresh network namespace nothing is reachable, not even a resolver: a real DNS failure
    # that sends no packet anywhere.
    out, err, code = yield cli("--json", "https://voice.example.com/voice", prefix=(shutil.which("unshare"), "-n"))
    assert code == 1, err.decode()
    result = json.loads(out)
    assert result["diagnosis"] == "dns-failure"
    assert "voice.example.com" in result["message"]
    assert result["twilio_error"].startswith("11210")


def test_help_lists_the_probe():
    out = subprocess.run(
        [sys.executable, "-m", "voicebridge", "--help"], capture_output=True, text=True, env=source_env(), cwd=REPO
    )
    assert "probe" in out.stdout
