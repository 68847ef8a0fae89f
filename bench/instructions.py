"""Instructions per request of ``Peer.request`` over tcp, counted by callgrind.

    python -m bench.instructions [--side server|client|both] [--calls 1000,7000]
                                 [--threads N]

A dispatcher, an echo peer and a client peer run in processes of their own, as
in the suite's ``peer_request_tcp`` row; the side measured runs under
``valgrind --tool=callgrind``, once making the first number of timed calls and
once the second (500 warm-up calls before each), and the difference of its two
totals divided by the difference of the call counts is what one request costs
that process: start-up, warm-up and exit cancel out. Unlike time on a shared
machine the count repeats within about 1% from run to run, so a change of a few
hundred instructions shows (docs/benchmarks.md, the hot-path round). Needs
valgrind on the PATH; the modules are compiled once into a temporary directory
first, so no process measures compiling them. With ``--threads N`` the client's
calls are made by N threads sharing its peer (each thread its own forwarder, as
in the suite's ``scale_calls_N`` rows), each taking the next call from one count
until the warm-up calls and then the timed ones are made.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench.process import precompile

GRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
WARMUP = 500
NAME = "bench/instructions-echo"
BODY = {"seq": 0, "body": b"x" * 83}
_COLLECTED = re.compile(r"Collected : (\d+)")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def role_server(dispatcher: str) -> None:
    """The echo peer: serves until a line arrives on stdin."""
    import posa
    with posa.RegistryClient(dispatcher) as reg, posa.Peer(
            NAME, registry=reg, listen="tcp://127.0.0.1:0", handler=lambda m: m.body):
        print("READY", flush=True)
        sys.stdin.readline()


def role_client(dispatcher: str, calls: int, threads: int = 1) -> None:
    """The client peer: warm-up calls, then ``calls`` more, then exit; with
    ``threads`` above 1, made by that many threads taking them from one count."""
    import posa
    with posa.RegistryClient(dispatcher) as reg, posa.Peer(
            "bench/instructions-client", registry=reg, listen="tcp://127.0.0.1:0") as peer:
        if threads == 1:
            for _ in range(WARMUP + calls):
                peer.request(NAME, BODY, timeout=30.0)
            return
        _threaded_calls(peer, calls, threads)


def _threaded_calls(peer: Any, calls: int, threads: int) -> None:
    """``threads`` threads make the warm-up calls (every thread at least one), wait
    for each other, then make ``calls`` calls taken from one count."""
    request, met = peer.request, threading.Barrier(threads)
    # (each thread's first call, which makes its forwarder, is one of the warm-up's)
    rounds = ((itertools.count(), max(WARMUP - threads, 0)), (itertools.count(), calls))

    def caller() -> None:
        request(NAME, BODY, timeout=30.0)
        for count, limit in rounds:
            met.wait()
            while next(count) < limit:
                request(NAME, BODY, timeout=30.0)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def start_dispatcher(env: dict[str, str], prefix: Sequence[str] = ()
                     ) -> tuple[subprocess.Popen[str], str, Callable[[], str]]:
    """A ``posa dispatcher`` process (run under ``prefix``, e.g. ``GRIND``), its
    address, and a function that returns what else it wrote once it ended (read
    on a thread meanwhile, so that it never waits on a full pipe)."""
    dispatcher = subprocess.Popen(
        [*prefix, sys.executable, "-m", "posa", "dispatcher", "--listen", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    assert dispatcher.stdout is not None
    line, head = "", []
    while " listening on " not in line:
        line = dispatcher.stdout.readline()
        head.append(line)
        if not line:
            dispatcher.wait()
            raise SystemExit(f"the dispatcher did not start: {''.join(head)}")
    address = line.split(" listening on ")[1].split()[0]
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.append(dispatcher.stdout.read()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()

    def output() -> str:
        reader.join(timeout=60)
        return "".join(rest)
    return dispatcher, address, output


def stop(process: subprocess.Popen[str]) -> None:
    """End ``process`` with SIGTERM (a dispatcher stops cleanly on it) and reap it."""
    process.terminate()
    process.wait(timeout=300)


def collected(output: str, side: str) -> int:
    """The instruction total callgrind reported in ``output``."""
    found = _COLLECTED.search(output)
    if found is None:
        raise SystemExit(f"no count from callgrind for the {side}: is valgrind installed?")
    return int(found.group(1))


def _count(module: str, side: str, calls: int, env: dict[str, str],
           client_args: list[str]) -> int:
    """Instructions the ``side`` process executed in a run of ``calls`` calls, the
    roles being ``module``'s (``--role server ADDRESS`` and ``--role client ADDRESS
    CALLS *client_args``)."""
    me = [sys.executable, "-m", module, "--role"]
    dispatcher, address, _ = start_dispatcher(env)
    try:
        server = subprocess.Popen(
            (GRIND if side == "server" else []) + me + ["server", address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=REPO_ROOT)
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise SystemExit(f"the echo peer did not start: {server.communicate()[1]}")
        client = subprocess.run(
            (GRIND if side == "client" else []) + me
            + ["client", address, str(calls), *client_args],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        if client.returncode:
            raise SystemExit(f"the client failed: {client.stderr[-2000:]}")
        # (the line says how many calls the client made: a server that must see
        # them all before it stops, as a one-way receiver, reads it)
        _, server_err = server.communicate(f"stop {calls}\n", timeout=300)
    finally:
        stop(dispatcher)
    return collected(server_err if side == "server" else client.stderr, side)


@contextlib.contextmanager
def compiled_env() -> Iterator[dict[str, str]]:
    """An environment whose processes load posa and bench compiled in a temporary
    directory (compiled once here: no measured process compiles them)."""
    with tempfile.TemporaryDirectory(prefix="posa-instructions-") as pycache:
        env = dict(os.environ, PYTHONPYCACHEPREFIX=pycache)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        precompile(sys.executable, env, REPO_ROOT)
        yield env


def per_call(count: Callable[[int], int], calls: str) -> float:
    """Instructions per call: the difference of ``count`` at the two numbers of
    ``calls`` ("few,many"), divided by the difference of the numbers."""
    few, many = (int(n) for n in calls.split(","))
    return (count(many) - count(few)) / (many - few)


def parser(module: str, doc: str, calls: str) -> argparse.ArgumentParser:
    """The command line of ``module`` (``--side``, ``--calls``, the hidden ``--role``)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}",
                                     description=doc.split("\n\n")[0])
    parser.add_argument("--side", choices=("server", "client", "both"), default="both")
    parser.add_argument("--calls", default=calls,
                        help=f"the two numbers of timed calls (default {calls})")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    return parser


def play(role: list[str], roles: dict[str, Callable[..., None]]) -> None:
    """Run the hidden ``--role NAME DISPATCHER [NUMBER...]`` a measured process was
    started with: ``roles[NAME](DISPATCHER, *NUMBERS)``."""
    name, dispatcher, *numbers = role
    roles[name](dispatcher, *(int(n) for n in numbers))


def report(module: str, args: argparse.Namespace, what: str,
           client_args: list[str] | None = None) -> None:
    """Count and print the instructions per call of the sides ``args`` asks for."""
    sides = ("server", "client") if args.side == "both" else (args.side,)
    with compiled_env() as env:
        for side in sides:
            per = per_call(lambda calls, side=side: _count(  # type: ignore[misc]
                module, side, calls, env, client_args or []), args.calls)
            print(f"{side}: {per:,.0f} instructions per {what}", flush=True)


def main(argv: list[str]) -> None:
    cli = parser("bench.instructions", __doc__ or "", "1000,7000")
    cli.add_argument("--threads", type=int, default=1,
                     help="client threads sharing its peer (default 1)")
    args = cli.parse_args(argv)
    if args.role:
        return play(args.role, {"server": role_server, "client": role_client})
    report("bench.instructions", args, "request",
           [str(args.threads)] if args.threads > 1 else [])


if __name__ == "__main__":
    main(sys.argv[1:])
