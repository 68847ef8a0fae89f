"""``python -m tests.chaos``: replay one scenario, or soak on random seeds.

    python -m tests.chaos --seed 1234                  # replay one scenario
    python -m tests.chaos --seed 1234 --without sigstop --without dispatcher
    python -m tests.chaos --soak 600                   # random seeds for 600 s
    python -m tests.chaos --ci                         # the seeds CI runs
    python -m tests.chaos --list                       # the feature names for --without
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos import CI_SEEDS, replay_command
from tests.chaos.checker import Violation, summarize
from tests.chaos.runner import run
from tests.chaos.scenario import FEATURES, check_without, generate


def one(seed: int, without: frozenset[str], root: Path, keep: bool) -> list[Violation]:
    directory = root / f"seed-{seed}"
    started = time.monotonic()
    violations = run(generate(seed, without), directory)
    took = time.monotonic() - started
    if violations:
        print(f"seed {seed}: {len(violations)} violation(s) in {took:.1f} s "
              f"(histories in {directory})")
        for line in summarize(violations):
            print(f"  {line}")
        print(f"  replay: {replay_command(seed, without)}")
    else:
        print(f"seed {seed}: ok in {took:.1f} s")
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    sys.stdout.flush()
    return violations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    what.add_argument("--soak", type=float, metavar="SECONDS",
                      help="run random seeds until SECONDS have passed")
    what.add_argument("--ci", action="store_true", help="run the seeds CI runs")
    what.add_argument("--list", action="store_true", help="list the features")
    parser.add_argument("--without", action="append", default=[], metavar="FEATURE",
                        help="leave a feature (a fault kind, a transport ...) out")
    parser.add_argument("--dir", type=Path, help="keep histories here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the histories of passes")
    args = parser.parse_args(argv)
    if args.list:
        for name, text in FEATURES.items():
            print(f"{name:15} {text}")
        return 0
    try:
        without = check_without(set(args.without))
    except ValueError as exc:
        parser.error(str(exc))
    root = args.dir or Path(tempfile.mkdtemp(prefix="posa-chaos-"))
    failed: list[int] = []
    if args.soak is not None:
        end = time.monotonic() + args.soak
        rng = random.Random()
        while time.monotonic() < end:
            seed = rng.randrange(1, 10**9)
            if one(seed, without, root, args.keep):
                failed.append(seed)
    else:
        for seed in args.seed or CI_SEEDS:
            if one(seed, without, root, args.keep):
                failed.append(seed)
    print(f"failing seeds: {failed}" if failed else "no violation")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
