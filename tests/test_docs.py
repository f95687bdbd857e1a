"""The README is part of the product: its commands run in CI and it documents every option, with its default."""

import re

import pytest

from tests.daemon import REPO
from voicebridge import fleet
from voicebridge.config import limits
from voicebridge.config.file import DEFAULT_HANDLER
from voicebridge.daemon import tap
from voicebridge.daemon.tap import Options
from voicebridge.handlers import relay
from voicebridge.handlers.openai_realtime import options as openai_realtime_options

# Fleet flags whose Options default is None (so that one given without --redis is noticed).
FLEET_DEFAULTS = {"fleet-lease": fleet.DEFAULT_LEASE, "fleet-name": "voicebridge", "redis-unavailable": "admit"}


def readme() -> str:
    return (REPO / "README.md").read_text()


def quick_start_commands():
    section = readme().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    run, test = commands
    assert "twist voicebridge" in run
    assert test in (REPO / ".ci" / "run").read_text()


def daemon_flags() -> list[str]:
    options = Options()
    flags = [name for name, *_ in options.optParameters] + [name for name, *_ in options.optFlags]
    flags += [
        name[4:].replace("_", "-") for name in dir(options) if name.startswith("opt_") and name not in ("opt_help", "opt_version")
    ]
    return flags


def mentions(text: str, flag: str) -> bool:
    """The whole flag: ``--auth-token`` is not found in ``--auth-token-file``."""
    return re.search(rf"(?<![\w-])--{re.escape(flag)}(?![\w-])", text) is not None


def test_mentions_match_whole_flags_only():
    assert mentions("use `--auth-token-file FILE`", "auth-token-file")
    assert not mentions("use `--auth-token-file FILE`", "auth-token")
    assert not mentions("--max-calls-per-tenant", "max-calls")


def test_every_daemon_option_is_documented():
    text = readme()
    for flag in daemon_flags():
        assert mentions(text, flag), f"--{flag} is not in the README"


def options_rows() -> dict[str, str]:
    """The README's daemon options table: flag -> its row."""
    section = readme().split("\n## Options\n", 1)[1].split("\n| Environment |", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `--([\w-]+)", line)
        if match:
            rows[match.group(1)] = line
    return rows


def effective_default(flag: str):
    """What the daemon does when the flag is not given."""
    for option_flag, attr, _kind, _help in limits.OPTIONS:
        if option_flag == flag:
            return getattr(limits.Limits, attr)
    if flag in tap.HANDLER_FLAGS:
        handler, key = tap.HANDLER_FLAGS[flag]
        defaults = {"relay": relay.DEFAULTS, "openai-realtime": openai_realtime_options.DEFAULTS}.get(handler, {})
        return defaults.get(key)
    if flag == "handler":
        return DEFAULT_HANDLER
    if flag in FLEET_DEFAULTS:
        return FLEET_DEFAULTS[flag]
    for name, _short, default, *_rest in tap.Options.optParameters:
        if name == flag and default is not None:
            return default
    return None


def documented_default(row: str):
    match = re.search(r"[Dd]efault:? `?([\w.-]+)", row)
    if match is None:
        return "undocumented"
    text = match.group(1)
    if text == "no":
        return None  # "Default: no limit"
    try:
        return float(text)
    except ValueError:
        return text


@pytest.mark.parametrize("flag", sorted(options_rows()))
def test_documented_defaults_are_the_daemons(flag):
    row = options_rows()[flag]
    default = effective_default(flag)
    documented = documented_default(row)
    if default is None and documented in ("undocumented", None, "none", "the", "hangup", "they", "tcp"):
        return  # no default value (or one that is a sentence): nothing to compare
    assert documented != "undocumented", f"--{flag}: the README does not give the default ({default})"
    assert documented == (float(default) if isinstance(default, int | float) else default), row


def test_the_default_listen_is_documented():
    assert f"`tcp:{tap.DEFAULT_PORT}`" in options_rows()["listen"] and "`tcp:$PORT`" in options_rows()["listen"]


def test_every_folder_and_top_level_module_is_in_the_layout_table():
    section = readme().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    folders = set(re.findall(r"\| `voicebridge/([\w/]*)` \|", section))
    top_modules = set(re.findall(r"`(\w+\.py)`", section.split("| `voicebridge/` |", 1)[1].split("\n", 1)[0]))
    actual_folders = {f"{p.parent.relative_to(REPO / 'voicebridge')}/" for p in (REPO / "voicebridge").glob("*/__init__.py")}
    assert actual_folders - {f + "/" if not f.endswith("/") else f for f in folders} == set()
    assert {p.name for p in (REPO / "voicebridge").glob("*.py")} - top_modules == set()


@pytest.mark.parametrize("path", ["README.md", "docs/handlers.md", "docs/deploy.md"])
def test_every_toml_example_is_valid_toml(path):
    """A config example a reader copies must load (TOML cannot add a table to an inline one, for instance)."""
    import tomllib

    for block in re.findall(r"```toml\n(.*?)```", (REPO / path).read_text(), re.S):
        tomllib.loads(block)
