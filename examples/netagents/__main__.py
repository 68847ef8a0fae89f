"""``python -m examples.netagents [--multi] [--seed N] [--pace SECONDS] [--web [--port N]]``."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.netagents",
        description="Network-management agents on posa: link failures propagate by "
        "name, routes are recomputed, an agent migrates under traffic; the run checks "
        "its own outcome and ends by itself (Ctrl-C stops it early).")
    parser.add_argument("--multi", action="store_true",
                        help="run a posa dispatcher, a posa channel and the agents in "
                        "separate processes (default: everything in this process)")
    parser.add_argument("--seed", type=int, default=1,
                        help="the simulated network and its scenario (default 1)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="seconds between the scenario's steps (default 1)")
    parser.add_argument("--web", action="store_true",
                        help="also draw the network in a browser while it runs (needs "
                        "aiohttp: pip install posa-messaging[gateway]); the scenario starts "
                        "once the page is open, and the page stays up at the end until "
                        "Ctrl-C")
    parser.add_argument("--port", type=int, default=8081,
                        help="the port of --web's page on 127.0.0.1 (default 8081; 0 picks "
                        "one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)    # SIGTERM stops as cleanly as Ctrl-C
    if args.multi:
        from .multi import run
    else:
        from .allinone import run
    if not args.web:
        return run(seed=args.seed, pace=args.pace)
    try:
        from .web import WebView
    except ImportError as exc:
        print(f"--web needs aiohttp ({exc}): pip install 'posa-messaging[gateway]'",
              file=sys.stderr)
        return 2
    return run(seed=args.seed, pace=args.pace,
               view=lambda network, out: WebView(network, port=args.port, out=out))


if __name__ == "__main__":
    sys.exit(main())
