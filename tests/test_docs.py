"""The README is part of the product: its commands run in CI and it documents every option."""

import re

from tests.daemon import REPO
from voicebridge.tap import Options


def quick_start_commands():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    run, test = commands
    assert "twist voicebridge" in run
    assert test in (REPO / ".ci" / "run").read_text()


def test_every_daemon_option_is_documented():
    readme = (REPO / "README.md").read_text()
    options = Options()
    flags = [name for name, *_ in options.optParameters] + [name for name, *_ in options.optFlags]
    flags += [
        name[4:].replace("_", "-") for name in dir(options) if name.startswith("opt_") and name not in ("opt_help", "opt_version")
    ]
    for flag in flags:
        assert f"--{flag}" in readme, f"--{flag} is not in the README"
