"""Checks of waiting: receive timeouts, and the reactor's ways of polling."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from posa.errors import Timeout
from posa.transport.base import Options, waiter
from posa.transport.testing.support import (
    DEADLINE,
    AddressFactory,
    Endpoints,
    Worker,
    check,
    expect,
    poll,
    show,
    wait_then_take,
    workers,
)

__all__ = ["check_recv_timeout", "check_polling", "check_waiting_without_draining",
           "check_wait_readable"]


@check
def check_recv_timeout(address_factory: AddressFactory, options: Options) -> None:
    """With nothing sent, recv_nowait() returns None and recv(timeout) raises
    Timeout after about that long."""
    timeout = 0.2
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for name, endpoint in (("listener", listener), ("connection", connection)):
            got = endpoint.recv_nowait()
            assert got is None, f"{name}.recv_nowait() returned {got!r} with nothing sent"
            started = time.monotonic()
            expect(Timeout, f"{name}.recv({timeout})", endpoint.recv, timeout)
            took = time.monotonic() - started
            assert timeout / 2 <= took <= DEADLINE, (
                f"{name}.recv({timeout}) raised Timeout after {took:.3f} s")


@check
def check_polling(address_factory: AddressFactory, options: Options) -> None:
    """The reactor's way: after recv_nowait() returns None and pending() is
    false, fileno() becomes readable when a frame arrives; both sides, and in a
    thread that polls while another sends."""
    frames = 20
    with workers() as started, Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for name, endpoint in (("listener", listener), ("connection", connection)):
            fd = endpoint.fileno()
            assert isinstance(fd, int) and fd >= 0, f"{name}.fileno() returned {fd!r}"
        for n in range(3):
            connection.send(b"up-%d" % n)
            route, frame = poll(listener, f"polling the listener for frame {n}")
            assert frame == b"up-%d" % n, f"polling the listener gave {show(frame)}"
            listener.send(route, b"down-%d" % n)
            frame = poll(connection, f"polling the connection for frame {n}")
            assert frame == b"down-%d" % n, f"polling the connection gave {show(frame)}"

        taken = threading.Event()

        def poller() -> None:
            for n in range(frames):
                _, frame = poll(listener, f"a polling thread, frame {n}")
                assert frame == b"poll-%d" % n, f"the polling thread got {show(frame)}"
                taken.set()

        started.append(Worker("poller", poller))
        for n in range(frames):
            taken.clear()
            connection.send(b"poll-%d" % n)
            if not taken.wait(DEADLINE):
                break   # join() reports the poller's failure
        started[-1].join()


@check
def check_waiting_without_draining(address_factory: AddressFactory, options: Options) -> None:
    """Once pending() is false, fileno() fires for the next frame even though the
    last recv_nowait() returned a frame, not None: a client takes the answer, sends
    the next question and waits; the listener answers and waits for the next one."""
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for n in range(5):
            connection.send(b"ask-%d" % n)
            route, frame = wait_then_take(listener, f"the listener waiting for question {n}")
            assert frame == b"ask-%d" % n, f"the listener received {show(frame)}"
            listener.send(route, b"answer-%d" % n)
            frame = wait_then_take(connection, f"the connection waiting for answer {n}")
            assert frame == b"answer-%d" % n, f"the connection received {show(frame)}"


@check
def check_wait_readable(address_factory: AddressFactory, options: Options) -> None:
    """How a blocking caller waits on a connection (its own ``wait_readable``, or
    the default on ``fileno()``: ``posa.transport.base.waiter``): with nothing
    sent it says False once ``timeout`` passed; it says True for a frame sent
    before the wait and for one sent while another thread waits, and
    ``recv_nowait()`` then returns that frame."""
    with workers() as started, Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        wait = waiter(type(connection))
        assert wait(connection, 0.05) is False, "the wait said True with nothing sent"
        connection.send(b"hello")
        route, frame = poll(listener, "the listener waiting for the first frame")
        for n in range(3):
            listener.send(route, b"before-%d" % n)
            assert _waited(wait, connection), f"the wait missed frame {n}, sent before it"
            frame = _taken(connection, f"frame {n}, sent before the wait")
            assert frame == b"before-%d" % n, f"the connection received {show(frame)}"
        woke = threading.Event()
        started.append(Worker("waiter", lambda: woke.set() if _waited(wait, connection)
                              else None))
        listener.send(route, b"while")
        started[-1].join()
        assert woke.is_set(), "a thread waiting while the frame was sent did not wake"
        frame = _taken(connection, "a frame sent while another thread waited")
        assert frame == b"while", f"the connection received {show(frame)}"


def _waited(wait: Callable[[Any, float], bool], connection: Any) -> bool:
    """Wait (bounded) until the wait says True; a False before ``DEADLINE`` is a
    wait that timed out early, which its caller may retry."""
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if wait(connection, remaining):
            return True
    return False


def _taken(connection: Any, what: str) -> bytes:
    """The frame ``recv_nowait()`` returns after the wait said True (a wait may
    wake before the whole frame is in: wait again, bounded)."""
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        frame = connection.recv_nowait()
        if frame is not None:
            return bytes(frame)
        assert time.monotonic() < deadline, f"{what}: recv_nowait() gave nothing"
        waiter(type(connection))(connection, deadline - time.monotonic())
    raise AssertionError(f"{what}: 10000 wake-ups without a frame")
