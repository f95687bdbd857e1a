"""Mistakes at start-up get one line naming the flag, the value and the fix (issue 14, part 3).

Real ``twist voicebridge`` / ``voicebridge run`` / ``twistd`` processes; the pure checks of
voicebridge/daemon/startup.py are tested without processes below them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import REPO, source_env, twist_command
from voicebridge.daemon import startup
from voicebridge.daemon.startup import ListenError, bind_error, check_listen, usage_line


def run(command, timeout=60, env=None):
    out = subprocess.run(command, env=source_env(env), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def twist(*args, env=None):
    return run([*twist_command(), "voicebridge", *args], env=env)


def assert_one_line(status: int, output: str, *needles: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert status != 0, output
    assert "Traceback" not in output and "Usage:" not in output, output
    assert len(lines) <= 2, output  # the line, and at most one hint
    for needle in needles:
        assert needle in lines[0], output


@pytest.mark.parametrize(
    "listen, needles",
    [
        ("garbage", ("--listen 'garbage'", "not garbage:", "tcp:PORT", "e.g. --listen tcp:8080")),
        ("8080", ("--listen '8080'", "--listen tcp:8080")),
        ("tpc:8080", ("did you mean tcp:...",)),
        ("tcp:notaport", ("--listen tcp:notaport", "'notaport' is not a TCP port number")),
        ("tcp:8080:interface=10.255.254.253", ("no address 10.255.254.253", "0.0.0.0")),
        ("tcp:8080:interface=eth-nope", ("'eth-nope' is not an IP address",)),
        ("ssl:8443:privateKey=/nonexistent/key.pem:certKey=/nonexistent/cert.pem", ("--listen ssl:8443", "/nonexistent/key.pem")),
    ],
)
def test_a_bad_listen_value_is_one_line(listen, needles):
    status, output = twist("--listen", listen)
    assert status == 64
    assert_one_line(status, output, *needles)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_port_in_use_is_one_line_naming_it(workers):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        status, output = twist(*workers, "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert_one_line(status, output, f"port {port} on 127.0.0.1 is in use", "ss -ltnp")


def test_a_misspelt_flag_under_voicebridge_run_and_twistd():
    status, output = run([sys.executable, "-m", "voicebridge", "run", "--lisen", "tcp:8080"])
    assert_one_line(status, output, "option --lisen not recognized; did you mean --listen?")
    twistd = str(Path(sys.executable).with_name("twistd"))
    status, output = run([twistd, "-n", "--pidfile=", "voicebridge", "--listen", "garbage"])
    assert_one_line(status, output, "--listen 'garbage'")


@pytest.mark.parametrize("route", ["/voice", "/twilio-media", "/connect-action", "/vb/voice/"])
def test_a_public_url_ending_in_a_route_is_refused_with_the_url_to_use(route):
    base = "https://voice.example.test" + ("/vb" if route.startswith("/vb") else "")
    status, output = twist("--public-url", "https://voice.example.test" + route)
    assert_one_line(status, output, f"Use --public-url {base}")


@pytest.mark.parametrize("number", ["555-010-0001", "555", "+0123", "+1234567890123456789", "+1234567"])
def test_tenant_numbers_must_be_e164(tmp_path, number):
    path = tmp_path / "vb.toml"
    path.write_text(f'[tenants.b1]\nnumbers = ["{number}"]\n')
    status, output = twist("--config", str(path))
    assert_one_line(status, output, "tenants.b1.numbers[0]", "E.164")
    status, output = run([sys.executable, "-m", "voicebridge", "check-config", str(path)])
    assert status == 1 and "tenants.b1.numbers[0]" in output and "E.164" in output


def test_check_config_checks_listen_as_start_up_does(tmp_path):
    path = tmp_path / "vb.toml"
    path.write_text("")
    status, output = run([sys.executable, "-m", "voicebridge", "check-config", str(path), "--listen", "tcp:notaport"])
    assert status == 1 and "--listen tcp:notaport: port 'notaport' is not a TCP port number" in output


@pytest.mark.parametrize(
    "text, key",
    [
        ('handler = "nosuch"\n', "handler: no handler named 'nosuch'"),
        ('[tenants.b1]\nnumbers = ["+15550100001"]\nhandler = "nosuch"\n', "tenants.b1.handler: no handler named"),
        ('[default]\nhandler = "nosuch"\n', "default.handler: no handler named"),
    ],
)
def test_an_unknown_handler_names_its_key(tmp_path, text, key):
    path = tmp_path / "vb.toml"
    path.write_text(text)
    status, output = run([sys.executable, "-m", "voicebridge", "check-config", str(path)])
    assert status == 1 and key in output, output


# The pure checks.


def test_check_listen_accepts_what_twisted_serves():
    for good in (
        "tcp:8080",
        "tcp:0:interface=127.0.0.1",
        "tcp6:8080:interface=\\:\\:1",
        "unix:/tmp/vb.sock",
        "systemd:domain=INET:index=0",
    ):
        check_listen(good, has_interface=lambda address: True)


def test_check_listen_refusals_name_the_value():
    with pytest.raises(ListenError, match="no address 192.0.2.7"):
        check_listen("tcp:80:interface=192.0.2.7", has_interface=lambda address: False)
    with pytest.raises(ListenError, match="directory /nonexistent-dir does not exist"):
        check_listen("unix:/nonexistent-dir/vb.sock")
    with pytest.raises(ListenError, match="unknown key"):
        check_listen("tcp:80:inteface=127.0.0.1")


def test_bind_errors_in_words():
    import errno

    from twisted.internet.error import CannotListenError

    privileged = bind_error("tcp:80", CannotListenError("", 80, OSError(errno.EACCES, "Permission denied")))
    assert "below 1024" in privileged and "CAP_NET_BIND_SERVICE" in privileged
    in_use = bind_error("tcp:8080", CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "in use")))
    assert "port 8080 on 127.0.0.1 is in use" in in_use


def test_usage_line_suggests_the_flag_meant():
    assert usage_line("option --lisen not recognized", ["listen", "public-url"]).endswith("did you mean --listen?")
    assert usage_line("something else", ["listen"]) == "something else"
    assert startup.handler_key(None, None, {}, "[handlers.x]: no handler named 'x'") is None


def test_check_config_refuses_a_public_url_ending_in_a_route(tmp_path):
    path = tmp_path / "vb.toml"
    path.write_text("")
    status, output = run(
        [sys.executable, "-m", "voicebridge", "check-config", str(path), "--public-url", "https://voice.example.test/voice"]
    )
    assert status == 1 and "Use --public-url https://voice.example.test" in output, output
