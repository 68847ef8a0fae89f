"""Entry point of a benchmark process: ``python -m bench.role MODULE ROLE JSON``.

Runs ``MODULE.role_ROLE(**json.loads(JSON))``; ``bench.runner.Context.spawn``
builds this command line.  The process dies after ``HARD_LIFETIME_S`` whatever
its role does, so a stuck benchmark cannot outlive the run.
"""
from __future__ import annotations

import importlib
import json
import signal
import sys

from bench.common import HARD_LIFETIME_S


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m bench.role MODULE ROLE JSON-KWARGS")
    module_name, role, kwargs = argv
    role_fn = getattr(importlib.import_module(module_name), f"role_{role}", None)
    if role_fn is None:
        raise SystemExit(f"{module_name} has no function role_{role}")
    signal.alarm(int(HARD_LIFETIME_S))  # SIGALRM's default action ends the process
    role_fn(**json.loads(kwargs))


if __name__ == "__main__":
    main(sys.argv[1:])
