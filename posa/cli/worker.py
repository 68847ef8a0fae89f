"""``posa worker --queue NAME -- COMMAND ARGS...``: any program as a work-queue worker.

Runs ``--concurrency`` workers (``posa.work.worker.Worker``) of the queue NAME
in this process, each running COMMAND once per item (``posa.work.command``:
the item on stdin, or as a file where an argument is ``{}``; stdout is the
result; exit status 0 completes the item, any other fails it and the queue
retries it; ``--timeout`` kills the program's process group). It prints
``worker NAME for QUEUE running COMMAND`` once ready, and on SIGTERM or SIGINT
takes no more items, finishes those in hand and acknowledges them (within
``--grace`` seconds), then exits with 0.
"""
from __future__ import annotations

import argparse
import secrets
import shlex
from typing import Any

from posa import ops
from posa.cli.options import (
    add_dispatcher_argument,
    add_ops_arguments,
    add_security_arguments,
    authenticator_from_args,
)

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa worker``."""
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
    p.add_argument("--concurrency", type=int, default=1,
                   help="items processed at once, each by a process of its own (default 1)")
    p.add_argument("--timeout", type=float, default=None,
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
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise SystemExit("posa worker: give the program to run after --, e.g. "
                         "posa worker --queue work/q -- sh -c 'wc -c'")
    if args.concurrency < 1:
        raise SystemExit("posa worker: --concurrency must be at least 1")
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
                                             server=server,
                                             ready=lambda: print(announce, flush=True))
        finally:
            for worker in workers:
                worker.close()
