"""Instructions per uncached name lookup, counted by callgrind, on each side.

    python -m bench.instructions_lookup [--side client,dispatcher,pyro-client,pyro-ns]
                                        [--calls 1000,7000]

``client`` and ``dispatcher``: ``RegistryClient(dispatcher, cache=False).lookup``
of one registered name against a ``posa dispatcher`` process, as in the suite's
``disp_lookup`` row. ``pyro-client`` and ``pyro-ns``: Pyro5's name-server lookup
with one proxy reused, the row's anchor (needs Pyro5: run it with the benchmark
environment's interpreter). The side measured runs under callgrind, once making
the first number of timed lookups and once the second (500 warm-up lookups
before each); the difference of its two totals over the difference of the counts
is what one lookup costs that process (``bench.instructions`` says why this
repeats where time does not).

``--syscalls`` counts system calls instead, the same way, with ``strace -f -c``
(the client run under it, the dispatcher attached to; posa's sides only): what
callgrind does not see. ``--syscalls`` prints each call's count per lookup too.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from typing import Any

from bench.instructions import (
    GRIND,
    REPO_ROOT,
    WARMUP,
    collected,
    compiled_env,
    per_call,
    start_dispatcher,
    stop,
)

FAKE_ADDRESS = "tcp://127.0.0.1:9"      # what the lookups return; nobody connects
PYRO_NAME = "bench.echo"
SIDES = ("client", "dispatcher", "pyro-client", "pyro-ns")
_ME = [sys.executable, "-m", "bench.instructions_lookup", "--role"]   # a measured process


def role_lookups(dispatcher: str, calls: int) -> None:
    """Register one name, then look it up ``WARMUP + calls`` times, uncached."""
    import posa
    with posa.RegistryClient(dispatcher, cache=False) as reg:
        name = f"bench/instructions-lookup-{secrets.token_hex(3)}"
        reg.register(name, [FAKE_ADDRESS], credential=secrets.token_hex(8), lease=3600.0)
        lookup = reg.lookup
        for _ in range(WARMUP + calls):
            lookup(name)


def role_pyro_ns() -> None:
    """Pyro5's name server (its default threaded server, msgpack) holding one name;
    serves until a line arrives on stdin."""
    import threading

    import Pyro5.api
    import Pyro5.nameserver

    Pyro5.config.SERIALIZER = "msgpack"
    uri, daemon, _ = Pyro5.nameserver.start_ns(host="127.0.0.1", port=0,
                                               enableBroadcast=False)
    daemon.nameserver.register(PYRO_NAME, f"PYRO:{PYRO_NAME}@127.0.0.1:9")
    threading.Thread(target=lambda: (sys.stdin.readline(), daemon.shutdown()),
                     daemon=True).start()
    print(f"READY {uri.host}:{uri.port}", flush=True)
    daemon.requestLoop()
    daemon.close()


def role_pyro_lookups(ns: str, calls: int) -> None:
    """``WARMUP + calls`` lookups through one name-server proxy."""
    import Pyro5.api

    Pyro5.config.SERIALIZER = "msgpack"
    host, port = ns.rsplit(":", 1)
    with Pyro5.api.locate_ns(host=host, port=int(port)) as proxy:
        lookup = proxy.lookup
        for _ in range(WARMUP + calls):
            lookup(PYRO_NAME)


def _strace_counts(path: str) -> dict[str, int]:
    """The calls of each system call in the summary ``strace -c`` wrote to ``path``
    (the ``total`` line too)."""
    counts: dict[str, int] = {}
    with open(path, encoding="utf-8") as summary:
        for line in summary:
            fields = line.split()
            if len(fields) >= 5 and fields[0][:1].isdigit():
                counts[fields[-1]] = int(fields[3])
    return counts


def _count_syscalls(side: str, calls: int, env: dict[str, str],
                    per: dict[int, dict[str, int]]) -> int:
    """System calls the ``side`` process made in a run of ``calls`` lookups (each
    call's count kept in ``per[calls]``)."""
    dispatcher, address, _ = start_dispatcher(env)
    with tempfile.TemporaryDirectory(prefix="posa-syscalls-") as tmp:
        out = os.path.join(tmp, "summary")
        tracer = None
        try:
            if side == "dispatcher":    # attached to every thread, once it says so
                tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p",
                                           str(dispatcher.pid)],
                                          stderr=subprocess.PIPE, text=True)
                assert tracer.stderr is not None
                tracer.stderr.readline()
            subprocess.run((["strace", "-f", "-c", "-o", out] if side == "client" else [])
                           + _ME + ["lookups", address, str(calls)],
                           capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
        finally:
            if tracer is not None:
                tracer.send_signal(signal.SIGINT)   # detaches and writes the summary
                tracer.wait(timeout=60)
            stop(dispatcher)
        counts = per[calls] = _strace_counts(out)
    return counts.get("total", 0)


def _syscalls(side: str, calls: str, env: dict[str, str]) -> None:
    per: dict[int, dict[str, int]] = {}
    total = per_call(lambda n: _count_syscalls(side, n, env, per), calls)
    few, many = sorted(per)
    each = {name: (per[many].get(name, 0) - per[few].get(name, 0)) / (many - few)
            for name in per[many] if name != "total"}
    shown = ", ".join(f"{name} {n:.2f}" for name, n in sorted(each.items(), key=lambda i: -i[1])
                      if n >= 0.01)
    print(f"{side}: {total:.2f} system calls per lookup ({shown})", flush=True)


def _count_posa(side: str, calls: int, env: dict[str, str]) -> int:
    dispatcher, address, output = start_dispatcher(env, GRIND if side == "dispatcher" else ())
    try:
        client = subprocess.run(
            (GRIND if side == "client" else []) + _ME + ["lookups", address, str(calls)],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
    finally:
        stop(dispatcher)
    if side == "client":
        return collected(client.stderr, side)
    return collected(output(), side) if side == "dispatcher" else 0


def _count_pyro(side: str, calls: int, env: dict[str, str]) -> int:
    ns = subprocess.Popen((GRIND if side == "pyro-ns" else []) + _ME + ["pyro_ns"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    try:
        assert ns.stdout is not None
        line = ns.stdout.readline().split()
        if not line or line[0] != "READY":
            raise SystemExit(f"Pyro5's name server did not start: {ns.communicate()[1]}")
        client = subprocess.run(
            (GRIND if side == "pyro-client" else []) + _ME + ["pyro_lookups", line[1],
                                                              str(calls)],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
        _, ns_err = ns.communicate("stop\n", timeout=300)
    finally:
        if ns.poll() is None:
            ns.kill()
            ns.wait()
    if side not in SIDES:
        return 0
    return collected(client.stderr if side == "pyro-client" else ns_err, side)


def _role(role: str, rest: list[Any]) -> None:
    if role == "lookups":
        role_lookups(rest[0], int(rest[1]))
    elif role == "pyro_ns":
        role_pyro_ns()
    else:
        role_pyro_lookups(rest[0], int(rest[1]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions_lookup",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", default="client,dispatcher",
                        help=f"comma-separated, of {', '.join(SIDES)} "
                             "(default client,dispatcher)")
    parser.add_argument("--calls", default="1000,7000",
                        help="the two numbers of timed lookups (default 1000,7000)")
    parser.add_argument("--syscalls", action="store_true",
                        help="count system calls (strace) instead of instructions; "
                             "posa's sides only")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _role(args.role[0], args.role[1:])
        return
    sides = [s.strip() for s in args.side.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown side(s) {', '.join(sorted(unknown))}; choose of "
                     f"{', '.join(SIDES)}")
    if args.syscalls and any(side.startswith("pyro") for side in sides):
        parser.error("--syscalls counts posa's sides only (client, dispatcher)")
    with compiled_env() as env:
        for side in sides:
            if args.syscalls:
                _syscalls(side, args.calls, env)
                continue
            count = _count_pyro if side.startswith("pyro") else _count_posa
            # once unmeasured first: every module the processes import (the standard
            # library's too) is then compiled under the prefix, so that no measured
            # run compiles any (a measured first run did, by hundreds of millions)
            count("warm-up", 50, env)
            per = per_call(lambda calls, count=count, side=side: count(side, calls, env),
                           args.calls)
            print(f"{side}: {per:,.0f} instructions per lookup", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
