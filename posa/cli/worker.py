"""``posa worker --queue NAME -- COMMAND ARGS...``: any program as a work-queue worker.

Runs ``--concurrency`` workers (``posa.work.worker.Worker``) of the queue NAME
in this process, each running COMMAND once per item (``posa.work.command``:
the item on stdin, or as a file where an argument is ``{}``; stdout is the
result; exit status 0 completes the item, any other fails it and the queue
retries it; ``--timeout`` kills the program's process group). It prints
``worker NAME for QUEUE running COMMAND`` once ready, and on SIGTERM or SIGINT
takes no more items, finishes those in hand and acknowledges them (within
``--grace`` seconds), then exits with 0.

``posa autoscale --queue NAME --min 1 --max 4 -- COMMAND ARGS...`` runs such
``posa worker`` processes on this machine, as many as the queue's backlog asks
(``posa.work.autoscale``: items waiting and in hand, ``--per-worker`` each, one
more while the oldest waiting item is older than ``--max-age``; down only after
``--cooldown`` seconds with nothing waiting). Each decision is logged to stderr
and, with ``--ops-port``, exported in ``/metrics`` (``posa_autoscale_*``). On
SIGTERM it stops its workers (each drains) and exits with 0.
"""
from __future__ import annotations

import argparse
import logging
import secrets
import shlex
import signal
import sys
import threading
from typing import Any

from posa import ops
from posa.cli.options import (
    add_dispatcher_argument,
    add_ops_arguments,
    add_security_arguments,
    authenticator_from_args,
    usage,
)
from posa.cli.values import count, natural, seconds, seconds_or_zero

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa worker`` and ``posa autoscale``."""
    _add_worker(subparsers)
    _add_autoscale(subparsers)


def _program(args: argparse.Namespace, command: str) -> list[str]:
    argv: list[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        usage(f"give the program to run after --, e.g. "
              f"posa {command} --queue work/q -- sh -c 'wc -c'")
    return argv


def _early_stop() -> threading.Event:
    """An event that SIGTERM and SIGINT set from now on, so that a signal that comes
    while the command is starting (before ``serve_until_signalled`` takes the
    handlers over) stops it cleanly once it is up: names unregistered, children
    stopped, instead of the process dying with its name still registered."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def _add_worker(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "worker", help="run a program for every item of a work queue",
        description="Take items from the work queue --queue and run COMMAND for each: the "
        "item on stdin (bytes as they are, other data as JSON), or as a file path where an "
        "argument is {}; stdout is the result; exit status 0 completes the item, any "
        "other fails it (retried as the queue says). Example: posa worker --queue "
        "work/thumbs -- ffmpeg -i {} -frames:v 1 -f image2 -")
    p.add_argument("--queue", required=True, help="the work queue's name")
    p.add_argument("--name", default=None,
                   help="this worker's name (default QUEUE/worker-RANDOM); with "
                   "--concurrency N > 1 the workers are NAME/1 ... NAME/N")
    p.add_argument("--concurrency", type=count, default=1,
                   help="items processed at once, each by a process of its own (default 1)")
    p.add_argument("--timeout", type=seconds, default=None,
                   help="seconds one run of COMMAND may take; then its process group is "
                   "killed and the item fails (default: no limit)")
    add_dispatcher_argument(p)
    p.add_argument("--listen", default="tcp://127.0.0.1:0",
                   help="where to receive (default tcp://127.0.0.1:0)")
    p.add_argument("--credential", default=None,
                   help="token owning the worker's name; reuse it to restart in place")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS",
                   help="the program to run per item, after --")
    add_ops_arguments(p)
    add_security_arguments(p, acl=False)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Run the workers until a signal, then drain and close; the exit code (0)."""
    from posa.naming.client import RegistryClient  # loaded when the command runs
    from posa.work.command import Command
    from posa.work.worker import Worker
    argv = _program(args, "worker")
    if args.concurrency < 1:
        raise SystemExit("posa worker: --concurrency must be at least 1")
    stop = _early_stop()
    command = Command(argv, timeout=args.timeout)
    base = args.name or f"{args.queue}/worker-{secrets.token_hex(4)}"
    names = [base] if args.concurrency == 1 else [f"{base}/{i}"
                                                  for i in range(1, args.concurrency + 1)]
    auth = authenticator_from_args(args, base)
    with RegistryClient(args.dispatcher, authenticator=auth) as registry:
        workers: list[Worker] = []
        try:
            for name in names:
                workers.append(Worker(name, args.queue, command, registry=registry,
                                      listen=args.listen, credential=args.credential,
                                      authenticator=auth))
            for worker in workers:
                worker.start()
            monitor = ops.Monitor(*workers)
            server = (ops.OpsServer(monitor, host=args.ops_host, port=args.ops_port)
                      if args.ops_port is not None else None)
            announce = (f"worker {base} for {args.queue} running {shlex.join(argv)}"
                        f" x{args.concurrency}")
            return ops.serve_until_signalled(workers, grace=args.grace, monitor=monitor,
                                             server=server, stop=stop,
                                             ready=lambda: print(announce, flush=True))
        finally:
            for worker in workers:
                worker.close()


def _add_autoscale(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "autoscale", help="run between --min and --max `posa worker` processes for a queue",
        description="Start and stop local `posa worker --queue NAME -- COMMAND` processes "
        "as the queue's backlog and the age of its oldest item ask, between --min and "
        "--max. Example: posa autoscale --queue work/thumbs --min 1 --max 8 -- "
        "sh -c 'convert - -resize 64x64 png:-'")
    p.add_argument("--queue", required=True, help="the work queue's name")
    p.add_argument("--min", type=natural, default=1, help="workers at least (default 1)")
    p.add_argument("--max", type=count, default=4, help="workers at most (default 4)")
    p.add_argument("--per-worker", type=count, default=1, metavar="N",
                   help="items waiting or in hand per worker before one more starts "
                   "(default 1)")
    p.add_argument("--max-age", type=seconds, default=5.0, metavar="SECONDS",
                   help="one worker more while the oldest waiting item is older (default 5)")
    p.add_argument("--cooldown", type=seconds_or_zero, default=10.0, metavar="SECONDS",
                   help="scale down only after this long with nothing waiting (default 10)")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="SECONDS",
                   help="seconds between decisions (default 1)")
    p.add_argument("--timeout", type=seconds, default=None,
                   help="passed to each `posa worker`: seconds one run of COMMAND may take")
    add_dispatcher_argument(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS",
                   help="the program each worker runs per item, after --")
    add_ops_arguments(p)
    add_security_arguments(p, acl=False)
    p.set_defaults(run=_run_autoscale)


def _run_autoscale(args: argparse.Namespace) -> int:
    """Scale `posa worker` processes until a signal, then stop them; the exit code."""
    from posa.naming.client import RegistryClient  # loaded when the command runs
    from posa.work.autoscale import Autoscaler, ScaleRule
    argv = _program(args, "autoscale")
    stop = _early_stop()
    try:
        rule = ScaleRule(minimum=args.min, maximum=args.max, per_worker=args.per_worker,
                         max_age=args.max_age, cooldown=args.cooldown)
    except ValueError as exc:
        usage(f"autoscale: {exc}")
    worker = [sys.executable, "-m", "posa", "worker", "--queue", args.queue,
              "--dispatcher", args.dispatcher, "--grace", str(args.grace)]
    for flag, value in (("--timeout", args.timeout), ("--keys", args.keys),
                        ("--key-id", args.key_id)):
        if value is not None:
            worker += [flag, str(value)]
    logging.getLogger("posa.work.autoscale").setLevel(logging.INFO)
    auth = authenticator_from_args(args)
    with RegistryClient(args.dispatcher, authenticator=auth) as registry:
        scaler = Autoscaler(args.queue, [*worker, "--", *argv], registry=registry, rule=rule,
                            interval=args.interval, grace=args.grace, authenticator=auth)
        monitor = ops.Monitor(scaler)
        server = (ops.OpsServer(monitor, host=args.ops_host, port=args.ops_port)
                  if args.ops_port is not None else None)
        announce = (f"autoscale {args.queue}: {args.min}..{args.max} worker(s) running "
                    f"{shlex.join(argv)}")
        scaler.start()
        try:
            return ops.serve_until_signalled([scaler], grace=args.grace, monitor=monitor,
                                             server=server, stop=stop,
                                             ready=lambda: print(announce, flush=True))
        finally:
            scaler.close()                  # (idempotent: already closed on a signal)
