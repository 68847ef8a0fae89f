"""Instructions per request of ``Peer.request`` over tcp, counted by callgrind.

    python -m bench.instructions [--side server|client|both] [--calls 1000,7000]

A dispatcher, an echo peer and a client peer run in processes of their own, as
in the suite's ``peer_request_tcp`` row; the side measured runs under
``valgrind --tool=callgrind``, once making the first number of timed calls and
once the second (500 warm-up calls before each), and the difference of its two
totals divided by the difference of the call counts is what one request costs
that process: start-up, warm-up and exit cancel out. Unlike time on a shared
machine the count repeats within about 1% from run to run, so a change of a few
hundred instructions shows (docs/benchmarks.md, the hot-path round). Needs
valgrind on the PATH; the modules are compiled once into a temporary directory
first, so no process measures compiling them.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading

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


def role_client(dispatcher: str, calls: int) -> None:
    """The client peer: warm-up calls, then ``calls`` more, then exit."""
    import posa
    with posa.RegistryClient(dispatcher) as reg, posa.Peer(
            "bench/instructions-client", registry=reg, listen="tcp://127.0.0.1:0") as peer:
        for _ in range(WARMUP + calls):
            peer.request(NAME, BODY, timeout=30.0)


GRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def start_dispatcher(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """A dispatcher process on tcp, and its address (what it writes later is read,
    so that it never waits on a full pipe)."""
    dispatcher = subprocess.Popen(
        [sys.executable, "-m", "posa", "dispatcher", "--listen", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    assert dispatcher.stdout is not None
    line = ""
    while " listening on " not in line:
        line = dispatcher.stdout.readline()
        if not line:
            dispatcher.wait()
            raise SystemExit("the dispatcher did not start")
    threading.Thread(target=dispatcher.stdout.read, daemon=True).start()
    return dispatcher, line.split(" listening on ")[1].split()[0]


def collected(stderr: str, who: str) -> int:
    """The instruction total callgrind wrote on ``stderr`` for ``who``."""
    found = _COLLECTED.search(stderr)
    if found is None:
        raise SystemExit(f"no count from callgrind for the {who}: is valgrind installed?")
    return int(found.group(1))


def compiled_env(pycache: str) -> dict[str, str]:
    """The environment for measured processes: posa and bench compiled once into
    ``pycache`` first, so that no measured process compiles them."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "posa", "bench"],
                   env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, check=False)
    return env


def _count(side: str, calls: int, env: dict[str, str]) -> int:
    """Instructions the ``side`` process executed in a run of ``calls`` calls."""
    me = [sys.executable, "-m", "bench.instructions", "--role"]
    dispatcher, address = start_dispatcher(env)
    try:
        server = subprocess.Popen(
            (GRIND if side == "server" else []) + me + ["server", address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=REPO_ROOT)
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise SystemExit(f"the echo peer did not start: {server.communicate()[1]}")
        client = subprocess.run(
            (GRIND if side == "client" else []) + me + ["client", address, str(calls)],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
        _, server_err = server.communicate("stop\n", timeout=120)
    finally:
        dispatcher.terminate()
        dispatcher.wait()
    return collected(server_err if side == "server" else client.stderr, side)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("server", "client", "both"), default="both")
    parser.add_argument("--calls", default="1000,7000",
                        help="the two numbers of timed calls (default 1000,7000)")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        role, dispatcher, *rest = args.role
        if role == "server":
            role_server(dispatcher)
        else:
            role_client(dispatcher, int(rest[0]))
        return
    few, many = (int(n) for n in args.calls.split(","))
    with tempfile.TemporaryDirectory(prefix="posa-instructions-") as pycache:
        env = compiled_env(pycache)
        for side in ("server", "client") if args.side == "both" else (args.side,):
            per_call = (_count(side, many, env) - _count(side, few, env)) / (many - few)
            print(f"{side}: {per_call:,.0f} instructions per request")


if __name__ == "__main__":
    main(sys.argv[1:])
