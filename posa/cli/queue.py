"""``posa queue NAME``: a work queue as a service; ``posa progress QUEUE``: its progress.

``posa queue NAME --store PATH`` runs a ``WorkQueue`` (``posa.work.queue``)
registered with the dispatcher, its items kept in the SQLite file PATH (without
``--store``: in memory only), until SIGTERM or SIGINT; it prints ``queue NAME
at ADDRESS ...`` once it is ready (the signal handlers are in place by then).
On a signal it drains (``posa.ops.serve_until_signalled``): new items are
refused, the items in flight are finished and acknowledged within ``--grace``
seconds, then it closes. ``--results`` prints each completed item as a JSON
line. Items come from producers (``posa.submit``), a directory (``--directory``) or
the events of an event channel's topics (``--channel``, ``--topic``; each event once,
keyed by where it began: ``posa.work.channelsource``).

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

from posa import ops
from posa.cli.options import (
    add_dispatcher_argument,
    add_ops_arguments,
    add_security_arguments,
    authenticator_from_args,
    to_json,
    usage,
)
from posa.cli.values import count, natural, seconds
from posa.delivery.sender import Sender
from posa.naming.client import RegistryClient
from posa.naming.registration import resolver
from posa.work.progress import finished, render_progress
from posa.work.protocol import QUEUE
from posa.work.sqlitestore import SYNCHRONOUS

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa queue NAME`` and ``posa progress QUEUE``."""
    _add_queue(subparsers)
    _add_progress(subparsers)


def _add_queue(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "queue", help="run a work queue (items kept in --store, or in memory)",
        description="Run the work queue NAME until SIGTERM or SIGINT, then drain: refuse "
        "new items, let workers finish and acknowledge what they hold, close.")
    p.add_argument("name", help="the queue's name, e.g. work/thumbnails")
    p.add_argument("--store", metavar="PATH", default=None,
                   help="keep items, leases, done keys and dead letters in this SQLite "
                   "file, so a restart loses no accepted item (default: memory only)")
    p.add_argument("--sync", choices=[s.lower() for s in SYNCHRONOUS], default="normal",
                   help="normal: a stored item survives the process being killed; full: "
                   "it survives a power cut too, one disk flush per batch (default normal)")
    add_dispatcher_argument(p)
    p.add_argument("--listen", default="tcp://127.0.0.1:0",
                   help="where to receive (default tcp://127.0.0.1:0)")
    p.add_argument("--credential", default=None,
                   help="token owning the name; reuse it to restart in place at once")
    p.add_argument("--visibility", type=seconds, default=30.0,
                   help="seconds a worker holds an item before it is handed out again")
    p.add_argument("--max-attempts", type=count, default=3,
                   help="deliveries of an item before it is dead-lettered (default 3)")
    p.add_argument("--capacity", type=count, default=100_000,
                   help="items pending or in flight at most (default 100000)")
    p.add_argument("--directory", metavar="DIR", default=None,
                   help="queue the files of this directory (key: file name)")
    p.add_argument("--pattern", default="*", help="files of --directory to queue (glob)")
    p.add_argument("--channel", metavar="CHANNEL", default=None,
                   help="queue the events of this event channel (item data: the event's "
                   "body; key: CHANNEL/INCARNATION/SEQ, so a replay is not queued twice)")
    p.add_argument("--topic", action="append", default=None, metavar="PREFIX",
                   help="topics of --channel to take (repeatable; default: every topic)")
    p.add_argument("--from-seq", type=natural, default=None, metavar="SEQ",
                   help="replay --channel's history from this seq first")
    p.add_argument("--results", action="store_true",
                   help='print each item finished as a JSON line: {"done": key, '
                   '"result": ...} or {"dead": key, "reason": ...}')
    add_ops_arguments(p)
    add_security_arguments(p, acl=False)
    p.set_defaults(run=_run_queue)


def _run_queue(args: argparse.Namespace) -> int:
    """Run the queue until a signal, then drain and close; the exit code (0)."""
    from posa.work.queue import WorkQueue  # loaded when the command runs
    from posa.work.sources import DirectorySource
    from posa.work.sqlitestore import SqliteStore
    if args.directory and args.channel:
        usage("give --directory or --channel, not both")
    auth = authenticator_from_args(args, args.name)   # a bad key file fails before the store opens
    store = SqliteStore(args.store, synchronous=args.sync.upper()) if args.store else None
    source: Any = DirectorySource(args.directory, args.pattern) if args.directory else None
    with RegistryClient(args.dispatcher, authenticator=auth) as registry:
        if args.channel:
            from posa.work.channelsource import ChannelSource
            source = ChannelSource(args.channel, topics=args.topic or [""], registry=registry,
                                   from_seq=args.from_seq, authenticator=auth)
        queue = WorkQueue(args.name, registry=registry, listen=args.listen, store=store,
                          credential=args.credential, source=source, authenticator=auth,
                          visibility=args.visibility, max_attempts=args.max_attempts,
                          capacity=args.capacity, refresh=0.0 if args.channel else 5.0,
                          on_done=_printer("done", "result") if args.results else None,
                          on_dead=_printer("dead", "reason") if args.results else None)
        try:
            monitor = ops.Monitor(queue)
            server = (ops.OpsServer(monitor, host=args.ops_host, port=args.ops_port)
                      if args.ops_port is not None else None)
            metrics = queue.metrics()
            announce = (f"queue {queue.name} at {queue.peer.address} store "
                        f"{args.store or '(memory)'}: {metrics['pending']} pending "
                        f"{metrics['in_flight']} in flight {metrics['done']} done "
                        f"{metrics['dead']} dead")
            return ops.serve_until_signalled([queue], grace=args.grace, monitor=monitor,
                                             server=server,
                                             ready=lambda: print(announce, flush=True))
        finally:
            queue.close()
            if args.channel:
                source.close()
            if store is not None:
                store.close()


def _printer(event: str, field: str) -> Any:
    def emit(key: str, value: Any) -> None:
        sys.stdout.write(to_json({event: key, field: value}) + "\n")
        sys.stdout.flush()
    return emit


def _add_progress(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "progress", help="show a work queue's progress (items done/total) as a bar",
        description="Poll a work queue's metrics and draw a progress bar until every "
        "item it holds is finished (done or dead-lettered), or once with --once.")
    p.add_argument("queue", help="the work queue's name, e.g. work/thumbnails")
    add_dispatcher_argument(p)
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds per request")
    p.add_argument("--interval", type=seconds, default=0.5, help="seconds between updates")
    p.add_argument("--once", action="store_true", help="print one line and exit")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON lines")
    add_security_arguments(p, acl=False)
    p.set_defaults(run=_run_progress)


def _run_progress(args: argparse.Namespace) -> int:
    """The ``posa progress`` command; returns the exit code (0 when finished)."""
    auth = authenticator_from_args(args)
    with RegistryClient(args.dispatcher, timeout=args.timeout, authenticator=auth) as registry:
        sender = Sender("", resolve=resolver(registry), authenticator=auth)
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
