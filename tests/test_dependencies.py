"""Dependencies: bounded below the next major; the tested versions in constraints.txt, which the image and the tests use."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.daemon import REPO


def setup_requirements() -> tuple[list[Requirement], list[Requirement]]:
    """setup.py's install_requires and its test extra."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return [Requirement(r) for r in keywords["install_requires"]], [Requirement(r) for r in keywords["extras_require"]["test"]]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_every_dependency_is_bounded_below_its_next_major():
    install, _ = setup_requirements()
    for requirement in install:
        uppers = [s for s in requirement.specifier if s.operator == "<"]
        assert uppers, f"{requirement}: no upper bound"
        (lower,) = [s for s in requirement.specifier if s.operator == ">="]
        assert int(uppers[0].version.split(".")[0]) > int(lower.version.split(".")[0]), requirement


def test_constraints_pin_every_dependency_within_the_bounds():
    install, test = setup_requirements()
    pins = constraints()
    for requirement in install + test:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # audioop-lts: Python 3.13+ only
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{requirement}: constraints.txt has {pins[name]}"


def test_the_image_and_the_tests_install_the_tested_versions():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install [^\n]*-c constraints\.txt \.", dockerfile, re.M)
    assert "!constraints.txt" in (REPO / ".dockerignore").read_text().split()
    script = (REPO / "scripts" / "test").read_text()
    assert "-c constraints.txt" in script and "pytest -n auto" in script


def test_ci_runs_the_suite_again_on_the_newest_releases_and_fails_with_it():
    ci = (REPO / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert "scripts/test" in lines and "scripts/test --newest" in lines
    assert lines.index("scripts/test") < lines.index("scripts/test --newest")


@pytest.mark.parametrize("tested, newest", [(0, 0), (1, 0), (0, 1), (5, 0)])
def test_ci_fails_when_either_run_fails(tested, newest, tmp_path):
    """.ci/run itself, with scripts/test standing in: each exit status as given (5: pytest collected nothing)."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    stub = tmp_path / "scripts" / "test"
    stub.write_text(f'#!/bin/sh\nif [ "$1" = --newest ]; then echo newest; exit {newest}; fi\necho tested; exit {tested}\n')
    stub.chmod(0o755)
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines()[0] == "tested" and "newest" in done.stdout.splitlines(), "both run, in order"
    assert (done.returncode == 0) is (tested == 0 and newest == 0), done.stdout + done.stderr
