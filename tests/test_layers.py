"""The layer rules, read from the source (every import statement, those inside functions too) and, for
pure code, from a real import in a fresh interpreter:

- pure code imports no Twisted (nor Autobahn), and of voicebridge only other pure code;
- a built-in handler imports of voicebridge only the handler API and the pure ``twilio``/``audio``;
- nothing imports a built-in handler except the handlers' own folder (the registry loads them by name);
- nothing under voicebridge imports a tool except the ``voicebridge`` command (cli.py) and the tools.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.daemon import REPO

PACKAGE = REPO / "voicebridge"

# Pure: decisions and data, no reactor. Folders end with "/".
PURE = (
    "voicebridge/__init__.py",
    "voicebridge/twilio/",
    "voicebridge/audio/",
    "voicebridge/config/",
    "voicebridge/observe/logs.py",
    "voicebridge/call/__init__.py",
    "voicebridge/call/closecodes.py",
    "voicebridge/call/resolve.py",
    "voicebridge/call/capacity.py",
    "voicebridge/call/stats.py",
    "voicebridge/call/streamwatch.py",
    "voicebridge/handlers/__init__.py",
    "voicebridge/workers/__init__.py",
    "voicebridge/workers/control.py",
    "voicebridge/workers/bookkeeping.py",
    "voicebridge/fastpath/__init__.py",
    "voicebridge/fastpath/frames.py",
    "voicebridge/tools/__init__.py",
    "voicebridge/tools/diagnosis/",
    "voicebridge/tools/probe/judge.py",
    "voicebridge/fleet/slots.py",
)
NOT_PURE = ("twisted", "autobahn", "txaio")

HANDLER_API = ("voicebridge.handlers.api", "voicebridge.twilio", "voicebridge.audio", "voicebridge.messages")

# Known exceptions, each with the change that removes it.
TOOL_IMPORTS_ALLOWED: set = set()  # none since the stream-URL rules moved to voicebridge/twilio/urls.py
# A pure module's deliberate lazy import: the registry gives ``voicebridge.handlers.Handler`` (its old path)
# from the API only when asked for; test_pure_code_really_loads_no_twisted shows the registry loads none.
LAZY_IMPORTS_ALLOWED = {("voicebridge/handlers/__init__.py", "voicebridge.handlers.api")}


def rel(path) -> str:
    return path.relative_to(REPO).as_posix()


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def is_pure(path) -> bool:
    name = rel(path)
    return any(name == rule or (rule.endswith("/") and name.startswith(rule)) for rule in PURE)


def imports(path) -> set[str]:
    """Every module an import statement in ``path`` names (``from a import b``: ``a`` and ``a.b``)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    return imports_in(path.read_text(), package, str(path))


def imports_in(text: str, package: str, filename: str = "<test>") -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(text, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def source_of(name: str):
    """The file of a voicebridge module name, or None (a name imported from a module, not a module)."""
    path = REPO.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def voicebridge_imports(path) -> dict[str, object]:
    return voicebridge_imports_in(imports(path))


def voicebridge_imports_in(names) -> dict[str, object]:
    out = {}
    for name in names:
        if name == "voicebridge" or name.startswith("voicebridge."):
            source = source_of(name)
            if source is not None:
                out[name] = source
    return out


def test_the_rules_see_every_module_and_the_pure_list_names_real_files():
    assert len(modules()) > 60
    for rule in PURE:
        assert (REPO / rule).exists(), f"{rule} is in PURE but does not exist"


@pytest.mark.parametrize("path", [p for p in modules() if is_pure(p)], ids=rel)
def test_pure_code_imports_no_twisted_and_only_pure_voicebridge_modules(path):
    for name in imports(path):
        assert name.split(".")[0] not in NOT_PURE, f"{rel(path)} is pure and imports {name}"
    for name, source in voicebridge_imports(path).items():
        if (rel(path), name) not in LAZY_IMPORTS_ALLOWED:
            assert is_pure(source), f"{rel(path)} is pure and imports {name} ({rel(source)}), which is not"


def test_pure_code_really_loads_no_twisted():
    """The same, by importing each pure module in a fresh interpreter: what an import really drags in."""
    names = [module_name(p) for p in modules() if is_pure(p)]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(name)\n"
        f"    bad = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {NOT_PURE!r})\n"
        "    if bad:\n"
        "        print(name, bad[:3])\n"
    )
    # One module at a time would be exact but slow; in one interpreter a module is blamed only for
    # what it loaded first, which is enough: the first to load Twisted is named.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", f"pure modules that load Twisted: {result.stdout}"


def handler_modules():
    """Every built-in handler's modules: ``handlers/NAME.py``, and each module of a handler that is a
    package (``handlers/openai_realtime/``: the handler and its own pure helpers)."""
    top = [p for p in (PACKAGE / "handlers").glob("*.py") if p.name not in ("__init__.py", "api.py")]
    return top + sorted(p for p in (PACKAGE / "handlers").glob("*/*.py") if "__pycache__" not in p.parts)


def own_package(path) -> str | None:
    """For a module of a package handler, that package (its modules may import one another)."""
    parts = path.relative_to(PACKAGE / "handlers").parts
    return f"voicebridge.handlers.{parts[0]}" if len(parts) > 1 else None


@pytest.mark.parametrize("path", handler_modules(), ids=rel)
def test_a_handler_uses_only_the_handler_api(path):
    allowed_here = (*HANDLER_API, *filter(None, [own_package(path)]))
    for name in voicebridge_imports(path):
        assert any(name == allowed or name.startswith(allowed + ".") for allowed in allowed_here), (
            f"{rel(path)} imports {name}: a handler imports of voicebridge only {', '.join(HANDLER_API)} (and its own package)"
        )
    tree = ast.parse(path.read_text())
    reached = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "registry"]
    assert reached == [], f"{rel(path)} reaches the daemon's registry (line {reached}): use the HandlerCall's own"


def test_the_handler_api_is_the_handler_modules_only_way_in():
    """Handlers get the registry-free HandlerCall: nothing the API module imports is the call layer."""
    names = set(voicebridge_imports(PACKAGE / "handlers" / "api.py"))
    assert not {n for n in names if n.startswith(("voicebridge.call", "voicebridge.daemon", "voicebridge.web"))}


def test_nothing_imports_a_built_in_handler_but_the_handlers_folder():
    builtins = {module_name(p) for p in handler_modules()}
    for path in modules():
        if rel(path).startswith("voicebridge/handlers/"):
            continue
        wrong = builtins & set(voicebridge_imports(path))
        assert not wrong, f"{rel(path)} imports {wrong}: ask the registry (voicebridge.handlers.load) or the handler API"


def test_nothing_imports_a_tool_but_the_command():
    for path in modules():
        name = rel(path)
        if name == "voicebridge/cli.py" or name.startswith("voicebridge/tools/"):
            continue
        for imported in voicebridge_imports(path):
            if imported == "voicebridge.tools" or imported.startswith("voicebridge.tools."):
                assert (name, imported) in TOOL_IMPORTS_ALLOWED, f"{name} imports the tool {imported}"


def test_the_known_exceptions_are_still_needed():
    """An exception whose import is gone must leave the list, so the rule tightens when the code does."""
    for name, imported in TOOL_IMPORTS_ALLOWED:
        assert imported in voicebridge_imports(REPO / name), f"{name} no longer imports {imported}: drop the exception"


def test_the_reader_sees_relative_imports_imports_in_functions_and_modules_imported_from_packages():
    text = "from . import api\nfrom ..call import registry\ndef f():\n    import twisted.internet\n"
    found = imports_in(text, "voicebridge.handlers")
    assert {"voicebridge.handlers.api", "voicebridge.call.registry", "twisted.internet"} <= found
    assert set(voicebridge_imports_in(found)) == {
        "voicebridge.handlers",
        "voicebridge.handlers.api",
        "voicebridge.call",
        "voicebridge.call.registry",
    }
