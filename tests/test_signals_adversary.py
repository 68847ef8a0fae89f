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

from tests.support import SILENT_RECIPIENT, Proc, free_port

pytestmark = pytest.mark.timeout(240)

PRELUDE = SILENT_RECIPIENT + """
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

SUBSCRIBER = """
reg = posa.LocalRegistry()
with posa.EventChannel("quiet/ch", registry=reg, listen="tcp://127.0.0.1:0"), \
        posa.Subscriber("quiet/ch", registry=reg, listen="tcp://127.0.0.1:0") as sub:
    storm(lambda: sub.receive(timeout=1.0), 1.0)
"""

WORK_QUEUE = """
reg = posa.LocalRegistry()
with posa.WorkQueue("storm/q", registry=reg, listen="tcp://127.0.0.1:0") as queue:
    queue.put({"k": 1})             # no worker: never finished
    storm(lambda: queue.join(timeout=1.0), 1.0)
"""

CALL = """
reg = posa.LocalRegistry()
reg.register("silent/one", [SILENT], credential="silent", meta={"service": "silent"})
with posa.Client(registry=reg) as client:
    storm(lambda: client.call("silent", 1, timeout=1.0), 1.0)
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

AIO_FLUSH = """
reg = posa.LocalRegistry()
reg.register("silent", [SILENT], credential="silent")
async def main():
    peer = posa.aio.Peer("caller", registry=reg, listen="tcp://127.0.0.1:0", linger=0.0,
                         window=2)
    try:
        for i in range(2):
            await peer.send("silent", i, timeout=1.0)
        await peer.flush(timeout=1.0)
    finally:
        peer.sync.close()
import posa.aio
storm(lambda: asyncio.run(main()), 1.0)
"""

CASES = {"receive": RECEIVE, "flush": FLUSH, "full window": FULL_WINDOW, "close": CLOSE,
         "call": CALL, "subscriber": SUBSCRIBER,
         "work queue": WORK_QUEUE, "cached lookup": LOOKUP_CACHED,
         "aio request": AIO_REQUEST, "aio flush": AIO_FLUSH}


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



INTERRUPTED = """
import random, signal, sys, threading, time
import posa
SEED, ROUNDS = int(sys.argv[1]), int(sys.argv[2])
armed = False
def interrupt(signo, frame):        # Ctrl-C, at whatever bytecode the main thread is at
    global armed
    if armed:
        armed = False
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
reg = posa.LocalRegistry()
log = []
arrived = threading.Condition()
receiver = posa.Peer("receiver", registry=reg, listen="tcp://127.0.0.1:0")
sender = posa.Peer("sender", registry=reg, listen="tcp://127.0.0.1:0", window=8)
server = posa.Server("echo", lambda body: body, registry=reg)
client = posa.Client(registry=reg, timeout=5.0)
dispatcher = posa.Dispatcher("tcp://127.0.0.1:0")
names = posa.RegistryClient(dispatcher.address, timeout=5.0, cache=False)
names.register("somewhere", ["tcp://127.0.0.1:1"], credential="c")
def serve():
    while True:
        try:
            msg = receiver.receive()
        except posa.Closed:
            return
        with arrived:
            log.append(msg.body)
            arrived.notify_all()
        if msg.kind == posa.Kind.REQUEST:
            receiver.reply(msg, msg.body)
threading.Thread(target=serve, daemon=True).start()
OPS = {"send": lambda i: sender.send("receiver", i, timeout=5.0),
       "request": lambda i: sender.request("receiver", i, timeout=5.0) == i or sys.exit(4),
       "flush": lambda i: (sender.send("receiver", i, timeout=5.0), sender.flush(5.0)),
       "call": lambda i: client.call("echo", i, timeout=5.0) == i or sys.exit(5),
       "lookup": lambda i: names.lookup("somewhere").name == "somewhere" or sys.exit(6)}
def locks_free():     # the peer's reactor takes a forwarder's lock for a moment
    for fwd in list(sender.sender.by_thread.values()):   # (acks, a batch's timer):
        if not fwd.lock.acquire(timeout=10.0):           # one held is one not let go
            return False
        fwd.lock.release()
    return True
rng = random.Random(SEED)
done, i = [], 0
for _ in range(ROUNDS):
    for op in OPS:
        for _ in range(40):
            i += 1
            try:
                armed = True
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 4e-4))
                OPS[op](i)
                armed = False
            except KeyboardInterrupt:
                if not locks_free():
                    print("seed", SEED, "lock held after", op, i, flush=True)
                    sys.exit(3)
                continue
            finally:
                armed = False
            if op in ("send", "request", "flush"):
                done.append(i)
with arrived:    # no flush: what follows an interrupted send must not wait behind a gap
    arrived.wait_for(lambda: not set(done) - set(log), timeout=10.0)
seen = list(log)
disorder = [(a, b) for a, b in zip(seen, seen[1:]) if b <= a]     # twice, or out of order
missing = sorted(set(done) - set(seen))
print("seed", SEED, "disorder", disorder[:5], flush=True)
print("seed", SEED, "missing", missing[:5], flush=True)
names.close(); dispatcher.close()
client.close(); server.close(); sender.close(); receiver.close()
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_keyboard_interrupt_at_any_moment_leaves_no_lock_held_nor_a_message_twice(
        seed: int) -> None:
    """KeyboardInterrupt at seeded random moments of sends, requests, flushes,
    service calls and lookups: each next call ends (no lock is left held), and the
    receiver gets each message at most once, in order."""
    disorder = _run_args(INTERRUPTED, [str(seed), "10"], 120.0).splitlines()[0]
    assert disorder == f"seed {seed} disorder []", disorder


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_keyboard_interrupt_leaves_no_gap_that_later_messages_wait_behind(seed: int) -> None:
    """Every message whose send returned arrives, with no flush: one interrupted
    between being taken into the window and being written leaves no gap the
    receiver holds the messages after it behind."""
    missing = _run_args(INTERRUPTED, [str(seed), "10"], 120.0).splitlines()[1]
    assert missing == f"seed {seed} missing []", missing


def _run_args(script: str, args: list[str], limit: float) -> str:
    try:
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"not ended {limit:g} s after it began (seed and args {args}): "
                    f"{exc.stdout!r}")
    if (done.returncode and "release unlocked lock" in done.stderr
            and "threading.py" in done.stderr):
        # not posa's: threading.Thread.start (a tcp writer starts its flusher on a
        # first burst) waits on a Condition whose wait, cut at the wrong bytecode,
        # raises RuntimeError in place of the KeyboardInterrupt (the ledger says so)
        pytest.xfail(f"args {args}: KeyboardInterrupt inside threading's own code")
    assert done.returncode == 0, f"args {args}: " + done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.strip()


def test_the_event_channel_keeps_delivering_in_a_storm_of_signals_and_stops_on_sigterm(
        ) -> None:
    import posa
    dispatcher = f"tcp://127.0.0.1:{free_port()}"
    names = Proc.python(RUN_WITH_A_STORM_HANDLER, "dispatcher", "--listen", dispatcher)
    channel = None
    try:
        names.expect("posa dispatcher")
        channel = Proc.python(RUN_WITH_A_STORM_HANDLER, "channel", "storm/events",
                              "--dispatcher", dispatcher, "--listen", "tcp://127.0.0.1:0")
        channel.expect("channel storm/events at", timeout=30)
        pid = channel.popen.pid
        with posa.Subscriber("storm/events", dispatcher=dispatcher) as sub, \
                posa.Publisher("storm/events", dispatcher=dispatcher) as pub:
            for i in range(100):
                os.kill(pid, signal.SIGALRM)
                os.kill(pid, signal.SIGALRM)
                pub.publish("t", i)
            pub.flush(30)
            got = [sub.receive(timeout=30).body for _ in range(100)]
        assert got == list(range(100))
        assert channel.terminate(timeout=30.0) == 0, channel.stderr_now()
    finally:
        if channel is not None:
            channel.close()
        names.close()


CLOSED_TWICE = """
import random, signal, sys
import posa
armed = False
def interrupt(signo, frame):
    global armed
    if armed:
        armed = False
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
rng = random.Random(int(sys.argv[1]))
reg = posa.LocalRegistry()
receiver = posa.Peer("receiver", registry=reg, listen="tcp://127.0.0.1:0")
for i in range(40):
    peer = posa.Peer(f"p{i}", registry=reg, listen="tcp://127.0.0.1:0", linger=0.5)
    peer.send("receiver", i, timeout=5.0)
    try:
        armed = True
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 2e-3))
        peer.close()
    except KeyboardInterrupt:
        pass
    finally:
        armed = False
    peer.close()                    # again: it ends what the interrupted one began
    try:
        peer.receive(timeout=0)
        print("seed", sys.argv[1], "a message after close", i)
    except posa.Closed:
        pass
    except posa.Timeout:
        print("seed", sys.argv[1], "the inbox is still open after close", i)
    try:
        reg.lookup(f"p{i}")
        print("seed", sys.argv[1], "still registered after close", i)
    except posa.NameNotFound:
        pass
receiver.close()
print("seed", sys.argv[1], "done")
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_a_close_interrupted_by_keyboard_interrupt_is_ended_by_the_next_close(
        seed: int) -> None:
    outcome = _run_args(CLOSED_TWICE, [str(seed)], 120.0)
    assert outcome == f"seed {seed} done", outcome
