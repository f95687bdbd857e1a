"""The project's Dockerfile, built with podman and run as Fly.io, Render and Railway run it: PORT set,
a token in the environment, the command from fly.toml. Skipped where podman cannot run, except
under CI=true (tests/container.py). Prints the build time, the image's size and start to /healthz."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import tomllib

import pytest
import pytest_twisted

from tests.conftest import PUBLIC, TOKEN
from tests.container import Podman
from tests.daemon import REPO, Daemon
from tests.http import call_form, post_form, request
from tests.nginx import free_port
from voicebridge.tools.twiliosim import CallScript, play_call
from voicebridge.twilio.signatures import SignatureChecker

IMAGE = "localhost/voicebridge:test"
SIGNER = SignatureChecker(TOKEN)
STREAM_URL = PUBLIC.replace("https://", "wss://") + "/twilio-media"
STOP_TIMEOUT = 30  # podman stop's: SIGTERM, then SIGKILL this long after


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def image(podman):
    took = podman.build(REPO, IMAGE)
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\ncontainer: podman build {took:.1f}s, image {size / 1e6:.0f} MB")
    return IMAGE


def platform_command() -> list[str]:
    """fly.toml's command for the app, with this test's public URL."""
    command = shlex.split(tomllib.loads((REPO / "fly.toml").read_text())["processes"]["app"])
    command[command.index("--public-url") + 1] = PUBLIC
    return command


class Container:
    """One container, run attached (its log read as it comes, as tests/daemon.py reads a daemon's)."""

    def __init__(self, podman: Podman, image: str):
        self.podman = podman
        self.name = f"voicebridge-test-{os.getpid()}-{time.monotonic_ns()}"
        self.port = free_port()
        run = ["run", "--name", self.name, "--network", "host", "--read-only"]
        run += ["-e", f"PORT={self.port}", "-e", "TWILIO_AUTH_TOKEN", image, *platform_command()]
        env = {"CONTAINERS_CONF": podman.env["CONTAINERS_CONF"], "TWILIO_AUTH_TOKEN": TOKEN}  # not on the command line
        self.daemon = Daemon(command=podman.command(*run), env=env)

    def start(self) -> float:
        """Seconds from ``podman run`` to a 200 on /healthz."""
        began = time.monotonic()
        self.daemon.start(wait=False)
        deadline = began + 60
        while time.monotonic() < deadline:
            try:
                if request(self.port, "GET", "/healthz")[0] == 200:
                    took = time.monotonic() - began
                    self.daemon.wait_for(lambda e: e.get("event_name") == "service.listening", 10)
                    self.daemon.port = self.port
                    return took
            except OSError:
                pass
            if self.daemon.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no /healthz from the container:\n{self.daemon.output[-3000:]}")

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return self.podman.run("exec", self.name, *command, check=False)

    def logs(self) -> tuple[list[str], str]:
        """What the platform reads: the container's stdout lines, and its stderr."""
        result = self.podman.run("logs", self.name)
        return result.stdout.splitlines(), result.stderr

    def remove(self) -> None:
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.podman.run("stop", "-t", "5", self.name, check=False, timeout=60)
            self.daemon.stop()
        self.podman.run("rm", "-f", self.name, check=False)


@pytest.fixture
def container(podman, image):
    made = []

    def start():
        c = Container(podman, image)
        made.append(c)
        print(f"container: start to /healthz {c.start():.2f}s")
        return c

    yield start
    for c in made:
        c.remove()


def every_line_is_json(lines: list[str]) -> list[dict]:
    assert lines
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"time", "level", "event", "message", "logger"} <= set(r) for r in records)
    return records


@pytest_twisted.inlineCallbacks
def test_the_image_serves_as_the_platforms_run_it(container):
    from twisted.internet import reactor

    c = container()
    assert request(c.port, "GET", "/healthz")[0] == 200
    health = c.podman.run("healthcheck", "run", c.name, check=False)
    assert health.returncode == 0, f"the image's HEALTHCHECK, run inside it: {health.stdout}{health.stderr}"
    form = call_form()
    status, _, body = post_form(c.port, "/voice", form, {"X-Twilio-Signature": SIGNER.sign(f"{PUBLIC}/voice", form)})
    assert status == 200 and STREAM_URL.encode() in body, body
    assert post_form(c.port, "/voice", form, {"X-Twilio-Signature": "forged"})[0] == 403, "the token is in force"
    url = c.daemon.url("/twilio-media", "ws")
    outcome = yield play_call(reactor, url, CallScript(frames=50), signature=SIGNER.sign(STREAM_URL))
    assert outcome.opened and outcome.received == outcome.sent, "every frame echoed through the container"
    yield c.daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.ended")

    status = c.exec("cat", "/proc/1/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["10001"] * 4, f"the daemon runs as the image's user, not root: {uid_line}"
    written = c.exec("touch", "/app/written")
    assert written.returncode != 0 and "Read-only file system" in written.stderr

    lines, stderr = c.logs()
    records = every_line_is_json(lines)
    assert stderr == "", "nothing but the log, on stdout"
    names = {r["event"] for r in records}
    assert {"service.listening", "webhook.answered", "webhook.refused", "call.started", "call.ended"} <= names
    assert "DEVELOPMENT MODE" not in "\n".join(lines)


@pytest_twisted.inlineCallbacks
def test_podman_stop_during_a_call_drains_it_and_exits_0(container):
    from twisted.internet import reactor, threads

    c = container()
    call = play_call(reactor, c.daemon.url("/twilio-media", "ws"), CallScript(frames=300), signature=SIGNER.sign(STREAM_URL))
    yield c.daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")
    began = time.monotonic()
    stop = threads.deferToThread(c.podman.run, "stop", "-t", str(STOP_TIMEOUT), c.name, timeout=STOP_TIMEOUT + 30)
    draining = yield c.daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "service.draining")
    assert draining["count"] == 1, "the drain began with the call live"
    outcome = yield call
    assert outcome.received == outcome.sent and len(outcome.sent) == 300, "the call went on to its end"
    stopped = yield stop
    print(f"container: podman stop with a live call: {time.monotonic() - began:.1f}s (timeout {STOP_TIMEOUT}s)")
    assert stopped.returncode == 0, stopped.stderr
    assert c.daemon.wait_exit(10) == 0, "exit 0: drained, not killed (137)"
    exited = c.podman.run("inspect", "--format", "{{.State.ExitCode}}", c.name).stdout.strip()
    assert exited == "0"
    events = [r["event"] for r in every_line_is_json(c.logs()[0])]
    assert events.index("service.draining") < events.index("call.ended") < events.index("service.drained")
