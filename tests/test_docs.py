"""Every python code block in the README and docs/ runs, so the docs cannot rot."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def blocks() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            found.append((f"{page.relative_to(ROOT)}#{number}", match.group(1)))
    return found


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where, code", blocks(), ids=[w for w, _ in blocks()])
def test_code_block_runs(where: str, code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=80, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, f"{where} failed:\n{done.stderr[-3000:]}"


def test_examples_run() -> None:
    done = subprocess.run([sys.executable, "examples/library.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Pattern-Oriented Software Architecture" in done.stdout
    assert "A Pattern Language" in done.stdout


def test_every_page_is_linked_from_the_index() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f"({page.name}" in index, f"docs/index.md does not link {page.name}"
