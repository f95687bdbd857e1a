"""Podman for tests: the project's Dockerfile built and run for real, with no registry reachable.

The base image stands in for ``python:3.12-slim`` (the Dockerfile's ``BASE_IMAGE``): Debian
bookworm with python3 and its venv module, made by mmdebstrap from this machine's apt sources and
imported into podman's store once per machine (``localhost/voicebridge-base:bookworm``); a fresh
clone on a machine without it builds it (about 40 s). podman runs with runc and cgroupfs, no
default ulimits (containers.conf) and the host's network: what works on these machines.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BASE_IMAGE = "localhost/voicebridge-base:bookworm"
LOCK = Path(tempfile.gettempdir()) / "voicebridge-podman.lock"  # one build at a time, across test processes
LABEL = "voicebridge.test=1"  # images the tests built: the previous one is removed once replaced
CONTAINERS_CONF = "[containers]\ndefault_ulimits = []\n"


def unavailable(problem: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}, and CI=true requires it (apt-get install podman mmdebstrap runc uidmap)")
    pytest.skip(problem)


class Podman:
    def __init__(self, workdir: Path):
        for tool in ("podman", "runc", "mmdebstrap"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                unavailable(f"{tool} is not installed")
        if os.geteuid() != 0:
            unavailable("these tests run podman as root (rootless podman needs subordinate ids set up)")
        self.workdir = workdir
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        try:
            self.run("info", timeout=60)
        except subprocess.CalledProcessError as e:
            unavailable(f"podman cannot run here: {e.stderr[-2000:]}")

    def command(self, *args: str) -> list[str]:
        return ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", *args]

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), env=self.env, **kwargs)

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0

    def base_image(self) -> str:
        """The bookworm base, made once per machine."""
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.exists(BASE_IMAGE):
                began = time.monotonic()
                tar = self.workdir / "base.tar"
                subprocess.run(
                    [
                        "mmdebstrap",
                        "--variant=minbase",
                        "--include=python3,python3-venv",
                        "bookworm",
                        str(tar),
                        *apt_sources(),
                    ],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=True,
                )
                self.run("import", str(tar), BASE_IMAGE, timeout=300)
                tar.unlink()
                print(f"\ncontainer: base image {BASE_IMAGE} made in {time.monotonic() - began:.1f}s (once per machine)")
        return BASE_IMAGE

    def build(self, context: Path, tag: str) -> float:
        """``podman build`` of ``context``'s Dockerfile on the base image; returns the seconds it took."""
        base = self.base_image()
        mounts = []
        for path in ("/etc/pip.conf", "/etc/ssl/certs"):  # pip's configuration and CA bundle, as on the host
            if os.path.exists(path):
                mounts += ["-v", f"{path}:{path}:ro"]
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            began = time.monotonic()
            result = self.run(
                "build",
                "--format",
                "docker",  # keeps HEALTHCHECK, as Docker does
                "--network",
                "host",
                *mounts,
                "--build-arg",
                f"BASE_IMAGE={base}",
                "--label",
                LABEL,
                "-t",
                tag,
                str(context),
                timeout=1200,
                check=False,
            )
            took = time.monotonic() - began
            self.run("image", "prune", "-f", "--filter", f"label={LABEL}", check=False)  # the last run's image, untagged now
        if result.returncode != 0:
            raise AssertionError(f"podman build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return took


def apt_sources() -> list[str]:
    """This machine's apt sources for bookworm (mmdebstrap pastes each file into the image's sources)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    found = [
        str(p)
        for p in candidates
        if p.is_file() and p.suffix in (".list", ".sources") and "bookworm" in p.read_text(errors="replace")
    ]
    return found or ["http://deb.debian.org/debian"]
