"""Modules of one concept: no module over 400 lines and no function over 50,
except the few named here with their reason (also in docs/architecture.md)."""
from __future__ import annotations

import ast

from tests.support import ROOT

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50

# "module" or "module:function" -> why it is allowed to be longer
EXCEPTIONS: dict[str, str] = {}


def _modules() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), p.read_text())
            for p in sorted((ROOT / "posa").rglob("*.py"))]


def test_no_module_over_the_limit() -> None:
    long = [f"{path}: {len(text.splitlines())} lines" for path, text in _modules()
            if len(text.splitlines()) > MAX_MODULE_LINES and path not in EXCEPTIONS]
    assert not long, "modules over the limit:\n" + "\n".join(long)


def test_no_function_over_the_limit() -> None:
    long = []
    for path, text in _modules():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                length = (node.end_lineno or node.lineno) - start + 1
                if length > MAX_FUNCTION_LINES and f"{path}:{node.name}" not in EXCEPTIONS:
                    long.append(f"{path}:{node.name}: {length} lines")
    assert not long, "functions over the limit:\n" + "\n".join(long)
