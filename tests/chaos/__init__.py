"""posa's chaos suite: seeded random scenarios of real processes, faults, and a checker.

- ``scenario``: a scenario generated from a seed (nodes and steps; ``FEATURES`` can
  be left out one by one, ``--without KIND``).
- ``role``: one process of a scenario (peers, a posa.Server, a posa.Client, or the
  ``posa dispatcher`` itself), driven by commands on stdin, public API only.
- ``procs``: starting, signalling (SIGKILL, SIGSTOP, SIGCONT as a process group) and
  always reaping role processes.
- ``history``: every process's JSON-lines record of what it did and saw.
- ``runner``: runs one scenario's steps and faults, then the checker.
- ``checker``: order, duplicates, losses, group sends, deadlines, at-most-once
  handlers, errors that should not reach a caller.

CI (tests/test_chaos.py) runs ``CI_SEEDS``; ``python -m tests.chaos --seed S``
replays one, ``python -m tests.chaos --soak 600`` soaks on random seeds.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["BASE_SEED", "CI_SEEDS", "replay_command"]

BASE_SEED = 15_000
CI_SEEDS = tuple(BASE_SEED + i for i in range(8))


def replay_command(seed: int, without: Iterable[str] = ()) -> str:
    flags = "".join(f" --without {w}" for w in sorted(without))
    return f"python -m tests.chaos --seed {seed}{flags}"
