"""The systemd units: hardened (systemd-analyze security), clean (systemd-analyze verify), and right.

``verify`` checks that ExecStart's binary exists. Rather than edit the unit under test, each
check builds a throwaway root holding the host's own system units, an executable stand-in at each
path the unit runs, and the unit file byte for byte; ``verify --root`` then judges the real file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import REPO, Daemon, twist_command
from tests.http import request
from tests.nginx import free_port, wait_listening
from voicebridge.daemon.drain import Drain
from voicebridge.daemon.tap import Options

UNITS = {
    "tls": [REPO / "systemd" / "voicebridge.service"],
    "socket-activated": [
        REPO / "systemd" / "socket-activated" / "voicebridge.socket",
        REPO / "systemd" / "socket-activated" / "voicebridge.service",
    ],
}
MAX_EXPOSURE = 2.5


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing, and CI=true requires it (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); it scores and verifies the units")
    return path


def service_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit (continuations joined), every value of repeated keys."""
    settings: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exec_paths(units) -> set[str]:
    paths = set()
    for unit in units:
        for key, values in service_settings(unit).items():
            if key.startswith("Exec"):
                paths.update(shlex.split(v)[0].lstrip("-@:+!") for v in values)
    return paths


def fake_root(tmp_path: Path, units) -> Path:
    """The host's units, stand-ins for the binaries the units run, and the units themselves."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in units:
        shutil.copyfile(unit, root / "etc/systemd/system" / unit.name)
    for path in exec_paths(units):
        stand_in = root / path.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    return root


@pytest.mark.parametrize("variant", UNITS)
def test_units_verify_clean(tmp_path, variant):
    analyze = systemd_analyze()
    units = UNITS[variant]
    root = fake_root(tmp_path, units)
    result = subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", *(u.name for u in units)], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_in_the_fake_root_does_find_mistakes(tmp_path):
    """The harness can fail: the same check on a unit with a mistake reports it."""
    analyze = systemd_analyze()
    broken = tmp_path / "voicebridge.service"
    broken.write_text(
        UNITS["tls"][0].read_text().replace("TimeoutStopSec=", "TimeoutStopSecs=").replace("Type=notify", "Type=notfy")
    )
    root = fake_root(tmp_path, [broken])
    result = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", broken.name], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert "TimeoutStopSecs" in output and "notfy" in output


@pytest.mark.parametrize("unit", [UNITS["tls"][0], UNITS["socket-activated"][1]], ids=["tls", "socket-activated"])
def test_units_are_hardened(unit):
    analyze = systemd_analyze()
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"{unit.relative_to(REPO)}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", [UNITS["tls"][0], UNITS["socket-activated"][1]], ids=["tls", "socket-activated"])
def test_unit_runs_the_daemon_as_documented(unit, tmp_path, pki):
    settings = service_settings(unit)
    assert settings["Type"] == ["notify"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    assert "root" not in settings.get("User", [])
    assert settings.get("User") or settings.get("DynamicUser") == ["yes"]
    assert "MemoryDenyWriteExecute" not in settings, "pyOpenSSL's cffi callbacks need W+X memory: TLS would fail"
    (exec_start,) = settings["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/opt/voicebridge/bin/twist", "voicebridge"]
    # The flags are the daemon's own: the options parser accepts them as they stand.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "twilio-auth-token").write_text("token-from-systemd\n")
    # The files the unit names, where it names them (under tmp_path).
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    leaf = pki.leaf()
    shutil.copy(leaf.key, tls_dir / "privkey.pem")
    shutil.copy(leaf.fullchain, tls_dir / "fullchain.pem")
    options = Options()
    options.parseOptions([a.replace("%d", str(credentials)).replace("/etc/voicebridge/tls", str(tls_dir)) for a in argv[2:]])
    assert options["auth_token"] == "token-from-systemd"
    assert options["log-format"] == "journald", "each line's priority, for journalctl -p"
    assert settings["LoadCredential"] == ["twilio-auth-token:/etc/voicebridge/twilio-auth-token"]
    drain = options["limits"].drain_timeout
    stop = float(settings["TimeoutStopSec"][0])
    assert stop > drain + Drain.grace, f"TimeoutStopSec={stop} must outlast the drain ({drain}s) and its close handshakes"


def test_tls_unit_binds_443_through_one_capability_only():
    settings = service_settings(UNITS["tls"][0])
    assert settings["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert shlex.split(settings["ExecStart"][0])[3].startswith("ssl:443:privateKey=")


def test_socket_activated_unit_holds_no_capability():
    settings = service_settings(UNITS["socket-activated"][1])
    assert settings["CapabilityBoundingSet"] == [""]
    assert "AmbientCapabilities" not in settings
    socket_settings = service_settings(UNITS["socket-activated"][0])
    assert socket_settings["FileDescriptorName"] == ["voicebridge"]


def test_socket_activation_for_real(tmp_path):
    """systemd's own socket-activate tool holds the port and execs the daemon, as the .socket unit does."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate is missing, and CI=true requires it (apt-get install systemd)")
        pytest.skip("systemd-socket-activate is not installed (apt-get install systemd)")
    port = free_port()
    settings = service_settings(UNITS["socket-activated"][1])
    listen = next(a for a in shlex.split(settings["ExecStart"][0]) if a.startswith("systemd:"))
    daemon = Daemon(
        ["--listen", listen],
        # The tool passes on only the environment it is told to, as systemd does.
        command=[activate, "--fdname=voicebridge", "-E", "PYTHONPATH", "-E", "PYTHONUNBUFFERED", "-l", f"127.0.0.1:{port}"]
        + [*twist_command(), "voicebridge"],
    )
    daemon.start(wait=False)
    try:
        wait_listening(port)
        assert request(port, "GET", "/healthz")[0] == 200  # the first connection starts the daemon
        listening = daemon.wait_for(lambda e: e.get("event_name") == "service.listening")
        assert listening["addresses"] == f"systemd 127.0.0.1:{port}"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(15) == 0
    finally:
        daemon.stop()


def test_memory_deny_write_execute_would_break_tls(pki, tmp_path):
    """Why the units leave MemoryDenyWriteExecute= out: the kernel's equivalent (PR_SET_MDWE) breaks TLS."""
    probe = subprocess.run(
        [sys.executable, "-c", "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"],
    )
    if probe.returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    leaf = pki.leaf()
    wrapper = [
        sys.executable,
        "-c",
        "import ctypes,os,sys; assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0; os.execv(sys.argv[1], sys.argv[1:])",
    ]
    daemon = Daemon(
        ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={leaf.key}:certKey={leaf.fullchain}"],
        command=[*wrapper, *twist_command(), "voicebridge"],
    )
    daemon.start(wait=False)
    assert daemon.wait_exit(30) != 0
    assert "Cannot allocate write+execute memory for ffi.callback()" in daemon.output
