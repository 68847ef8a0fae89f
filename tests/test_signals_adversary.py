"""posa's promises against signals: handlers that return, and handlers that raise.

A process takes signals all the time: a sampling profiler's ``SIGPROF``, a
watchdog's ``SIGALRM``, Ctrl-C's ``SIGINT``. A signal whose handler returns
interrupts a blocking system call, which is made again; every blocking call a
user makes must still end by its deadline, and a server process must keep
answering. A handler that raises (``KeyboardInterrupt`` from Ctrl-C) raises at
whatever bytecode the main thread is at: the objects it interrupted must stay
usable (no lock left held), and the receiver's history must stay that of a
reliable stream (each message at most once, in order; those whose send
returned, exactly once).

Each case runs in a process of its own, given a hard time limit, so a call that
never ends fails the case instead of hanging the suite.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.support import Proc, free_port

pytestmark = pytest.mark.timeout(240)

PRELUDE = """
import asyncio, random, signal, socket, sys, threading, time
import posa
silent = socket.create_server(("127.0.0.1", 0))     # accepts, reads nothing, answers nothing
held = []
def accept():
    while True:
        try:
            held.append(silent.accept()[0])
        except OSError:
            return
threading.Thread(target=accept, daemon=True).start()
SILENT = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
alarms = []
signal.signal(signal.SIGALRM, lambda signo, frame: alarms.append(signo))

def storm(call, timeout):
    '''How ``call()`` ended, and how late, with a timer signal every 5 ms.'''
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    try:
        call()
        outcome = "returned"
    except posa.PosaError as exc:
        outcome = type(exc).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    late = time.monotonic() - start - timeout
    print(outcome, "late" if late > 5.0 else "on time", f"{late:.2f}", len(alarms), flush=True)
"""

RECEIVE = """
with posa.Peer("alone", registry=posa.LocalRegistry(), listen="tcp://127.0.0.1:0") as peer:
    storm(lambda: peer.receive(timeout=1.0), 1.0)
"""

FLUSH = """
reg = posa.LocalRegistry()
reg.register("silent", [SILENT], credential="silent")
with posa.Peer("caller", registry=reg, listen="tcp://127.0.0.1:0", linger=0.0) as peer:
    peer.send("silent", 1, timeout=1.0)
    storm(lambda: peer.flush(timeout=1.0), 1.0)
"""

FULL_WINDOW = """
reg = posa.LocalRegistry()
reg.register("silent", [SILENT], credential="silent")
with posa.Peer("caller", registry=reg, listen="tcp://127.0.0.1:0", window=2,
               linger=0.0) as peer:
    def fill():
        for i in range(3):
            peer.send("silent", i, timeout=1.0)
    storm(fill, 1.0)
"""

CLOSE = """
reg = posa.LocalRegistry()
reg.register("silent", [SILENT], credential="silent")
peer = posa.Peer("caller", registry=reg, listen="tcp://127.0.0.1:0", linger=1.0)
peer.send("silent", 1, timeout=1.0)
storm(peer.close, 1.0)
"""

LOOKUP_CACHED = """
with posa.RegistryClient(SILENT, timeout=1.0) as reg:
    storm(lambda: reg.lookup("anything"), 1.0)
"""

AIO_REQUEST = """
reg = posa.LocalRegistry()
reg.register("silent", [SILENT], credential="silent")
async def main():
    peer = posa.aio.Peer("caller", registry=reg, listen="tcp://127.0.0.1:0", linger=0.0)
    try:
        await peer.request("silent", 1, timeout=1.0)
    finally:
        peer.sync.close()
import posa.aio
storm(lambda: asyncio.run(main()), 1.0)
"""

CASES = {"receive": RECEIVE, "flush": FLUSH, "full window": FULL_WINDOW, "close": CLOSE,
         "cached lookup": LOOKUP_CACHED, "aio request": AIO_REQUEST}


def _run(script: str, limit: float) -> str:
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"not ended {limit:g} s after it began: {exc.stdout!r}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize("case", list(CASES))
def test_a_blocking_call_ends_by_its_deadline_in_a_storm_of_signals(case: str) -> None:
    outcome = _run(PRELUDE + textwrap.dedent(CASES[case]), 60.0)
    assert " on time " in outcome, outcome
    if case != "close":         # close() delivers what it can and returns
        assert outcome.startswith("Timeout"), outcome


RUN_WITH_A_STORM_HANDLER = """
import signal, sys
signal.signal(signal.SIGALRM, lambda signo, frame: None)     # a profiler's, a watchdog's
from posa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_dispatcher_keeps_answering_in_a_storm_of_signals_and_stops_on_sigterm(
        ) -> None:
    import posa
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = Proc.python(RUN_WITH_A_STORM_HANDLER, "dispatcher", "--listen", address)
    try:
        proc.expect("posa dispatcher")
        pid = proc.popen.pid
        with posa.RegistryClient(address, timeout=5.0, cache=False) as reg:
            for i in range(40):
                for _ in range(5):
                    os.kill(pid, signal.SIGALRM)
                reg.register(f"storm/{i}", ["tcp://127.0.0.1:1"], credential="c")
                assert reg.lookup(f"storm/{i}").name == f"storm/{i}"
        for _ in range(20):
            os.kill(pid, signal.SIGALRM)
        assert proc.terminate(timeout=30.0) == 0, proc.stderr_now()
    finally:
        proc.close()

