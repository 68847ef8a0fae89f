"""Helpers the fork tests share: ``Forked`` (a child whose report and exit status
the parent checks, with a deadline), ``held_by_a_thread`` (a lock held at the
fork by a thread the child has not), checks of what the child inherited
(``quiet``, ``holds_no_copy``), and the scenarios every transport runs
(``sends_and_requests_at_once``, ``closes_waking_no_poller``, ``just_exits``)."""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import posa
from posa.wire.codec import Kind, Message
from tests.support import ROOT

DEADLINE = 20.0         # s: far more than a child needs
SINK = "lab/fork-sink"


class Forked:
    """``act`` run in a child forked now. The child writes what became of it to a
    pipe (``"ok"`` or the exception) and leaves with ``os._exit``: status 0 if
    ``act`` returned, 1 if it raised. ``outcome`` waits (within a deadline, on the
    pipe and on a pidfd: a child still running then is killed) and returns what
    the child wrote once its exit status checks with it."""

    def __init__(self, act: Callable[[], object]) -> None:
        self._read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                           # the child: act, report, leave
            status = 1
            try:
                act()
                os.write(write, b"ok")
                status = 0
            except BaseException as exc:            # reported to the parent
                os.write(write, repr(exc).encode())
            finally:
                os._exit(status)
        os.close(write)
        self._pidfd = os.pidfd_open(self.pid)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pidfd != -1:                       # the parent failed first: end it
            os.kill(self.pid, signal.SIGKILL)
            self._reap()

    def _reap(self) -> int:
        os.close(self._read)
        os.close(self._pidfd)
        self._pidfd = -1
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def outcome(self, deadline: float = DEADLINE) -> str:
        exited, _, _ = select.select([self._pidfd], [], [], deadline)
        if not exited:
            os.kill(self.pid, signal.SIGKILL)
        with os.fdopen(self._read, "rb", closefd=False) as pipe:
            said = pipe.read().decode()
        status = self._reap()
        if not exited:
            return f"still running after {deadline} s (it said {said!r})"
        assert status == (0 if said == "ok" else 1), f"exit status {status}: {said}"
        return said


@contextlib.contextmanager
def held_by_a_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread of this process for the block (and so at a
    fork in it: that thread is not in the child)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10.0)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10.0)
        yield
    finally:
        release.set()
        holder.join(10.0)


def quiet(endpoint: Any) -> bool:
    """True if ``endpoint``'s wake-up descriptor is not readable now."""
    return not select.select([endpoint.fileno()], [], [], 0)[0]


def holds_no_copy(fd: int) -> None:
    """(in a forked child) AssertionError if descriptor ``fd`` is still the
    parent's socket there."""
    try:
        os.fstat(fd)
    except OSError:
        return          # closed: what is at that number now is not the socket
    if os.readlink(f"/proc/self/fd/{fd}") == os.readlink(f"/proc/{os.getppid()}/fd/{fd}"):
        raise AssertionError("the child holds a copy of the parent's socket")


def closes_waking_no_poller(listener: Any, conn: Any) -> None:
    """A child closes the inherited ``listener`` and ``conn`` (both drained and
    quiet now): the parent's pollers of their wake-up descriptors, which the
    child shares, are not woken."""
    assert listener.recv_nowait() is None and conn.recv_nowait() is None
    assert quiet(listener) and quiet(conn)

    def in_the_child() -> None:
        conn.close()
        listener.close()

    with Forked(in_the_child) as child:
        assert child.outcome() == "ok"
    assert quiet(listener) and quiet(conn), "the parent's poller was woken"


class Sink:
    """A handler that keeps every SEND's body and answers a REQUEST with its body."""

    def __init__(self, expected: int) -> None:
        self.bodies: list[Any] = []
        self.expected = expected
        self.all_in = threading.Event()

    def __call__(self, msg: Message) -> Any:
        if msg.kind == Kind.SEND:
            self.bodies.append(msg.body)
            if len(self.bodies) >= self.expected:
                self.all_in.set()
        return msg.body

    def of(self, who: str) -> list[int]:
        return [n for tag, n in self.bodies if tag == who]


def exchange(peer: posa.Peer, who: str, rounds: int, deadline: float = DEADLINE) -> None:
    """Send ``rounds`` numbered messages to the sink, a request every 10, each
    answered with its own body; then wait until the sink acknowledged them all."""
    for n in range(rounds):
        peer.send(SINK, [who, n], timeout=deadline)
        if n % 10 == 0:
            answer = peer.request(SINK, [f"{who}-request", n], timeout=deadline)
            if answer != [f"{who}-request", n]:
                raise AssertionError(f"{who} asked {n}, was answered {answer!r}")
    peer.flush(deadline)


def sends_and_requests_at_once(dispatcher: str, sink_listens: str, sender: str,
                               sender_listens: str, rounds: int) -> None:
    """Both processes send and request at once through the same Peer, whose
    connection to the sink the parent made before the fork: each one's messages
    arrive once and in order, each request is answered, and the parent's
    connection is never broken."""
    sink = Sink(2 * rounds + 1)
    with posa.RegistryClient(dispatcher) as reg, \
            posa.Peer(SINK, registry=reg, listen=sink_listens) as receiver, \
            posa.RegistryClient(dispatcher) as sreg, \
            posa.Peer(sender, registry=sreg, listen=sender_listens) as peer:
        receiver.serve(sink)
        peer.send(SINK, ["parent", -1], timeout=DEADLINE)
        assert peer.request(SINK, "before", timeout=DEADLINE) == "before"
        conn = peer.sender.forwarder()._targets[SINK].conn

        def in_the_child() -> None:
            exchange(peer, "child", rounds)
            peer.close()

        with Forked(in_the_child) as child:
            exchange(peer, "parent", rounds)
            assert child.outcome() == "ok"
        assert sink.all_in.wait(DEADLINE), f"{len(sink.bodies)} of {sink.expected}"
        assert sink.of("parent") == list(range(-1, rounds))
        assert sink.of("child") == list(range(rounds))
        assert peer.request(SINK, "after", timeout=DEADLINE) == "after"
        assert peer.sender.forwarder()._targets[SINK].conn is conn
        assert not receiver.transport_rejections()


EXITING = textwrap.dedent("""
    import os, select, sys
    import posa
    registry = posa.LocalRegistry()
    sink = posa.Peer("lab/sink", registry=registry, listen=sys.argv[1])
    sink.serve(lambda msg: msg.body)
    peer = posa.Peer("lab/tx", registry=registry, listen=sys.argv[2])
    assert peer.request("lab/sink", "before", timeout=20) == "before"
    pid = os.fork()
    if pid == 0:        # left open: the interpreter's exit (atexit, __del__) is all
        if sys.argv[3] == "send":
            peer.send("lab/sink", "child", timeout=20)
            assert peer.request("lab/sink", "child", timeout=20) == "child"
        sys.exit(0)
    pidfd = os.pidfd_open(pid)
    if not select.select([pidfd], [], [], 20)[0]:
        os.kill(pid, 9)
        print("the child hung")
    print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    peer.send("lab/sink", "after", timeout=20)
    print(peer.request("lab/sink", "after", timeout=20))
    late = posa.Peer("lab/late", registry=registry, listen="tcp://127.0.0.1:0")
    print(late.request("lab/sink", "a new connection", timeout=20))
    late.close(); peer.close(); sink.close(); registry.close()
""")


def just_exits(sink_listens: str, sender_listens: str, what: str) -> None:
    """A fresh interpreter forks; its child exits through the interpreter's exit
    with the parent's peers open, having sent (``what`` "send") or not: it exits
    at once with status 0, and the parent's peers go on, new connections to them
    too."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", EXITING, sink_listens, sender_listens, what],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split("\n")[:3] == ["child 0", "after", "a new connection"], \
        done.stderr
    assert done.returncode == 0, done.stderr
