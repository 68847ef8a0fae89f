"""MkDocs hooks (``mkdocs.yml``: ``hooks``): pages generated at build time.

``cli-reference.md`` is made from the ``posa`` parser (``tools/cli_reference.py``),
so the reference cannot fall behind the command; ``changelog.md`` is the
repository's ``CHANGELOG.md`` (one source, at the root where people look for it).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files


def _generator() -> Any:
    path = Path(__file__).with_name("cli_reference.py")
    spec = importlib.util.spec_from_file_location("posa_cli_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "cli-reference.md", content=_generator().render()))
    changelog = (ROOT / "CHANGELOG.md").read_text()
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files
