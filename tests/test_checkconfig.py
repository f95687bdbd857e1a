"""``voicebridge check-config``: the same checks as start-up, and a listing of where each number goes."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.daemon import REPO, source_env
from tests.http import call_form, post_form

CONFIG = """
handler = "echo"
unknown_tenant = "default"

[handlers.relay]
url = "wss://app.example.test/media?token=s3cr3t"
fallback = "say"

[default]
plan = "basic"

[tenants.business-1]
numbers = ["+1 555 010-0001", "+15550100002"]
plan = "pro"
handler = "relay"
max_calls = 10

[tenants.business-2]
handler = "echo"
[tenants.business-2.handler_options]
api_key = "sk-live-abcdef"
greeting = "hello there"

[tenants.recorded]
numbers = ["+15550100009"]
handler = "record"
[tenants.recorded.handler_options]
dir = "{dir}"
handler = "relay"
[tenants.recorded.handler_options.relay]
url = "ws://127.0.0.1:9/recorded"
"""


def check(path, *options):
    return subprocess.run(
        [sys.executable, "-m", "voicebridge", "check-config", str(path), *options],
        env=source_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(stdout: str) -> dict:
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NUMBER"))
    return {line.split()[0]: line for line in lines[header + 1 :] if line.strip()}


def test_a_valid_config_lists_every_number_with_its_route(tmp_path):
    path = tmp_path / "vb.toml"
    path.write_text(CONFIG.replace("{dir}", str(tmp_path)))
    out = check(path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{path}: valid. 3 tenant(s), 3 number(s); unknown callers: the [default] section.")
    table = rows(out.stdout)
    assert set(table) == {"+15550100001", "+15550100002", "+15550100009", "(businessId", "(other)"}
    first = table["+15550100001"].split()
    assert first[:5] == ["+15550100001", "business-1", "pro", "10", "relay"]
    assert "url=wss://app.example.test/media?..." in table["+15550100001"] and "fallback=say" in table["+15550100001"]
    assert "record > relay" in table["+15550100009"] and f"dir={tmp_path}" in table["+15550100009"]
    assert "relay.url=ws://127.0.0.1:9/recorded" in table["+15550100009"]
    assert "business-2" in table["(businessId"] and "api_key=***" in table["(businessId"]
    assert "greeting='hello there'" in table["(businessId"]
    assert table["(other)"].split()[:5] == ["(other)", "default", "basic", "-", "echo"]
    assert "s3cr3t" not in out.stdout and "sk-live" not in out.stdout, "secrets never printed"


def test_refused_unknown_callers_are_said_so(tmp_path):
    path = tmp_path / "vb.toml"
    path.write_text('unknown_tenant = "refuse"\n[tenants.b1]\nnumbers = ["+15550100001"]\n')
    out = check(path)
    assert out.returncode == 0, out.stderr
    assert "unknown callers: refused (<Reject/>)" in out.stdout
    assert "refused" in rows(out.stdout)["(other)"]


def test_daemon_options_count_as_they_would_at_start_up(tmp_path):
    path = tmp_path / "vb.toml"
    path.write_text('[tenants.b1]\nnumbers = ["+15550100001"]\n')
    out = check(path, "--handler", "relay", "--relay-url", "ws://127.0.0.1:9/app")
    assert out.returncode == 0, out.stderr
    assert "relay" in rows(out.stdout)["+15550100001"] and "url=ws://127.0.0.1:9/app" in out.stdout


def test_a_bad_config_exits_non_zero_with_the_precise_error(tmp_path):
    cases = {
        '[tenants.b1]\nnumbers = ["call me"]\n': "tenants.b1.numbers[0]: 'call me' is not a phone number",
        '[tenants.b1]\nhandler = "relay"\n': "handler 'relay' for tenant b1: url: required",
        "[handlers.recrod]\n": "[handlers.recrod]: no handler named 'recrod'",
        "[tenants.b1\n": "is not valid TOML",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        out = check(path)
        assert out.returncode == 1 and out.stdout == "", out
        assert message in out.stderr, out.stderr
    out = check(tmp_path / "missing.toml")
    assert out.returncode == 1 and "cannot read config" in out.stderr


def test_settings_for_a_handler_no_call_uses_are_a_mistake(tmp_path):
    path = tmp_path / "vb.toml"
    path.write_text("")
    out = check(path, "--relay-url", "ws://127.0.0.1:9/app", "--relay-fallback", "say")
    assert out.returncode == 1
    assert "--relay-url, --relay-fallback: no call uses the relay handler; add --handler NAME" in out.stderr


# check-config and the running daemon must say the same about a call that names no tenant.
UNKNOWN_CALLER_CONFIGS = {
    "default-section": ('[default]\nplan = "basic"\n[tenants.b1]\nnumbers = ["+15550100001"]\n', "default"),
    "no-default-section": ('[tenants.b1]\nnumbers = ["+15550100001"]\n', "-"),
    "refuse": ('unknown_tenant = "refuse"\n[tenants.b1]\nnumbers = ["+15550100001"]\n', "refused"),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN_CALLER_CONFIGS))
def test_check_config_and_the_daemon_agree_on_unknown_callers(tmp_path, start_daemon, case):
    text, expected = UNKNOWN_CALLER_CONFIGS[case]
    path = tmp_path / "vb.toml"
    path.write_text(text)
    out = check(path)
    assert out.returncode == 0, out.stderr
    other = rows(out.stdout)["(other)"].split()
    said = "refused" if "refused" in other else other[1]
    assert said == expected

    daemon = start_daemon("--config", str(path))
    status, _, body = post_form(daemon.port, "/voice", call_form(to="+15559990001"))
    assert status == 200, body
    answer = ET.fromstring(body)
    if expected == "refused":
        assert answer.find("./Reject") is not None and answer.find("./Connect") is None
        assert daemon.wait_for(lambda e: e.get("event_name") == "webhook.no_tenant")["callSid"] == "CA" + "1" * 32
    else:
        parameters = {p.get("name"): p.get("value") for p in answer.iter("Parameter")}
        assert parameters.get("plan") == ("basic" if expected == "default" else None)
        answered = daemon.wait_for(lambda e: e.get("event_name") == "webhook.answered")
        assert answered["tenant"] == expected
