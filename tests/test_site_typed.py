"""A user's type checker sees posa's types through the README's editable install:
the install line of the README is run into a scratch environment, and mypy checks
a small user script against it (py.typed must be found, and a type error in the
script reported as one, not as a missing module)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.timeout(300)

USER_SCRIPT = """
import posa

def notify(peer: posa.Peer) -> int:
    count: int = peer.send("app/y", {"a": 1})
    wrong: str = peer.send("app/y")
    return count
"""


def readme_install_options() -> list[str]:
    """The options of the README's first ``pip install -e`` (without -q)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"\.venv/bin/pip install (.*?-e[^&\n]*)", text)
    assert match, "the README has no editable install line"
    return [arg for arg in shlex.split(match.group(1)) if arg != "-q"]


def test_mypy_sees_posa_types_through_the_readme_editable_install(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    options = readme_install_options()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         *[ROOT.as_posix() if arg == "." else arg for arg in options]],
        capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert install.returncode == 0, install.stderr[-2000:]
    script = tmp_path / "app.py"
    script.write_text(USER_SCRIPT)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--python-executable", str(python), str(script)],
        capture_output=True, text=True, cwd=tmp_path, timeout=240)
    out = checked.stdout
    assert "import-not-found" not in out and "missing library stubs" not in out, out
    assert 'Incompatible types in assignment (expression has type "int", variable has ' \
           'type "str")' in out, out
    assert checked.stdout.count("error:") == 1, out

