"""posa's layers import downward only (docs/architecture.md).

Each module belongs to a layer by its package; it may import modules of its own
layer or of a lower one, never of a higher one. Two checks keep that so:

- statically, every ``import`` in every module (at module level or inside a
  function; ``if TYPE_CHECKING:`` blocks are exempt) is compared with the table;
- dynamically, every module is imported alone in a fresh interpreter (a fork
  of one that has loaded the third-party and standard modules posa uses, and no
  posa module), and no module of a higher layer may be loaded afterwards (this
  catches what a package's ``__init__`` pulls in).

The façade ``posa/__init__.py`` is exempt: it imports nothing until a name is
asked for (PEP 562). The tests at the end show that both checks fail on an
upward import.
"""
from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGE = ROOT / "posa"

# (module prefix, layer): the longest matching prefix decides
LAYERS: dict[str, int] = {
    "posa.errors": 0,
    "posa.transport": 1,
    "posa.wire": 2,
    "posa.runtime": 3, "posa.admission": 3, "posa.security": 3,
    "posa.delivery": 4,
    "posa.naming": 5, "posa.naming.nats": 5,
    "posa.peer": 6,
    "posa.dispatch": 7, "posa.channel": 7, "posa.work": 7,
    "posa.ops": 8, "posa.aio": 8, "posa.cli": 8, "posa.__main__": 8, "posa.gateway": 8,
}


def layer_of(module: str) -> int | None:
    """The layer of a posa module; None for the façade and non-posa modules."""
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    if best is None and module.startswith("posa.") and module != "posa":
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS")
    return None if best is None else best[1]


def upward(module: str, imported: list[str]) -> list[str]:
    """The imports of ``module`` that point to a higher layer."""
    own = layer_of(module)
    if own is None:
        return []
    return sorted({m for m in imported if (layer_of(m) or 0) > own})


def all_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def static_imports(module: str, source: str) -> list[str]:
    """Every posa module ``source`` imports, outside ``if TYPE_CHECKING:``."""
    found: list[str] = []
    is_package = (ROOT / Path(*module.split(".")) / "__init__.py").exists()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.startswith("posa"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[:len(module.split(".")) - node.level
                                          + (1 if is_package else 0)]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("posa"):
                found.append(base)
                # ``from posa.x import y`` may import the submodule posa.x.y
                found.extend(f"{base}.{a.name}" for a in node.names
                             if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")
                                 ).with_suffix(".py").exists()
                             or (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")
                                 / "__init__.py").exists())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return [m for m in found if m != "posa"]


def source_of(module: str) -> str:
    path = ROOT / Path(*module.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return file.read_text()


MODULES = [m for m in all_modules() if m not in ("posa", "posa.__main__")]


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    bad = upward(module, static_imports(module, source_of(module)))
    assert not bad, (f"{module} (layer {layer_of(module)}) imports from a higher layer: "
                     + ", ".join(f"{m} (layer {layer_of(m)})" for m in bad))


# Importing each module in a new interpreter spends most of its time starting
# Python and importing what is not posa's (the standard library, zmq, msgpack).
# So one interpreter imports those (every non-posa module that importing all of
# posa loads; none of them imports posa), checks it holds no posa module, then
# forks a child per module: the child imports the module as a fresh interpreter
# would, from the same posa-free start, and says which posa modules it loaded.
_NOT_POSA = ("import importlib, json, sys\n"
             "for name in sys.argv[1].split(','):\n"
             "    importlib.import_module(name)\n"
             "print(json.dumps(sorted(m for m in sys.modules\n"
             "                        if m != '__main__' and m.split('.')[0] != 'posa')))\n")

_FORKS = """
import importlib, json, os, sys
preload, modules, prelude = json.loads(sys.argv[1]), sys.argv[2].split(','), sys.argv[3]
for name in preload:
    try:
        importlib.import_module(name)
    except Exception:           # (what only a posa module's context can import)
        pass
assert not [m for m in sys.modules if m.split('.')[0] == 'posa'], 'a posa module preloaded'
for module in modules:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        exec(prelude)
        importlib.import_module(module)
        os.write(write, json.dumps(sorted(m for m in sys.modules if m.startswith('posa'))
                                   ).encode())
        os._exit(0)
    os.close(write)
    answer = b''
    while chunk := os.read(read, 65536):
        answer += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and answer, f'import {module} failed (status {status})'
    print(module, answer.decode(), flush=True)
"""


@functools.cache
def not_posa() -> list[str]:
    """The modules, none of posa's, that importing every posa module loads."""
    done = subprocess.run([sys.executable, "-c", _NOT_POSA, ",".join(MODULES)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found: list[str] = json.loads(done.stdout.splitlines()[-1])
    return found


def loaded_by_each(modules: list[str], preload: list[str], prelude: str = ""
                   ) -> dict[str, list[str]]:
    """The posa modules loaded by importing each of ``modules`` alone (after
    running ``prelude``) in a fork of an interpreter that imported ``preload``."""
    done = subprocess.run([sys.executable, "-c", _FORKS, json.dumps(preload), ",".join(modules),
                           prelude], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"the imports failed:\n{done.stderr[-2000:]}"
    found: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        module, _, loaded = line.partition(" ")
        found[module] = json.loads(loaded)
    assert sorted(found) == sorted(modules)
    return found


@pytest.mark.timeout(400)     # a process per module: a minute on a loaded machine
def test_each_module_alone_loads_nothing_above_its_layer() -> None:
    results: dict[str, list[str]] = {}
    with ThreadPoolExecutor(2) as pool:      # two interpreters, each forking in turn
        for found in pool.map(loaded_by_each, [MODULES[0::2], MODULES[1::2]],
                              [not_posa(), not_posa()]):
            results.update(found)
    problems = {m: upward(m, loaded) for m, loaded in results.items() if upward(m, loaded)}
    assert not problems, "\n".join(f"import {m} loads {', '.join(bad)}"
                                   for m, bad in problems.items())


def test_the_transport_layer_loads_nothing_above_it() -> None:
    loaded = loaded_by_each(["posa.transport.tcp"], [])["posa.transport.tcp"]
    assert {m for m in loaded if (layer_of(m) or 0) > 1} == set()


def test_no_import_cycle() -> None:
    graph = {m: {i for i in static_imports(m, source_of(m)) if i in MODULES and i != m}
             for m in MODULES}
    # a package's __init__ importing its own submodules is not a cycle of concern
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not d.startswith(m + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                walk(nxt)
        stack.pop()
        seen[node] = 2

    for module in MODULES:
        if module not in seen:
            walk(module)


# -- the checks themselves fail on an upward import ---------------------------------
def test_the_static_check_finds_an_upward_import() -> None:
    source = "import os\nfrom posa.peer import Peer\n\ndef f():\n    import posa.cli\n"
    assert upward("posa.transport.tcp", static_imports("posa.transport.tcp", source)) == [
        "posa.cli", "posa.peer"]
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from posa.peer import Peer\n"
    assert upward("posa.transport.tcp", static_imports("posa.transport.tcp", typed)) == []


def test_the_fresh_interpreter_check_finds_an_upward_import(tmp_path: Path) -> None:
    """A module planted in the transport package that imports the peer is caught
    (by a fork of the interpreter that preloaded what posa uses, as above)."""
    (tmp_path / "_upward_probe.py").write_text("import posa.peer\n")
    prelude = f"import posa.transport\nposa.transport.__path__.append({str(tmp_path)!r})\n"
    probe = "posa.transport._upward_probe"
    loaded = loaded_by_each([probe], not_posa(), prelude)[probe]
    assert "posa.peer" in upward("posa.transport._upward_probe", loaded)
