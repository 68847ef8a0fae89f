"""Master-Slave: approximate a travelling-salesman tour by sampling random tours.

The job: among many random, independent tours through the cities, find the
shortest. The master splits the sampling into parts (a fixed number, so the
result does not depend on how many slaves there are), every slave samples its
parts with its own seeded generator, and the master keeps the shortest tour.
The same job gives the same tour in one process or on many.

    python examples/tsp.py                       # demo: two slave threads, in-process
    python examples/tsp.py slave work/tsp/a --dispatcher tcp://127.0.0.1:7000
    python examples/tsp.py master --dispatcher tcp://127.0.0.1:7000 --tours 200000 --progress

The slave prints "ready NAME" once registered and "subtask SEED" as it starts
each part; the master prints the result as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import posa


def make_job(*, cities: int = 40, tours: int = 20_000, parts: int = 8,
             seed: int = 1) -> dict[str, Any]:
    """A job: ``cities`` random points in the unit square, ``tours`` to sample."""
    rng = random.Random(seed)
    points = [[rng.random(), rng.random()] for _ in range(cities)]
    return {"cities": points, "tours": tours, "parts": parts, "seed": seed}


def tour_length(cities: Sequence[Sequence[float]], tour: Sequence[int]) -> float:
    return sum(math.dist(cities[a], cities[b]) for a, b in zip(tour, tour[1:] + tour[:1]))


def sample(subtask: dict[str, Any]) -> dict[str, Any]:
    """The slave's work: the shortest of ``tours`` random tours drawn with ``seed``."""
    cities, rng = subtask["cities"], random.Random(subtask["seed"])
    tour = list(range(len(cities)))
    best: dict[str, Any] = {"length": math.inf, "tour": tour}
    for _ in range(subtask["tours"]):
        rng.shuffle(tour)
        length = tour_length(cities, tour)
        if length < best["length"]:
            best = {"length": length, "tour": list(tour)}
    return best


def split(job: dict[str, Any], n_slaves: int) -> list[dict[str, Any]]:
    """``job["parts"]`` subtasks, whatever the number of slaves (so the result
    is the same on any number of them), each with its own seed."""
    parts = job["parts"]
    share, extra = divmod(job["tours"], parts)
    return [{"cities": job["cities"], "tours": share + (1 if i < extra else 0),
             "seed": job["seed"] * 1_000_003 + i} for i in range(parts)]


def merge(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The shortest tour (ties: the first part's)."""
    return min(answers, key=lambda answer: answer["length"])


def solve(job: dict[str, Any]) -> dict[str, Any]:
    """The same computation in this process alone (the reference result)."""
    return merge([sample(subtask) for subtask in split(job, 1)])


def demo() -> None:
    job = make_job(cities=30, tours=4000)
    slaves = [posa.Slave(f"work/tsp/slave-{i}", sample) for i in range(2)]
    try:
        with posa.Master("work/tsp/*", split=split, merge=merge, timeout=30.0) as master:
            outcome = master.execute(job)
    finally:
        for slave in slaves:
            slave.close()
    assert outcome.result == solve(job), "distributed and sequential results differ"
    print(f"shortest of {job['tours']} tours: {outcome.result['length']:.4f} "
          f"({outcome.subtasks} subtasks, answers per slave {outcome.answers}, "
          f"same as sequential)")


def run_slave(args: argparse.Namespace) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def work(subtask: dict[str, Any]) -> dict[str, Any]:
        print(f"subtask {subtask['seed']}", flush=True)
        return sample(subtask)

    registry = posa.RegistryClient(args.dispatcher)
    slave = posa.Slave(args.name, work, registry=registry, listen="tcp://127.0.0.1:0")
    print(f"ready {slave.name}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        slave.close()
        registry.close()


def run_master(args: argparse.Namespace) -> None:
    job = make_job(cities=args.cities, tours=args.tours, parts=args.parts, seed=args.seed)
    registry = posa.RegistryClient(args.dispatcher)

    def show(done: int, total: int) -> None:
        filled = 30 * done // total if total else 0
        print(f"\rsubtasks [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
              f"{done / total if total else 0:.0%}", end="\n" if done == total else "",
              file=sys.stderr, flush=True)
    try:
        with posa.Master(args.slaves, registry=registry, split=split, merge=merge,
                         timeout=args.timeout, on_progress=show if args.progress else None
                         ) as master:
            started = time.monotonic()
            outcome = master.execute(job)
            elapsed = time.monotonic() - started
    finally:
        registry.close()
    print(json.dumps({"length": outcome.result["length"], "tour": outcome.result["tour"],
                      "elapsed": elapsed, "answers": outcome.answers,
                      "reassigned": outcome.reassigned}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    p = sub.add_parser("slave", help="run one slave until SIGTERM")
    p.add_argument("name")
    p.add_argument("--dispatcher", required=True)
    p = sub.add_parser("master", help="run one job on the slaves and print the result")
    p.add_argument("--dispatcher", required=True)
    p.add_argument("--slaves", default="work/tsp/*")
    p.add_argument("--cities", type=int, default=40)
    p.add_argument("--tours", type=int, default=20_000)
    p.add_argument("--parts", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--progress", action="store_true", help="draw a progress bar on stderr")
    args = parser.parse_args(argv)
    if args.role == "slave":
        run_slave(args)
    elif args.role == "master":
        run_master(args)
    else:
        demo()


if __name__ == "__main__":
    main()
