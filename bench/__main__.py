"""``python -m bench``: run posa's benchmarks and the anchors, write the report."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from bench import report
from bench.runner import DEFAULT_ANCHORS_DIR, REPO_ROOT, Context, load_suite, run, schedule


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run posa's benchmarks and the anchors (raw pyzmq, Pyro5, NATS, asyncio, "
                    "SimpleQueue) round robin in one run; write benchmarks.md and "
                    "benchmarks.png.")
    p.add_argument("--reps", type=int, default=3, help="reps of every row (default 3)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every row's message count (default 1)")
    p.add_argument("--only", default="",
                   help="comma-separated row keys, anchor keys or areas (default: all)")
    p.add_argument("--no-anchors", action="store_true", help="run posa's rows only")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "docs"),
                   help="where benchmarks.md and benchmarks.png go (default docs/)")
    p.add_argument("--anchor-python", default=sys.executable,
                   help="interpreter for the anchors' processes (default: this one); it "
                        "needs pyzmq and msgpack, and Pyro5 and nats-py for those rows")
    p.add_argument("--anchors-dir", default=DEFAULT_ANCHORS_DIR,
                   help="the anchor scripts (default ../shared/anchors)")
    p.add_argument("--malloc", choices=("warm", "default"), default="warm",
                   help="raise glibc's mmap threshold once per process, as the anchors "
                        "do (default warm)")
    args = p.parse_args(argv)
    if args.reps < 1 or args.scale <= 0:
        p.error("--reps must be at least 1 and --scale positive")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    suite = load_suite()
    order, goals = schedule(suite, {k.strip() for k in args.only.split(",") if k.strip()},
                            anchors=not args.no_anchors)
    if not order:
        print("nothing to run", file=sys.stderr)
        return 2
    info = report.machine_info(args.anchor_python)
    ctx = Context(python=sys.executable, anchor_python=args.anchor_python,
                  anchors_dir=args.anchors_dir, scale=args.scale, malloc=args.malloc)
    outcome = run(order, goals, reps=args.reps, scale=args.scale, ctx=ctx)
    report.finish_info(info)
    os.makedirs(args.out, exist_ok=True)
    command = "python -m bench " + shlex.join(argv) if argv else "python -m bench"
    markdown = os.path.join(args.out, "benchmarks.md")
    report.write_markdown(markdown, report.render(outcome, info, suite.pending, command),
                          default_header_from=os.path.join(REPO_ROOT, "docs", "benchmarks.md"))
    why_not = report.plot(outcome, os.path.join(args.out, "benchmarks.png"))
    if why_not:
        print(f"no plot: {why_not}", file=sys.stderr)
    print(f"wrote {markdown}" + ("" if why_not else " and benchmarks.png"), file=sys.stderr)
    return 1 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
