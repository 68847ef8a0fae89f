"""The command-line reference (docs: ``cli-reference.md``), generated from the parser.

``render()`` walks ``posa.cli.build_parser()`` and writes every command and
subcommand with its ``--help``, so a verb added to the parser is in the reference
at the next build.  ``mkdocs build`` runs it through ``tools/mkdocs_hooks.py``;
``python tools/cli_reference.py`` prints it.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = "80"            # columns argparse formats help for, whatever the terminal


def commands(parser: argparse.ArgumentParser, prefix: str = ""
             ) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(command line, one-line help, parser)`` of every subcommand, depth first."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            line = f"{prefix} {name}".strip()
            yield line, helps.get(name, ""), sub
            yield from commands(sub, line)


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference page of ``parser`` (default: the ``posa`` command's), as Markdown."""
    os.environ["COLUMNS"] = WIDTH
    if parser is None:
        sys.path.insert(0, str(ROOT))
        from posa.cli import build_parser
        parser = build_parser()
    found = list(commands(parser))
    lines = ["# Command-line reference", "",
             "Generated from the `posa` command's own parser at each build of the docs "
             "(`tools/cli_reference.py`): every command and option is here as "
             "`posa COMMAND --help` prints it. The guide to the commands, with examples "
             "and the exit codes, is [the command line](cli.md).", "",
             "| command | what it does |", "| --- | --- |"]
    lines += [f"| [`posa {line}`](#{_anchor(line)}) | {text} |" for line, text, _ in found]
    lines += ["", "## posa", "", "```text", parser.format_help().rstrip(), "```", ""]
    for line, _, sub in found:
        lines += [f"## posa {line}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _anchor(line: str) -> str:
    """The id MkDocs gives the heading ``posa LINE``."""
    return "posa-" + "-".join(line.split())


if __name__ == "__main__":
    print(render())
