"""CPU per request of two source trees of posa, run side by side on a shared machine.

    python -m bench.side_by_side TREE_A TREE_B [--rounds 8] [--calls 20000]

Each round starts, for each tree at the same moment, an echo peer and a client
peer (``Peer.request`` over tcp, as the suite's ``peer_request_tcp`` row) with
``PYTHONPATH`` set to that tree, against one dispatcher of this tree; after 500
warm-up calls each client makes ``--calls`` timed calls, and each process tells
the user and system CPU it spent over them (``getrusage``, counted in µs,
not in the 10 ms ticks of ``os.times``). Both trees' runs share whatever else
loads the machine, so the ratio of each round (B over A) holds
where before/after pairs run one after the other drown in the load of others;
the medians of the rounds' ratios are printed last. What changes the kernel's
share (syscalls, loopback tcp) or the caches shows here and not in the
instruction counts of ``bench.instructions``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading

from bench.instructions import start_dispatcher, stop

ECHO = "bench/side-by-side"
WARMUP = 500
SERVER = """
import resource, sys, posa
with posa.RegistryClient(sys.argv[1]) as reg, posa.Peer(
        sys.argv[2], registry=reg, listen="tcp://127.0.0.1:0", handler=lambda m: m.body):
    print("READY", flush=True)
    sys.stdin.readline()
    t = resource.getrusage(resource.RUSAGE_SELF)
    sys.stdin.readline()
    u = resource.getrusage(resource.RUSAGE_SELF)
    print(u.ru_utime - t.ru_utime, u.ru_stime - t.ru_stime, flush=True)
"""
CLIENT = f"""
import resource, sys, posa
with posa.RegistryClient(sys.argv[1]) as reg, posa.Peer(
        sys.argv[2] + "-client", registry=reg, listen="tcp://127.0.0.1:0") as peer:
    body = {{"seq": 0, "body": b"x" * 83}}
    for _ in range({WARMUP}):
        peer.request(sys.argv[2], body, timeout=30.0)
    print("READY", flush=True)
    sys.stdin.readline()
    t = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(int(sys.argv[3])):
        peer.request(sys.argv[2], body, timeout=30.0)
    u = resource.getrusage(resource.RUSAGE_SELF)
    print(u.ru_utime - t.ru_utime, u.ru_stime - t.ru_stime, flush=True)
"""
# what one run gives, in µs per request: server (user, system), client (user, system)
Run = tuple[float, float, float, float]


def _start(script: str, args: list[str], tree: str) -> subprocess.Popen[str]:
    """A Python process running ``script`` with ``tree`` first on its path, once it
    said READY."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=tree, env=dict(os.environ, PYTHONPATH=tree))
    assert process.stdout is not None
    if process.stdout.readline().strip() != "READY":
        process.kill()
        raise SystemExit(f"a process of {tree} did not start")
    return process


def _say(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def _times(process: subprocess.Popen[str], calls: int) -> tuple[float, float]:
    """The (user, system) µs per call that ``process`` printed."""
    assert process.stdout is not None
    user, system = (float(x) * 1e6 / calls for x in process.stdout.readline().split())
    return user, system


def run(tree: str, dispatcher: str, calls: int, name: str = ECHO) -> Run:
    """One timed run of ``calls`` requests of ``tree``'s client to its echo peer,
    registered as ``name``."""
    server = _start(SERVER, [dispatcher, name], tree)
    try:
        client = _start(CLIENT, [dispatcher, name, str(calls)], tree)
        _say(server, "go")
        _say(client, "go")
        client_times = _times(client, calls)
        client.wait(timeout=60)
        _say(server, "stop")
        server_times = _times(server, calls)
        server.wait(timeout=60)     # (it unregisters its name on the way out)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return (*server_times, *client_times)


def together(trees: list[str], dispatcher: str, calls: int, label: str) -> list[Run]:
    """A run of each of ``trees``, all started at the same moment (their echo
    peers' names end in ``label`` and the tree's place)."""
    runs: dict[int, Run] = {}
    threads = [threading.Thread(target=lambda i=i, tree=tree: runs.__setitem__(
        i, run(tree, dispatcher, calls, f"{ECHO}-{label}-{i}"))) for i, tree in enumerate(trees)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(runs) != len(trees):
        raise SystemExit("a run failed (see above)")
    return [runs[i] for i in range(len(trees))]


def _line(label: str, r: Run) -> str:
    return (f"{label}: server {r[0] + r[1]:6.1f} µs (user {r[0]:5.1f}), "
            f"client {r[2] + r[3]:6.1f} µs (user {r[2]:5.1f}), both {sum(r):6.1f} µs")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, help="two source trees (each holding posa/)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args(argv)
    trees = [os.path.abspath(tree) for tree in args.trees]
    dispatcher, address, _ = start_dispatcher(dict(os.environ))
    ratios: list[list[float]] = [[], [], []]
    try:
        for i in range(args.rounds):
            a, b = together(trees, address, args.calls, str(i))
            print(f"round {i + 1}  " + _line("A", a) + "  |  " + _line("B", b), flush=True)
            for j, (x, y) in enumerate(((a[0] + a[1], b[0] + b[1]), (a[2] + a[3], b[2] + b[3]),
                                        (sum(a), sum(b)))):
                ratios[j].append(y / x if x else float("nan"))
    finally:
        stop(dispatcher)
    for name, values in zip(("server", "client", "both"), ratios):
        print(f"{name}: B/A median {statistics.median(values):.3f} "
              f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main(sys.argv[1:])
