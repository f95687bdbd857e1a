"""The small tools share the daemon's rules: one way to read the auth token, one way to read NAME=VALUE."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import TOKEN
from tests.daemon import REPO, Daemon, source_env
from voicebridge.tools.probe import ProbeOptions
from voicebridge.twilio.signatures import SignatureChecker

URL = "https://voice.example.test/voice"


def tool(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "voicebridge", *args], env=source_env(env), cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_sign_reads_the_token_from_the_environment_or_a_file(tmp_path):
    expected = SignatureChecker(TOKEN).sign(URL, [("To", "+15550100001"), ("x", "a=b")])
    from_env = tool("sign", URL, "To=+15550100001", "x=a=b", env={"TWILIO_AUTH_TOKEN": TOKEN})
    assert (from_env.returncode, from_env.stdout.strip()) == (0, expected), from_env.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    from_file = tool("sign", "--auth-token-file", str(token_file), URL, "To=+15550100001", "x=a=b")
    assert (from_file.returncode, from_file.stdout.strip()) == (0, expected), from_file.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([URL], "set TWILIO_AUTH_TOKEN or --auth-token-file"),
        (["--auth-token-file", "EMPTY", URL], "--auth-token-file EMPTY is empty"),
        (["--auth-token-file", "/nonexistent/token", URL], "--auth-token-file /nonexistent/token: No such file"),
        ([URL, "novalue"], "'novalue' is not NAME=VALUE"),
    ],
)
def test_sign_refuses_precisely(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    out = tool("sign", *args, env={"TWILIO_AUTH_TOKEN": TOKEN} if "novalue" in args else None)
    assert out.returncode == 2 and message.replace("EMPTY", str(empty)) in out.stderr, out.stderr


def test_an_empty_token_file_is_the_same_error_everywhere(tmp_path):
    """An empty file never silently means "no token" (the probe used to go unsigned)."""
    empty = tmp_path / "token"
    empty.write_text("  \n")
    expected = f"--auth-token-file {empty} is empty"
    probe = tool("probe", "--auth-token-file", str(empty), URL)
    assert probe.returncode == 2 and expected in probe.stderr, probe.stderr
    sign = tool("sign", "--auth-token-file", str(empty), URL)
    assert sign.returncode == 2 and expected in sign.stderr
    daemon = Daemon(["--auth-token-file", str(empty)])
    daemon.start(wait=False)
    assert daemon.wait_exit(30) != 0 and expected in daemon.output


def test_the_probes_options_never_show_the_token():
    options = ProbeOptions(URL, auth_token=TOKEN)
    assert TOKEN not in repr(options) and options.auth_token == TOKEN
