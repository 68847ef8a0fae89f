"""A wait for an answer keeps its deadline while signals keep coming.

A process may take signals all the time: a sampling profiler's ``SIGPROF``, a
watchdog's ``SIGALRM`` every few milliseconds, a debugger or profiler that
stops its threads to look at them. Each interrupts a blocking system call; the
interpreter runs the signal's handler and makes the call again, and a call
whose time limit is the socket's own (``SO_RCVTIMEO``) then starts its whole
time again: with signals more often than that limit it never ends. A request,
a service call and an uncached lookup to a recipient that never answers must
still raise ``Timeout`` by their deadlines, whichever thread waits.

Each case runs in a process of its own (a wait that never ends would otherwise
hang the suite), with a signal every 20 ms to the thread that waits (the main
thread, or another), and is given 60 s to say how its call ended (a call that
has not ended by then fails the case).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.support import SILENT_RECIPIENT

pytestmark = pytest.mark.timeout(180)

PRELUDE = SILENT_RECIPIENT + """
def outcome_of(call, timeout):
    start = time.monotonic()
    try:
        call()
        outcome = "answered"
    except posa.PosaError as exc:
        outcome = type(exc).__name__
    return outcome, time.monotonic() - start - timeout

def ended(call, timeout):
    '''How ``call()`` ended, with timer signals every 20 ms meanwhile (they come to
    the main thread, which waits).'''
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        return outcome_of(call, timeout)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

def in_a_thread(call, timeout):
    '''How ``call()`` ended in a thread of its own, sent a signal every 20 ms.'''
    got = []
    worker = threading.Thread(target=lambda: got.append(outcome_of(call, timeout)),
                              daemon=True)
    worker.start()
    end = time.monotonic() + 60.0
    while worker.is_alive() and time.monotonic() < end:
        signal.pthread_kill(worker.ident, signal.SIGALRM)   # (the handler runs in
        time.sleep(0.02)                                    # the main thread)
    return got[0] if got else ("still waiting", 60.0)

def report(outcome, late):
    print(outcome, "late" if late > 5.0 else "on time", f"{late:.2f}", len(alarms), flush=True)
"""

REQUEST = """
reg = posa.LocalRegistry()
reg.register("silent", [SILENT], credential="silent")
with posa.Peer("caller", registry=reg, listen="tcp://127.0.0.1:0") as peer:
    report(*WAIT(lambda: peer.request("silent", 1, timeout=1.0), 1.0))
"""

CALL = """
reg = posa.LocalRegistry()
reg.register("silent/one", [SILENT], credential="silent", meta={"service": "silent"})
with posa.Client(registry=reg) as client:
    report(*WAIT(lambda: client.call("silent", 1, timeout=1.0), 1.0))
"""

LOOKUP = """
with posa.RegistryClient(SILENT, timeout=1.0, cache=False) as reg:
    report(*WAIT(lambda: reg.lookup("anything"), 1.0))
"""


def _run(case: str, wait: str) -> str:
    script = PRELUDE + textwrap.dedent(case).replace("WAIT", wait)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the call had not ended 60 s after it began (its timeout: 1 s)")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize("wait", ["ended", "in_a_thread"])
@pytest.mark.parametrize("case", [REQUEST, CALL, LOOKUP], ids=["request", "call", "lookup"])
def test_a_wait_for_a_silent_recipient_ends_by_its_deadline_while_signals_come(
        case: str, wait: str) -> None:
    outcome = _run(case, wait)
    assert outcome.startswith("Timeout on time"), outcome
