"""The transport conformance suite, shipped so that any transport can run it.

Every check is a plain function ``check_*(address_factory, options=None)``.
``address_factory`` returns a fresh listen address for the transport under test
on each call (``"tcp://127.0.0.1:0"``, ``"zmq+ipc:///tmp/x/1.sock"``,
``"inproc://t-17"``); ``options`` are the base ``Options`` (a check that needs
a limit of its own replaces that field). A check drives the transport only
through ``transport.listen`` and ``transport.connect``, so it tests whatever
transport serves the address's scheme. It returns ``None`` or raises
``AssertionError`` whose message names the check, the step and what happened;
an exception the transport raised where none was due is reported the same way,
chained. Every wait has a deadline (``DEADLINE`` seconds), every loop a bound,
and a check closes what it opened and joins the threads it started before it
returns, pass or fail.

A third-party transport runs the whole suite after registering itself (entry
point ``posa.transports`` or ``transport.register``)::

    import itertools
    from posa.transport.testing import check_all

    check_all(lambda: "mything://127.0.0.1:0")       # port 0: a fresh port each time
    names = itertools.count()
    check_all(lambda: f"mything-local://t-{next(names)}")   # a fresh name each time

or one test per check, under pytest::

    from posa.transport.testing import CHECKS

    @pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
    def test_mything(check):
        check(lambda: "mything://127.0.0.1:0")
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from posa import transport
from posa.errors import Closed, Timeout, TransportError
from posa.transport.base import Connection, Listener, Options

__all__ = [
    "AddressFactory", "CHECKS", "DEADLINE", "check_all",
    "check_round_trip", "check_order", "check_frame_sizes", "check_oversize_refused_by_send",
    "check_oversize_dropped_by_listener", "check_many_connections", "check_close_wakes_recv",
    "check_use_after_close", "check_resolved_address", "check_recv_timeout", "check_polling",
    "check_waiting_without_draining",
]

AddressFactory = Callable[[], str]
Check = Callable[..., None]

DEADLINE = 10.0          # seconds any single wait of a check may take
SMALL_FRAME_LIMIT = 64 * 1024
ORDER_FRAMES = 10_000
CONNECTIONS = 200
CLIENT_THREADS = 4

CHECKS: list[Check] = []


def _check(func: Check) -> Check:
    """Register a check; report an unexpected exception as an AssertionError."""
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
    CHECKS.append(run)
    return run


def check_all(address_factory: AddressFactory, options: Options | None = None) -> None:
    """Run every check; raise one AssertionError listing every failure."""
    failures = []
    for check in CHECKS:
        try:
            check(address_factory, options)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} of {len(CHECKS)} transport checks failed:\n"
                             + "\n".join(failures))


# --------------------------------------------------------------------------- helpers

class _Endpoints(contextlib.ExitStack):
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


class _Worker:
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
def _workers() -> Iterator[list[_Worker]]:
    """Workers started inside are joined on exit (after the endpoints close)."""
    started: list[_Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.done(DEADLINE)


def _expect(error: type[Exception], what: str, func: Callable[..., Any], *args: Any) -> None:
    try:
        result = func(*args)
    except error:
        return
    except Exception as exc:
        raise AssertionError(f"{what} raised {type(exc).__name__}: {exc}; "
                             f"expected {error.__name__}") from exc
    raise AssertionError(f"{what} returned {result!r}; expected {error.__name__}")


def _frame(frame: bytes) -> str:
    return repr(frame) if len(frame) <= 40 else f"<{len(frame)} bytes {frame[:16]!r}...>"


def _recv_from(listener: Listener, what: str) -> tuple[Any, bytes]:
    try:
        route, frame = listener.recv(DEADLINE)
    except Timeout:
        raise AssertionError(f"{what}: the listener received nothing "
                             f"within {DEADLINE} s") from None
    assert isinstance(frame, bytes), f"{what}: the listener returned a {type(frame).__name__}"
    return route, frame


def _recv_on(connection: Connection, what: str) -> bytes:
    try:
        frame = connection.recv(DEADLINE)
    except Timeout:
        raise AssertionError(f"{what}: the connection received nothing "
                             f"within {DEADLINE} s") from None
    assert isinstance(frame, bytes), f"{what}: the connection returned a {type(frame).__name__}"
    return frame


def _poll(endpoint: Listener | Connection, what: str) -> Any:
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


def _wait_then_take(endpoint: Listener | Connection, what: str) -> Any:
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


def _round_trip(listener: Listener, connection: Connection, tag: bytes, what: str) -> None:
    connection.send(b"ask:" + tag)
    route, frame = _recv_from(listener, what)
    assert frame == b"ask:" + tag, f"{what}: the listener received {_frame(frame)}"
    listener.send(route, b"answer:" + tag)
    reply = _recv_on(connection, what)
    assert reply == b"answer:" + tag, f"{what}: the connection received {_frame(reply)}"


def _seq(i: int) -> bytes:
    return i.to_bytes(4, "big")


# --------------------------------------------------------------------------- checks

@_check
def check_round_trip(address_factory: AddressFactory, options: Options) -> None:
    """A frame goes to the listener, and the reply sent on its route comes back;
    twice over, on two connections, so that routes are told apart."""
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        first = ends.connect(listener.address, options)
        second = ends.connect(listener.address, options)
        for n in range(2):
            _round_trip(listener, first, b"first-%d" % n, f"round trip {n} on connection 1")
            _round_trip(listener, second, b"second-%d" % n, f"round trip {n} on connection 2")


@_check
def check_order(address_factory: AddressFactory, options: Options) -> None:
    """10k frames arrive in the order sent, each way, with one route throughout."""
    def take_up(listener: Listener) -> list[Any]:
        routes = set()
        for i in range(ORDER_FRAMES):
            route, frame = _recv_from(listener, f"frame {i} of {ORDER_FRAMES} to the listener")
            assert frame == _seq(i), (f"frame {i} to the listener arrived as "
                                      f"{_frame(frame)}: out of order or altered")
            routes.add(route)
        return list(routes)

    def take_down(connection: Connection) -> None:
        for i in range(ORDER_FRAMES):
            frame = _recv_on(connection, f"frame {i} of {ORDER_FRAMES} to the connection")
            assert frame == _seq(i), (f"frame {i} to the connection arrived as "
                                      f"{_frame(frame)}: out of order or altered")

    with _workers() as started, _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        started.append(_Worker("listener receiving", take_up, listener))
        for i in range(ORDER_FRAMES):
            connection.send(_seq(i))
        routes = started[-1].join()
        assert len(routes) == 1, f"frames of one connection arrived with routes {routes}"
        started.append(_Worker("connection receiving", take_down, connection))
        for i in range(ORDER_FRAMES):
            listener.send(routes[0], _seq(i))
        started[-1].join()


@_check
def check_frame_sizes(address_factory: AddressFactory, options: Options) -> None:
    """An empty frame and one of exactly max_frame_size pass both ways, intact."""
    options = dataclasses.replace(options, max_frame_size=SMALL_FRAME_LIMIT)
    largest = bytes(range(256)) * (SMALL_FRAME_LIMIT // 256)
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for frame in (b"", largest, b""):
            connection.send(frame)
            route, got = _recv_from(listener, f"a frame of {len(frame)} bytes")
            assert got == frame, (f"a frame of {len(frame)} bytes reached the listener "
                                  f"as {_frame(got)}")
            listener.send(route, frame)
            got = _recv_on(connection, f"a frame of {len(frame)} bytes back")
            assert got == frame, (f"a frame of {len(frame)} bytes reached the connection "
                                  f"as {_frame(got)}")


@_check
def check_oversize_refused_by_send(address_factory: AddressFactory, options: Options) -> None:
    """``send`` of a frame over max_frame_size raises TransportError, on either
    side, and the listener goes on serving its other connection."""
    options = dataclasses.replace(options, max_frame_size=SMALL_FRAME_LIMIT)
    oversize = b"x" * (SMALL_FRAME_LIMIT + 1)
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        offender = ends.connect(listener.address, options)
        other = ends.connect(listener.address, options)
        _round_trip(listener, other, b"before", "a round trip before the oversize frame")
        _expect(TransportError, "connection.send(max_frame_size + 1 bytes)",
                offender.send, oversize)
        _round_trip(listener, other, b"after", "a round trip after the connection's "
                    "oversize frame")
        other.send(b"route please")
        route, _ = _recv_from(listener, "a frame to learn a route")
        _expect(TransportError, "listener.send(route, max_frame_size + 1 bytes)",
                listener.send, route, oversize)
        _round_trip(listener, other, b"later", "a round trip after the listener's "
                    "oversize frame")


@_check
def check_oversize_dropped_by_listener(address_factory: AddressFactory,
                                       options: Options) -> None:
    """A frame over the listener's max_frame_size, from a connection that allows
    it, is never delivered: the listener drops that connection and counts it in
    ``rejections["oversize"]``, and serves its other connection."""
    small = dataclasses.replace(options, max_frame_size=SMALL_FRAME_LIMIT)
    large = dataclasses.replace(options, max_frame_size=4 * SMALL_FRAME_LIMIT)
    oversize = b"x" * (2 * SMALL_FRAME_LIMIT)
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), small)
        offender = ends.connect(listener.address, large)
        other = ends.connect(listener.address, small)
        _round_trip(listener, other, b"before", "a round trip before the oversize frame")
        with contextlib.suppress(TransportError):   # a transport may refuse it at once
            offender.send(oversize)
        deadline = time.monotonic() + DEADLINE
        for n in range(1_000_000):
            if listener.rejections["oversize"] >= 1 or time.monotonic() > deadline:
                break
            _round_trip(listener, other, b"%d" % n, "a round trip while the oversize "
                        "frame is refused")
        assert listener.rejections["oversize"] == 1, (
            f"rejections is {dict(listener.rejections)} {DEADLINE} s after a frame of "
            f"{len(oversize)} bytes was sent to a listener whose max_frame_size is "
            f"{SMALL_FRAME_LIMIT}; expected rejections['oversize'] == 1")
        frame = listener.recv_nowait()
        assert frame is None, f"the listener delivered {_frame(frame[1])} after the drop"


@_check
def check_many_connections(address_factory: AddressFactory, options: Options) -> None:
    """200 connections, open at once and driven from several threads, each get
    the reply to their own frame."""
    def serve(listener: Listener) -> None:
        for n in range(CONNECTIONS):
            route, frame = _recv_from(listener, f"frame {n} of {CONNECTIONS}")
            listener.send(route, b"re:" + frame)

    def client(ends: _Endpoints, address: str, first: int) -> None:
        mine = range(first, CONNECTIONS, CLIENT_THREADS)
        connections = [ends.connect(address, options) for _ in mine]
        for n, connection in zip(mine, connections):
            connection.send(b"connection-%d" % n)
        for n, connection in zip(mine, connections):
            reply = _recv_on(connection, f"connection {n}")
            assert reply == b"re:connection-%d" % n, (
                f"connection {n} received {_frame(reply)}: a reply meant for another")

    with _workers() as started, _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        started.append(_Worker("listener", serve, listener))
        for first in range(CLIENT_THREADS):
            started.append(_Worker(f"client {first}", client, ends, listener.address, first))
        for worker in started:
            worker.join(3 * DEADLINE)


def _blocked_recv_meets_closed(name: str, endpoint: Listener | Connection) -> None:
    def wait() -> str:
        try:
            got = endpoint.recv(DEADLINE)
        except Closed:
            return "closed"
        except Exception as exc:
            return f"raised {type(exc).__name__}: {exc}"
        return f"returned {got!r}"

    with _workers() as started:
        worker = _Worker(f"{name} recv", wait)
        started.append(worker)
        # give recv() a moment to block; if it returns meanwhile, that is the failure
        assert not worker.done(0.1), f"{name}.recv() returned with nothing sent: {worker.join()}"
        endpoint.close()
        outcome = worker.join()
        assert outcome == "closed", (f"close() from another thread: the blocked "
                                     f"{name}.recv() {outcome}; expected Closed")


@_check
def check_close_wakes_recv(address_factory: AddressFactory, options: Options) -> None:
    """close() from another thread wakes a blocked recv() with Closed, on a
    connection and on a listener."""
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        _round_trip(listener, connection, b"ready", "a round trip before closing")
        _blocked_recv_meets_closed("connection", connection)
        _blocked_recv_meets_closed("listener", listener)


@_check
def check_use_after_close(address_factory: AddressFactory, options: Options) -> None:
    """Every operation on a closed endpoint raises Closed; close() is idempotent."""
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        connection.send(b"route please")
        route, _ = _recv_from(listener, "a frame to learn a route")
        connection.close()
        connection.close()
        _expect(Closed, "connection.send() after close", connection.send, b"x")
        _expect(Closed, "connection.recv_nowait() after close", connection.recv_nowait)
        _expect(Closed, "connection.recv() after close", connection.recv, 0.1)
        listener.close()
        listener.close()
        _expect(Closed, "listener.send() after close", listener.send, route, b"x")
        _expect(Closed, "listener.recv_nowait() after close", listener.recv_nowait)
        _expect(Closed, "listener.recv() after close", listener.recv, 0.1)


@_check
def check_resolved_address(address_factory: AddressFactory, options: Options) -> None:
    """``listener.address`` is an address ``connect`` reaches, with port 0 (or
    the transport's wildcard) resolved."""
    requested = address_factory()
    with _Endpoints() as ends:
        listener = ends.listen(requested, options)
        address = listener.address
        assert isinstance(address, str), f"listener.address is {address!r}, not a str"
        scheme = requested.partition("://")[0]
        assert address.startswith(scheme + "://"), (
            f"listening on {requested!r} gave listener.address {address!r}: another scheme")
        if requested.endswith(":0"):
            assert not address.endswith(":0"), (
                f"listening on {requested!r} left port 0 in listener.address {address!r}")
        connection = ends.connect(address, options)
        _round_trip(listener, connection, b"resolved", f"a round trip via {address!r}")


@_check
def check_recv_timeout(address_factory: AddressFactory, options: Options) -> None:
    """With nothing sent, recv_nowait() returns None and recv(timeout) raises
    Timeout after about that long."""
    timeout = 0.2
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for name, endpoint in (("listener", listener), ("connection", connection)):
            got = endpoint.recv_nowait()
            assert got is None, f"{name}.recv_nowait() returned {got!r} with nothing sent"
            started = time.monotonic()
            _expect(Timeout, f"{name}.recv({timeout})", endpoint.recv, timeout)
            took = time.monotonic() - started
            assert timeout / 2 <= took <= DEADLINE, (
                f"{name}.recv({timeout}) raised Timeout after {took:.3f} s")


@_check
def check_polling(address_factory: AddressFactory, options: Options) -> None:
    """The reactor's way: after recv_nowait() returns None and pending() is
    false, fileno() becomes readable when a frame arrives; both sides, and in a
    thread that polls while another sends."""
    frames = 20
    with _workers() as started, _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for name, endpoint in (("listener", listener), ("connection", connection)):
            fd = endpoint.fileno()
            assert isinstance(fd, int) and fd >= 0, f"{name}.fileno() returned {fd!r}"
        for n in range(3):
            connection.send(b"up-%d" % n)
            route, frame = _poll(listener, f"polling the listener for frame {n}")
            assert frame == b"up-%d" % n, f"polling the listener gave {_frame(frame)}"
            listener.send(route, b"down-%d" % n)
            frame = _poll(connection, f"polling the connection for frame {n}")
            assert frame == b"down-%d" % n, f"polling the connection gave {_frame(frame)}"

        taken = threading.Event()

        def poller() -> None:
            for n in range(frames):
                _, frame = _poll(listener, f"a polling thread, frame {n}")
                assert frame == b"poll-%d" % n, f"the polling thread got {_frame(frame)}"
                taken.set()

        started.append(_Worker("poller", poller))
        for n in range(frames):
            taken.clear()
            connection.send(b"poll-%d" % n)
            if not taken.wait(DEADLINE):
                break   # join() reports the poller's failure
        started[-1].join()


@_check
def check_waiting_without_draining(address_factory: AddressFactory, options: Options) -> None:
    """Once pending() is false, fileno() fires for the next frame even though the
    last recv_nowait() returned a frame, not None: a client takes the answer, sends
    the next question and waits; the listener answers and waits for the next one."""
    with _Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for n in range(5):
            connection.send(b"ask-%d" % n)
            route, frame = _wait_then_take(listener, f"the listener waiting for question {n}")
            assert frame == b"ask-%d" % n, f"the listener received {_frame(frame)}"
            listener.send(route, b"answer-%d" % n)
            frame = _wait_then_take(connection, f"the connection waiting for answer {n}")
            assert frame == b"answer-%d" % n, f"the connection received {_frame(frame)}"
