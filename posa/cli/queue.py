"""``posa progress QUEUE``: a work queue's progress, drawn from another process.

Asks the queue for its metrics (the ``metrics`` request of
``posa.work.protocol.QUEUE``) through the dispatcher's registry, every
``--interval`` seconds, and draws one line (``posa.work.progress``): redrawn in
place on a terminal, one line per update otherwise, JSON lines with ``--json``.
Exit code 0 once every item the queue holds is finished (or after one line with
``--once``); a posa error ends it with the ``posa`` command's exit codes.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from posa.delivery.sender import Sender
from posa.naming.client import RegistryClient
from posa.naming.registration import resolver
from posa.work.progress import finished, render_progress
from posa.work.protocol import QUEUE

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa progress QUEUE``: a work queue's progress as a bar, until done."""
    from posa.cli import DEFAULT_DISPATCHER  # the command's defaults live there
    p = subparsers.add_parser(
        "progress", help="show a work queue's progress (items done/total) as a bar",
        description="Poll a work queue's metrics and draw a progress bar until every "
        "item it holds is finished (done or dead-lettered), or once with --once.")
    p.add_argument("queue", help="the work queue's name, e.g. work/thumbnails")
    p.add_argument("--dispatcher", default=DEFAULT_DISPATCHER, metavar="ADDRESS",
                   help=f"the dispatcher to ask (default {DEFAULT_DISPATCHER})")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between updates")
    p.add_argument("--once", action="store_true", help="print one line and exit")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON lines")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """The ``posa progress`` command; returns the exit code (0 when finished)."""
    with RegistryClient(args.dispatcher, timeout=args.timeout) as registry:
        sender = Sender("", resolve=resolver(registry))
        try:
            return _draw_until_finished(sender, args)
        finally:
            sender.close()


def _draw_until_finished(sender: Sender, args: argparse.Namespace) -> int:
    ticker = threading.Event()
    redraw = sys.stdout.isatty() and not args.json
    request = QUEUE.request("metrics")
    while True:
        metrics = sender.request(args.queue, request, timeout=args.timeout).body
        line = json.dumps(metrics, sort_keys=True) if args.json else render_progress(metrics)
        last = args.once or (finished(metrics) and metrics["total"] > 0)
        sys.stdout.write(("\r" + line + ("\n" if last else "")) if redraw else line + "\n")
        sys.stdout.flush()
        if last:
            return 0
        ticker.wait(args.interval)
