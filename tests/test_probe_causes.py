"""The probe pins down the fix (issue 14, part 2): why a signature is refused, a proxy whose app is down,
https:// on a plain-HTTP port, a chain trusted only through --cafile.

Real daemons behind a real nginx on loopback, as in tests/test_probe.py; host names never reach DNS.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.conftest import TOKEN
from tests.daemon import Daemon
from tests.fakeapps import FakeApp
from tests.nginx import Nginx, free_port, free_ports, nginx_binary
from tests.pki import PKI
from tests.test_probe import HOST, WEBHOOK, assert_diagnosis, run_probe, server
from voicebridge.tools.diagnosis.texts import signature_cause
from voicebridge.tools.probe import ConnectTo, ProbeOptions

NAMES = ("wrong-public-url", "no-public-url", "right-url", "down", "app", "stream-down")


class Site:
    def __init__(self, directory):
        from twisted.internet import reactor

        self.pki = PKI(directory / "pki")
        good = self.pki.leaf("good")
        env = {"TWILIO_AUTH_TOKEN": TOKEN}
        listen = ["--listen", "tcp:0:interface=127.0.0.1"]
        self.daemons = {
            "wrong-public-url": Daemon(["--public-url", "https://old.example.test", *listen], env=env),
            "no-public-url": Daemon(listen, env=env),
            "plain": Daemon(["--public-url", f"https://{HOST}", *listen], env=env),
        }
        self.app = FakeApp(reactor)
        self.nginx = None
        try:
            for daemon in self.daemons.values():
                daemon.start()
            nginx_binary()
            self.ports = free_ports(list(NAMES))
            upstreams = {
                "wrong-public-url": self.daemons["wrong-public-url"].port,
                "no-public-url": self.daemons["no-public-url"].port,
                "right-url": self.daemons["plain"].port,
                "down": free_port(),  # nothing listens there: nginx answers 502
                "app": self.app.address,
                "stream-down": self.daemons["plain"].port,
            }
            blocks = [server(self.ports[name], good.fullchain, good.key, upstreams[name]) for name in NAMES[:-1]]
            # The webhook reaches the daemon; /twilio-media goes to a port where nothing listens (502).
            blocks.append(
                server(
                    self.ports["stream-down"],
                    good.fullchain,
                    good.key,
                    upstreams["stream-down"],
                    extra=f"location /twilio-media {{ proxy_pass http://127.0.0.1:{free_port()}; }}",
                )
            )
            body = "map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n" + "\n".join(blocks)
            self.nginx = Nginx(directory / "nginx", body, list(self.ports.values())).start()
        except BaseException:
            self.stop()
            raise

    def options(self, port: int, url: str = WEBHOOK, **kwargs) -> ProbeOptions:
        kwargs.setdefault("auth_token", TOKEN)
        kwargs.setdefault("cafile", str(self.pki.root_pem))
        kwargs.setdefault("seconds", 0.5)
        return ProbeOptions(url, connect_to=[ConnectTo(HOST, None, "127.0.0.1", port)], **kwargs)

    def stop(self):
        if self.nginx is not None:
            self.nginx.stop()
        for daemon in self.daemons.values():
            daemon.stop()
        self.app.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("causes"))
    yield s
    s.stop()


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_a_wrong_public_url_is_named_with_the_url_to_use(site):
    report = yield run_probe(site.options(site.ports["wrong-public-url"]))
    assert_diagnosis(report, "signature-rejected")
    assert "https://old.example.test/voice" in report.diagnosis.message
    assert f"--public-url https://{HOST}" in report.diagnosis.fix


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_no_public_url_behind_a_tls_proxy_is_named_with_the_proxy_header(site):
    report = yield run_probe(site.options(site.ports["no-public-url"]))
    assert_diagnosis(report, "signature-rejected")
    assert f"http://{HOST}/voice" in report.diagnosis.message and "terminates TLS" in report.diagnosis.message
    assert f"--public-url https://{HOST}" in report.diagnosis.fix and "X-Forwarded-Proto" in report.diagnosis.fix


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_another_token_is_named_as_such(site):
    report = yield run_probe(site.options(site.ports["right-url"], auth_token="another-token"))
    assert_diagnosis(report, "signature-rejected")
    assert "the same URL the probe signed: the auth tokens differ" in report.diagnosis.message


@pytest_twisted.inlineCallbacks
def test_https_on_a_plain_port_is_no_tls_and_plain_http_a_url_cause(site):
    daemon = site.daemons["plain"]
    options = ProbeOptions(
        WEBHOOK,
        auth_token="another-token",
        connect_to=[ConnectTo(HOST, None, "127.0.0.1", daemon.port)],
        local=True,
        seconds=0.5,
    )
    # https:// on the daemon's plain port: no-tls comes first, in about a second, not after a TLS timeout.
    report = yield run_probe(options)
    assert_diagnosis(report, "no-tls")
    assert "plain HTTP" in report.diagnosis.message
    options = ProbeOptions(
        f"http://{HOST}/voice",
        auth_token="another-token",
        connect_to=[ConnectTo(HOST, None, "127.0.0.1", daemon.port)],
        local=True,
        seconds=0.5,
    )
    report = yield run_probe(options)
    assert_diagnosis(report, "signature-rejected")
    # The daemon checks https://HOST/voice (its --public-url), the probe signed http://: a URL cause, named.
    assert f"https://{HOST}/voice" in report.diagnosis.message


def test_the_four_signature_causes_are_told_apart():
    signed = f"https://{HOST}/voice"
    assert signature_cause(signed, signed)[0] == "token"
    assert signature_cause(signed, f"https://{HOST}:443/voice/")[0] == "token"
    cause, message, fix = signature_cause(signed, f"http://{HOST}/voice")
    assert cause == "no-public-url-behind-tls" and "X-Forwarded-Proto" in fix
    cause, message, fix = signature_cause(signed, f"https://{HOST}/voice/voice")
    assert cause == "public-url-has-route" and f"--public-url https://{HOST} " in fix + " "
    cause, message, fix = signature_cause(signed, "https://old.example.test/voice")
    assert cause == "wrong-public-url" and f"--public-url https://{HOST}" in fix
    cause, _, fix = signature_cause(f"https://{HOST}/vb/voice?businessId=b1", f"https://{HOST}/voice?businessId=b1")
    assert cause == "wrong-public-url" and f"--public-url https://{HOST}/vb" in fix


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_another_app_refusing_keeps_both_hypotheses(site):
    report = yield run_probe(site.options(site.ports["app"], url=f"https://{HOST}/voice-forbidden"))
    assert_diagnosis(report, "signature-rejected")
    assert "another auth token" in report.diagnosis.fix and "another URL" in report.diagnosis.fix


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_a_proxy_whose_app_is_down_is_upstream_unreachable(site):
    report = yield run_probe(site.options(site.ports["down"]))
    assert_diagnosis(report, "upstream-unreachable")
    assert "502" in report.diagnosis.message and "<html" not in report.diagnosis.message.lower()
    for check in ("$PORT", "0.0.0.0", "running", "Railway", "Render", "Fly.io"):
        assert check in report.diagnosis.fix
    assert report.diagnosis.twilio_error.startswith("11200")


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_the_stripped_upgrade_fix_names_the_daemons_own_address(tmp_path, start_daemon):
    from tests.test_probe import NO_UPGRADE

    pki = PKI(tmp_path / "pki")
    good = pki.leaf("good")
    daemon = start_daemon("--public-url", f"https://{HOST}", env={"TWILIO_AUTH_TOKEN": TOKEN})
    port = free_port()
    nginx = Nginx(tmp_path / "nginx", server(port, good.fullchain, good.key, daemon.port, NO_UPGRADE), [port]).start()
    try:
        report = yield run_probe(
            ProbeOptions(
                WEBHOOK,
                auth_token=TOKEN,
                cafile=str(pki.root_pem),
                seconds=0.5,
                connect_to=[ConnectTo(HOST, None, "127.0.0.1", port)],
            )
        )
    finally:
        nginx.stop()
    assert_diagnosis(report, "upgrade-stripped")
    assert f"proxy_pass http://127.0.0.1:{daemon.port};" in report.diagnosis.fix
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in report.diagnosis.fix


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_a_stream_route_whose_upstream_is_down_is_upstream_unreachable(site):
    report = yield run_probe(site.options(site.ports["stream-down"]))
    assert_diagnosis(report, "upstream-unreachable")
    assert report.diagnosis.step == "handshake" and report.step("webhook").status == "ok"
    assert report.diagnosis.twilio_error.startswith("31920") and "$PORT" in report.diagnosis.fix


@pytest_twisted.inlineCallbacks
def test_a_wss_stream_url_on_a_plain_port_is_no_tls_even_with_local(start_daemon):
    # Development mode (no signatures) with --public-url https://HOST: the webhook over http:// (--local)
    # answers wss://HOST/twilio-media, which lands on the daemon's plain port.
    daemon = start_daemon("--public-url", f"https://{HOST}")
    report = yield run_probe(
        ProbeOptions(
            f"http://{HOST}/voice", connect_to=[ConnectTo(HOST, None, "127.0.0.1", daemon.port)], local=True, seconds=0.5
        )
    )
    assert_diagnosis(report, "no-tls")
    assert report.diagnosis.step == "stream-tls" and report.diagnosis.twilio_error.startswith("31910")
    assert "a plain HTTP request got 'HTTP/1.0 200 OK'" in report.step("stream-tls").data["reason"]


def test_the_platform_is_named_from_its_edge_headers():
    from voicebridge.tools.diagnosis import Step, diagnose, platform_of

    assert platform_of({"fly-request-id": "01H"}) == "Fly.io"
    assert platform_of({"server": "Fly/7e3a (2024-01-01)"}) == "Fly.io"
    assert platform_of({"rndr-id": "abc"}) == "Render"
    assert platform_of({"x-railway-fallback": "true"}) == "Railway"
    assert platform_of({"server": "nginx/1.22.1"}) is None
    step = Step(
        "webhook",
        "webhook",
        status="fail",
        data={"status": 502, "url": WEBHOOK, "edge": {"rndr-id": "x"}, "diagnosis_header": None, "signed": True},
    )
    diagnosis = diagnose([step])
    assert diagnosis.code == "upstream-unreachable" and "Render's edge" in diagnosis.message
    assert diagnosis.fix.startswith("Render: the app must listen on 0.0.0.0:$PORT")
