"""deploy/nginx/voicebridge.conf, as shipped, in front of a real daemon: TLS at nginx, a signed call through it.

The file is rendered with this test's ports and certificates (every substitution must find its
target, so a change to the file that breaks the rendering fails here), then run by a real nginx.
"""

from __future__ import annotations

import re
import ssl
import xml.etree.ElementTree as ET

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.conftest import TOKEN
from tests.daemon import REPO
from tests.http import call_form, post_form, request, upgrade_request
from tests.nginx import free_port
from tests.tlsclient import trust_root
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

pytestmark = pytest.mark.nginx

CONF = REPO / "deploy" / "nginx" / "voicebridge.conf"
HOST = "voice.example.test"
SIGNER = SignatureChecker(TOKEN)


def render(conf: str, *, https_port: int, http_port: int, upstream_port: int, leaf, webroot) -> str:
    """The shipped file with this test's ports, names and files: only what an operator edits."""
    substitutions = [
        ("listen [::]:443 ssl;", ""),
        ("listen [::]:80;", ""),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("/etc/letsencrypt/live/voice.example.com/fullchain.pem", str(leaf.fullchain)),
        ("/etc/letsencrypt/live/voice.example.com/privkey.pem", str(leaf.key)),
        ("/var/www/letsencrypt", str(webroot)),
        ("voice.example.com", HOST),
        ("127.0.0.1:8080", f"127.0.0.1:{upstream_port}"),
    ]
    for old, new in substitutions:
        assert old in conf, f"{CONF.name} no longer contains {old!r}: update this test's rendering"
        conf = conf.replace(old, new)
    return conf


def without_upgrade_headers(conf: str) -> str:
    """The mistake the seed's team made: a proxy that does not pass the upgrade on."""
    lines = [line for line in conf.splitlines() if not re.search(r"proxy_set_header (Upgrade|Connection) ", line)]
    assert len(lines) == len(conf.splitlines()) - 2
    return "\n".join(lines)


@pytest.fixture
def proxied(start_daemon, start_nginx, pki, tmp_path):
    """``proxied(daemon_args, variant=None)``: a daemon behind the shipped nginx config; returns (daemon, https_port)."""

    def start(*daemon_args, variant=None, public_url=True):
        https_port, http_port = free_port(), free_port()
        args = ["--trusted-proxy", "127.0.0.1", *daemon_args]
        if public_url:
            args += ["--public-url", f"https://{HOST}:{https_port}"]
        daemon = start_daemon(*args, env={"TWILIO_AUTH_TOKEN": TOKEN})
        webroot = tmp_path / "webroot"
        (webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
        conf = render(
            CONF.read_text(),
            https_port=https_port,
            http_port=http_port,
            upstream_port=daemon.port,
            leaf=pki.leaf(),
            webroot=webroot,
        )
        start_nginx(variant(conf) if variant else conf, [https_port, http_port])
        return daemon, https_port, http_port, webroot

    return start


def client_context(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.root_pem))


def signed_webhook(pki, port: int, path: str = "/voice?businessId=business-1"):
    form = call_form()
    url = f"https://{HOST}:{port}{path}"
    headers = {"Host": f"{HOST}:{port}", "X-Twilio-Signature": SIGNER.sign(url, form)}
    return post_form(port, path, form, headers, context=client_context(pki))


def stream_url_of(twiml: bytes) -> str:
    return ET.fromstring(twiml).find("./Connect/Stream").get("url")


@pytest_twisted.inlineCallbacks
def test_a_signed_call_flows_through_nginx(proxied, pki):
    from twisted.internet import reactor

    daemon, port, _, _ = proxied()
    status, _, body = yield threads.deferToThread(signed_webhook, pki, port)
    assert status == 200, body
    stream_url = stream_url_of(body)
    assert stream_url == f"wss://{HOST}:{port}/twilio-media"
    answered = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "webhook.answered")
    assert answered["client"] == "127.0.0.1"

    outcome = yield play_call(
        reactor,
        stream_url,
        CallScript(frames=100, custom_parameters={"businessId": "business-1"}, dtmf="5"),
        signature=SIGNER.sign(stream_url),
        trust_root=trust_root(pki),
        connect_to=("127.0.0.1", port),
    ).addTimeout(30, reactor)
    assert outcome.opened
    assert len(outcome.sent) == 100 and outcome.received == outcome.sent, "every frame echoed through nginx"
    assert outcome.close_code == 1000
    request_event = daemon.named("stream.request")[-1]
    assert request_event["upgrade"].lower() == "websocket" and request_event["xfp"] == "https"
    ended = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.ended")
    assert (ended["frames_in"], ended["frames_out"], ended["reason"]) == (100, 100, "stop")


def test_forwarded_headers_give_the_public_url_without_public_url(proxied, pki):
    """X-Forwarded-Proto and X-Forwarded-Host from the shipped config make the right wss:// URL."""
    daemon, port, _, _ = proxied(public_url=False)
    status, _, body = signed_webhook(pki, port)
    assert status == 200, body
    assert stream_url_of(body) == f"wss://{HOST}:{port}/twilio-media"


def test_nginx_without_the_upgrade_headers_gets_the_426_diagnosis(proxied, pki):
    daemon, port, _, _ = proxied(variant=without_upgrade_headers)
    stream_url = f"wss://{HOST}:{port}/twilio-media"
    status, headers, body = upgrade_request(
        port,
        headers={"Host": f"{HOST}:{port}", "X-Twilio-Signature": SIGNER.sign(stream_url)},
        context=client_context(pki),
    )
    assert status == 426
    assert headers["x-voicebridge-diagnosis"] == "upgrade-missing"
    assert b"proxy_set_header Upgrade $http_upgrade" in body
    event = daemon.wait_for(lambda e: e.get("event_name") == "stream.upgrade_missing")
    assert event["client"] == "127.0.0.1"


def test_port_80_redirects_and_serves_acme_challenges(proxied):
    _, https_port, http_port, webroot = proxied()
    (webroot / ".well-known" / "acme-challenge" / "token-1").write_text("token-1.thumbprint")
    status, _, body = request(http_port, "GET", "/.well-known/acme-challenge/token-1")
    assert (status, body) == (200, b"token-1.thumbprint")
    status, headers, _ = request(http_port, "POST", "/voice", headers={"Host": HOST})
    assert status == 301 and headers["location"] == f"https://{HOST}/voice"


@pytest_twisted.inlineCallbacks
def test_draining_behind_nginx_turns_new_calls_away_and_keeps_the_live_one(proxied, pki):
    import signal

    from twisted.internet import reactor

    daemon, port, _, _ = proxied()
    stream_url = f"wss://{HOST}:{port}/twilio-media"
    call = play_call(
        reactor,
        stream_url,
        CallScript(frames=150),
        signature=SIGNER.sign(stream_url),
        trust_root=trust_root(pki),
        connect_to=("127.0.0.1", port),
    )
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")
    daemon.signal(signal.SIGTERM)
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "service.draining")
    ready = yield threads.deferToThread(request, port, "GET", "/readyz", headers={"Host": HOST}, context=client_context(pki))
    assert ready[0] == 503
    status, headers, _ = yield threads.deferToThread(signed_webhook, pki, port)
    assert status == 503 and headers["x-voicebridge-diagnosis"] == "draining"
    outcome = yield call.addTimeout(30, reactor)
    assert outcome.received == outcome.sent and outcome.close_code == 1000
    assert (yield threads.deferToThread(daemon.wait_exit, 15)) == 0


def test_the_shipped_config_keeps_streams_open_for_an_hour():
    conf = CONF.read_text()
    assert re.search(r"proxy_read_timeout\s+3600s;", conf)
    assert "proxy_http_version 1.1;" in conf
    for header in ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-For"):
        assert f"proxy_set_header {header} " in conf
