"""For each way streams fail to arrive, what the daemon logs and what the probe prints name the same layer.

The probe plays Twilio three times against each broken deployment (real daemons behind a real
nginx with TLS, on loopback): each run is an answered call whose stream does not make it, so the
daemon declares an episode 30 s later. The test prints both lines for each scenario.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.conftest import TOKEN
from tests.daemon import Daemon
from tests.http import call_form, post_form
from tests.nginx import Nginx, free_ports, nginx_binary
from tests.pki import PKI
from tests.test_probe import HOST, NO_UPGRADE, UPGRADE, WEBHOOK, run_probe
from voicebridge.tools.probe import ConnectTo, ProbeOptions
from voicebridge.twilio.signatures import SignatureChecker

SIGNER = SignatureChecker(TOKEN)

# scenario -> (the daemon's layer, the probe's diagnosis)
EXPECTED = {
    "edge-drops-stream": ("nothing-arrived", "stream-path-not-found"),
    "proxy-strips-upgrade": ("upgrade-stripped", "upgrade-stripped"),
    "stream-host-rewritten": ("handshake-signature-invalid", "handshake-rejected"),
}


def tls_server(port, leaf, locations: str) -> str:
    return f"""
server {{
    listen 127.0.0.1:{port} ssl;
    server_name {HOST};
    ssl_certificate {leaf.fullchain};
    ssl_certificate_key {leaf.key};
    {locations}
}}"""


def location(path, upstream, upgrade=UPGRADE, host="$host") -> str:
    return f"""location {path} {{
        proxy_pass http://127.0.0.1:{upstream};{upgrade}
        proxy_set_header Host {host};
        proxy_set_header X-Forwarded-Proto https;
    }}"""


class Scenarios:
    def __init__(self, directory):
        pki = PKI(directory / "pki")
        leaf = pki.leaf("good")
        self.cafile = str(pki.root_pem)
        env = {"TWILIO_AUTH_TOKEN": TOKEN}
        listen = ["--listen", "tcp:0:interface=127.0.0.1"]
        self.daemons = {
            "edge-drops-stream": Daemon(["--public-url", f"https://{HOST}", *listen], env=env),
            "proxy-strips-upgrade": Daemon(["--public-url", f"https://{HOST}", *listen], env=env),
            # No --public-url: the URL comes from the proxy's headers, and the stream's location rewrites Host.
            "stream-host-rewritten": Daemon(["--trusted-proxy", "127.0.0.1", *listen], env=env),
            "working": Daemon(["--public-url", f"https://{HOST}", *listen], env=env),
        }
        self.nginx = None
        try:
            for daemon in self.daemons.values():
                daemon.start()
            nginx_binary()
            self.ports = free_ports(list(self.daemons))
            vb = {name: d.port for name, d in self.daemons.items()}
            blocks = [
                # An edge that routes the webhook only: /twilio-media never reaches the daemon.
                tls_server(
                    self.ports["edge-drops-stream"],
                    leaf,
                    location("/voice", vb["edge-drops-stream"]) + " location / { return 404; }",
                ),
                tls_server(self.ports["proxy-strips-upgrade"], leaf, location("/", vb["proxy-strips-upgrade"], NO_UPGRADE)),
                tls_server(
                    self.ports["stream-host-rewritten"],
                    leaf,
                    location("/", vb["stream-host-rewritten"])
                    + location("/twilio-media", vb["stream-host-rewritten"], host="voicebridge-internal"),
                ),
                tls_server(self.ports["working"], leaf, location("/", vb["working"])),
            ]
            body = "map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n" + "\n".join(blocks)
            self.nginx = Nginx(directory / "nginx", body, list(self.ports.values())).start()
        except BaseException:
            self.stop()
            raise

    def options(self, name) -> ProbeOptions:
        route = [ConnectTo(HOST, None, "127.0.0.1", self.ports[name])]
        return ProbeOptions(WEBHOOK, auth_token=TOKEN, cafile=self.cafile, seconds=0.5, connect_to=route)

    def stop(self):
        if self.nginx is not None:
            self.nginx.stop()
        for daemon in self.daemons.values():
            daemon.stop()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    site = Scenarios(tmp_path_factory.mktemp("agree"))
    yield site
    site.stop()


@pytest.mark.nginx
@pytest_twisted.inlineCallbacks
def test_the_daemon_and_the_probe_name_the_same_layer(scenarios):
    from twisted.internet import reactor

    runs = {name: [run_probe(scenarios.options(name)) for _ in range(3)] for name in [*EXPECTED, "working"]}
    reports = {}
    for name, deferreds in runs.items():
        reports[name] = yield defer.gatherResults(deferreds)
    lines = []
    for name, (layer, code) in EXPECTED.items():
        daemon = scenarios.daemons[name]
        assert {r.diagnosis.code for r in reports[name]} == {code}, reports[name][0].text()
        error = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "service.streams_not_arriving", timeout=45)
        assert error["layer"] == layer, error
        missing = daemon.named("call.stream_missing")
        assert len(missing) == 3
        report = reports[name][0]
        lines.append(
            f"{name}:\n  daemon: [{error['layer']}] {error['explanation']}\n  probe:  [{code}] {report.diagnosis.message}"
        )
        lines.append(f"  call.stream_missing seen: {missing[0]['seen']}")
    print("\n".join(lines))
    rewritten = reports["stream-host-rewritten"][0]
    assert "403" in rewritten.step("handshake").summary
    fix = rewritten.diagnosis.fix
    assert "wss://voicebridge-internal/twilio-media" in fix and "Host voicebridge-internal" in fix
    assert "proxy_set_header Host $host" in fix and f"--public-url https://{HOST}" in fix
    edge = scenarios.daemons["edge-drops-stream"].named("service.streams_not_arriving")[0]
    assert HOST in edge["explanation"] and edge["probe"].endswith(f"voicebridge probe https://{HOST}/voice")

    # Where streams work, the probe says ok and the daemon declares nothing missing (a marker call, never
    # streamed, shows every earlier call has been decided).
    assert {r.diagnosis.code for r in reports["working"]} == {"ok"}
    working = scenarios.daemons["working"]
    form = call_form("CA" + "f" * 32)
    status, _, _ = post_form(working.port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(f"https://{HOST}/voice", form)})
    assert status == 200
    yield working.wait_for_async(reactor, lambda e: e.get("event_name") == "call.stream_missing", timeout=45)
    assert [e["callSid"] for e in working.named("call.stream_missing")] == ["CA" + "f" * 32]
    assert not working.named("service.streams_not_arriving")
