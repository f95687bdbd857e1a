"""Every line the daemon logs names its event (``event_name``), and the README lists every event."""

from __future__ import annotations

import ast
import re

from tests.daemon import REPO

LEVELS = {"debug", "info", "warn", "error", "critical", "failure"}
EXEMPT: set[str] = set()


def log_calls():
    """(module, line, event_name or None) for every ``log.LEVEL(...)`` call in voicebridge/."""
    for path in sorted((REPO / "voicebridge").rglob("*.py")):
        module = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
            ):
                names = [k.value for k in node.keywords if k.arg == "event_name"]
                name = names[0].value if names and isinstance(names[0], ast.Constant) else ("dynamic" if names else None)
                yield module, node.lineno, name


def test_every_log_line_has_an_event_name():
    missing = [f"{module}:{line}" for module, line, name in log_calls() if name is None and module not in EXEMPT]
    assert missing == [], "log lines without event_name"


def test_every_event_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", readme))
    events = {name for module, _, name in log_calls() if name not in (None, "dynamic") and module not in EXEMPT}
    events |= {"webhook.refused", "connect_action.refused"}  # twiliorequest's dynamic PREFIX.refused
    assert sorted(events - documented) == []
