"""The README's editable install, run into a scratch environment as written:

- a user's type checker sees posa's types through it (mypy checks a small user
  script: py.typed must be found, and a type error reported as one, not as a
  missing module);
- docs/netagents.md's command runs from any directory after it.

The scratch environment gets posa's dependencies from the test environment (a
``.pth`` line), so only posa itself is installed the README's way."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a scratch venv with posa installed by the README's line."""
    venv = tmp_path_factory.mktemp("readme") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                           "get_paths()['purelib'])"], capture_output=True, text=True,
                          check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         *[ROOT.as_posix() if arg == "." else arg for arg in readme_install_options()]],
        capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert install.returncode == 0, install.stderr[-2000:]
    yield python


def test_mypy_sees_posa_types_through_the_readme_editable_install(
        installed: Path, tmp_path: Path) -> None:
    python = installed
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



def test_the_netagents_command_runs_from_any_directory(installed: Path, tmp_path: Path
                                                       ) -> None:
    text = (ROOT / "docs" / "netagents.md").read_text()
    command = re.search(r"^python (-m examples\.netagents)\s", text, re.M)
    assert command, "docs/netagents.md has no 'python -m examples.netagents' line"
    done = subprocess.run([str(installed), *command.group(1).split(), "--pace", "0.2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"ok": true' in done.stdout
