"""What the conformance checks share: limits, endpoints closed on exit, worker
threads joined on exit, and the ways a check receives, polls and expects.

Every wait here has a deadline (``DEADLINE`` seconds) and every loop a bound.
``check`` wraps a check so that an exception the transport raised where none
was due is reported as an ``AssertionError`` naming the check.
"""
from __future__ import annotations

import contextlib
import functools
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from posa import transport
from posa.errors import Timeout
from posa.transport.base import Connection, Listener, Options

__all__ = ["AddressFactory", "Check", "DEADLINE", "SMALL_FRAME_LIMIT", "ORDER_FRAMES",
           "CONNECTIONS", "CLIENT_THREADS", "check", "Endpoints", "Worker", "workers",
           "expect", "show", "recv_from", "recv_on", "poll", "wait_then_take",
           "round_trip", "seq"]

AddressFactory = Callable[[], str]
Check = Callable[..., None]

DEADLINE = 10.0          # seconds any single wait of a check may take
SMALL_FRAME_LIMIT = 64 * 1024
ORDER_FRAMES = 10_000
CONNECTIONS = 200
CLIENT_THREADS = 4


def check(func: Check) -> Check:
    """Make ``func(address_factory, options)`` a check: ``options`` defaults to
    ``Options()``, and an unexpected exception becomes an AssertionError."""
    @functools.wraps(func)
    def run(address_factory: AddressFactory, options: Options | None = None) -> None:
        try:
            func(address_factory, options or Options())
        except AssertionError as exc:
            raise AssertionError(f"{func.__name__}: {exc}").with_traceback(
                exc.__traceback__) from exc.__cause__
        except Exception as exc:
            raise AssertionError(f"{func.__name__}: the transport raised "
                                 f"{type(exc).__name__}: {exc}") from exc
    return run


class Endpoints(contextlib.ExitStack):
    """Opens listeners and connections and closes them all on exit."""

    def listen(self, address: str, options: Options) -> Listener:
        listener = transport.listen(address, options)
        self.callback(_close_quietly, listener)
        return listener

    def connect(self, address: str, options: Options) -> Connection:
        connection = transport.connect(address, options)
        self.callback(_close_quietly, connection)
        return connection


def _close_quietly(endpoint: Listener | Connection) -> None:
    with contextlib.suppress(Exception):
        endpoint.close()


class Worker:
    """A thread running one function; ``join`` returns its result or raises its error."""

    def __init__(self, name: str, func: Callable[..., Any], *args: Any) -> None:
        self._name = name
        self._func = func
        self._args = args
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"conformance-{name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._func(*self._args)
        except BaseException as exc:   # handed to join()
            self._error = exc

    def done(self, within: float) -> bool:
        self._thread.join(within)
        return not self._thread.is_alive()

    def join(self, within: float = DEADLINE) -> Any:
        assert self.done(within), f"{self._name} did not finish within {within} s"
        if self._error is not None:
            raise self._error
        return self._result


@contextlib.contextmanager
def workers() -> Iterator[list[Worker]]:
    """Workers started inside are joined on exit (after the endpoints close)."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.done(DEADLINE)


def expect(error: type[Exception], what: str, func: Callable[..., Any], *args: Any) -> None:
    try:
        result = func(*args)
    except error:
        return
    except Exception as exc:
        raise AssertionError(f"{what} raised {type(exc).__name__}: {exc}; "
                             f"expected {error.__name__}") from exc
    raise AssertionError(f"{what} returned {result!r}; expected {error.__name__}")


def show(frame: bytes) -> str:
    return repr(frame) if len(frame) <= 40 else f"<{len(frame)} bytes {frame[:16]!r}...>"


def recv_from(listener: Listener, what: str) -> tuple[Any, bytes]:
    try:
        route, frame = listener.recv(DEADLINE)
    except Timeout:
        raise AssertionError(f"{what}: the listener received nothing "
                             f"within {DEADLINE} s") from None
    assert isinstance(frame, bytes), f"{what}: the listener returned a {type(frame).__name__}"
    return route, frame


def recv_on(connection: Connection, what: str) -> bytes:
    try:
        frame = connection.recv(DEADLINE)
    except Timeout:
        raise AssertionError(f"{what}: the connection received nothing "
                             f"within {DEADLINE} s") from None
    assert isinstance(frame, bytes), f"{what}: the connection returned a {type(frame).__name__}"
    return frame


def poll(endpoint: Listener | Connection, what: str) -> Any:
    """What a reactor does: drain ``recv_nowait()``, check ``pending()``, then
    wait on ``fileno()``; return the first item."""
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        item = endpoint.recv_nowait()
        if item is not None:
            return item
        if endpoint.pending():
            continue
        remaining = deadline - time.monotonic()
        assert remaining > 0, (f"{what}: fileno() did not become readable within "
                               f"{DEADLINE} s although a frame was sent")
        select.select([endpoint.fileno()], [], [], remaining)
    raise AssertionError(f"{what}: 10000 wake-ups without a frame: fileno() stays readable "
                         "or pending() stays true while recv_nowait() returns None")


def wait_then_take(endpoint: Listener | Connection, what: str) -> Any:
    """What a request-reply caller does: wait on ``fileno()`` unless ``pending()``,
    then take one frame, without draining ``recv_nowait()`` to ``None`` first."""
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        if not endpoint.pending():
            remaining = deadline - time.monotonic()
            assert remaining > 0 and select.select([endpoint.fileno()], [], [], remaining)[0], (
                f"{what}: fileno() did not become readable within {DEADLINE} s although "
                "pending() was false and a frame was sent")
        item = endpoint.recv_nowait()
        if item is not None:
            return item
    raise AssertionError(f"{what}: 10000 wake-ups without a frame: fileno() stays readable "
                         "or pending() stays true while recv_nowait() returns None")


def round_trip(listener: Listener, connection: Connection, tag: bytes, what: str) -> None:
    connection.send(b"ask:" + tag)
    route, frame = recv_from(listener, what)
    assert frame == b"ask:" + tag, f"{what}: the listener received {show(frame)}"
    listener.send(route, b"answer:" + tag)
    reply = recv_on(connection, what)
    assert reply == b"answer:" + tag, f"{what}: the connection received {show(reply)}"


def seq(i: int) -> bytes:
    return i.to_bytes(4, "big")
