"""``pip install .`` gives the plugin, the console script and the handlers; checked on a real wheel."""

import os
import shutil
import subprocess
import sys
import zipfile

from tests.daemon import REPO


def test_wheel_installs_plugin_and_console_script(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "src"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "node_modules")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("voicebridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/voicebridge_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names, "the package must not own twisted.plugins"
    assert "voicebridge/handlers/echo.py" in names
    assert not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    # Run from an empty directory so only the installed copy can be found.
    out = subprocess.run(
        [sys.executable, "-m", "twisted", "voicebridge", "--help"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "--public-url" in out.stdout
    located = subprocess.run(
        [sys.executable, "-c", "import voicebridge; print(voicebridge.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert located.stdout.startswith(str(target))
    script = target / "bin" / "voicebridge"
    version = subprocess.run([sys.executable, str(script), "--version"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert version.stdout.strip() == "voicebridge 0.1.0", version.stderr
