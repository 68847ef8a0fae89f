"""The documentation site: ``mkdocs build --strict`` passes (the API reference from
the docstrings, the CLI reference from the parser, the changelog), and the
getting-started page's commands and programs run as written, in three processes."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import ROOT, Proc, free_port, wait_until

pytestmark = pytest.mark.timeout(240)

PAGE = ROOT / "docs" / "getting-started.md"
PAGE_ADDRESS = "tcp://127.0.0.1:7000"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  ROOT / "tools" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=200,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_strict_with_every_page_and_the_api(site: Path) -> None:
    for page in (ROOT / "docs").glob("*.md"):
        assert (site / page.stem / "index.html").exists() or page.stem == "index", page
    ops = (site / "api" / "ops" / "index.html").read_text()
    for name in ("Monitor", "OpsServer", "serve_until_signalled", "trace_context"):
        assert name in ops, name
    assert "Unreleased" in (site / "changelog" / "index.html").read_text()
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(page.name in nav for page in (ROOT / "docs").glob("*.md")), \
        "a docs page is missing from mkdocs.yml's nav"


def test_the_cli_reference_has_every_command_of_the_parser(site: Path) -> None:
    from posa.cli import build_parser
    page = (site / "cli-reference" / "index.html").read_text()
    found = [line for line, _, _ in generator().commands(build_parser())]
    assert {"dispatcher", "names", "send", "request", "channel", "queue"} <= set(found)
    for line in found:
        assert f"usage: posa {line}" in page, line


def test_a_verb_added_to_the_parser_is_in_the_reference() -> None:
    from posa.cli import build_parser
    parser = build_parser()
    subparsers = next(a for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction))
    added = subparsers.add_parser("frobnicate", help="a verb someone added later")
    added.add_argument("--level", type=int, help="how much")
    nested = added.add_subparsers(dest="how").add_parser("gently", help="a subcommand")
    nested.add_argument("target")
    text = generator().render(parser)
    assert "| [`posa frobnicate`](#posa-frobnicate) | a verb someone added later |" in text
    assert "## posa frobnicate gently" in text and "usage: posa frobnicate gently" in text
    assert "--level LEVEL" in text


# ------------------------------------------------------------- getting started
def page_parts() -> tuple[list[str], dict[str, str]]:
    """The page's shell commands (install lines left out) and its programs by file name."""
    text = PAGE.read_text()
    commands = [line.strip() for block in re.findall(r"```console\n(.*?)```", text, re.S)
                for line in block.splitlines()
                if line.strip() and "pip install" not in line and "venv" not in line]
    programs = {}
    for block in re.findall(r"```py\n(.*?)```", text, re.S):
        first = block.splitlines()[0]
        assert first.startswith("# ") and first.endswith(".py"), first
        programs[first[2:]] = block
    return commands, programs


def test_getting_started_runs_as_written(tmp_path: Path) -> None:
    commands, programs = page_parts()
    address = f"tcp://127.0.0.1:{free_port()}"       # the page's 7000 may be taken here
    for name, code in programs.items():
        (tmp_path / name).write_text(code.replace(PAGE_ADDRESS, address))
    argv = [shlex.split(c.replace(PAGE_ADDRESS, address)) for c in commands]
    assert [a[:2] for a in argv] == [["posa", "dispatcher"], ["python", "greeter.py"],
                                     ["posa", "names"], ["posa", "request"],
                                     ["python", "caller.py"]], argv
    env = {"PYTHONPATH": str(ROOT)}
    dispatcher = Proc([sys.executable, "-m", "posa", *argv[0][1:]], env=env)
    greeter = None
    try:
        dispatcher.expect("posa dispatcher")
        greeter = Proc([sys.executable, str(tmp_path / "greeter.py")], env=env)
        assert greeter.expect("demo/greeter listening at").startswith("tcp://127.0.0.1:")
        names = run([sys.executable, "-m", "posa", *argv[2][1:]], tmp_path)
        assert names.startswith("demo/greeter\t"), names
        assert run([sys.executable, "-m", "posa", *argv[3][1:]], tmp_path) == "hello, world\n"
        assert run([sys.executable, "caller.py"], tmp_path) == "hello, world\n"
        assert greeter.terminate(30) == 0               # Ctrl-C or SIGTERM: a clean stop
        wait_until(lambda: "demo/greeter" not in run(
            [sys.executable, "-m", "posa", *argv[2][1:]], tmp_path, codes=(0, 3)),
            what="the greeter's name unregistered")
    finally:
        if greeter is not None:
            greeter.close()
        dispatcher.close()


def run(argv: list[str], cwd: Path, codes: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode in codes, (argv, done.returncode, done.stderr[-2000:])
    return done.stdout
