"""Checks of endpoints: many connections at once, closing, addresses."""
from __future__ import annotations

from posa.errors import Closed
from posa.transport.base import Connection, Listener, Options
from posa.transport.testing.support import (
    CLIENT_THREADS,
    CONNECTIONS,
    DEADLINE,
    AddressFactory,
    Endpoints,
    Worker,
    check,
    expect,
    recv_from,
    recv_on,
    round_trip,
    show,
    workers,
)

__all__ = ["check_many_connections", "check_close_wakes_recv", "check_use_after_close",
           "check_resolved_address"]


@check
def check_many_connections(address_factory: AddressFactory, options: Options) -> None:
    """200 connections, open at once and driven from several threads, each get
    the reply to their own frame."""
    def serve(listener: Listener) -> None:
        for n in range(CONNECTIONS):
            route, frame = recv_from(listener, f"frame {n} of {CONNECTIONS}")
            listener.send(route, b"re:" + frame)

    def client(ends: Endpoints, address: str, first: int) -> None:
        mine = range(first, CONNECTIONS, CLIENT_THREADS)
        connections = [ends.connect(address, options) for _ in mine]
        for n, connection in zip(mine, connections):
            connection.send(b"connection-%d" % n)
        for n, connection in zip(mine, connections):
            reply = recv_on(connection, f"connection {n}")
            assert reply == b"re:connection-%d" % n, (
                f"connection {n} received {show(reply)}: a reply meant for another")

    with workers() as started, Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        started.append(Worker("listener", serve, listener))
        for first in range(CLIENT_THREADS):
            started.append(Worker(f"client {first}", client, ends, listener.address, first))
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

    with workers() as started:
        worker = Worker(f"{name} recv", wait)
        started.append(worker)
        # give recv() a moment to block; if it returns meanwhile, that is the failure
        assert not worker.done(0.1), f"{name}.recv() returned with nothing sent: {worker.join()}"
        endpoint.close()
        outcome = worker.join()
        assert outcome == "closed", (f"close() from another thread: the blocked "
                                     f"{name}.recv() {outcome}; expected Closed")


@check
def check_close_wakes_recv(address_factory: AddressFactory, options: Options) -> None:
    """close() from another thread wakes a blocked recv() with Closed, on a
    connection and on a listener."""
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        round_trip(listener, connection, b"ready", "a round trip before closing")
        _blocked_recv_meets_closed("connection", connection)
        _blocked_recv_meets_closed("listener", listener)


@check
def check_use_after_close(address_factory: AddressFactory, options: Options) -> None:
    """Every operation on a closed endpoint raises Closed; close() is idempotent."""
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        connection.send(b"route please")
        route, _ = recv_from(listener, "a frame to learn a route")
        connection.close()
        connection.close()
        expect(Closed, "connection.send() after close", connection.send, b"x")
        expect(Closed, "connection.recv_nowait() after close", connection.recv_nowait)
        expect(Closed, "connection.recv() after close", connection.recv, 0.1)
        listener.close()
        listener.close()
        expect(Closed, "listener.send() after close", listener.send, route, b"x")
        expect(Closed, "listener.recv_nowait() after close", listener.recv_nowait)
        expect(Closed, "listener.recv() after close", listener.recv, 0.1)


@check
def check_resolved_address(address_factory: AddressFactory, options: Options) -> None:
    """``listener.address`` is an address ``connect`` reaches, with port 0 (or
    the transport's wildcard) resolved."""
    requested = address_factory()
    with Endpoints() as ends:
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
        round_trip(listener, connection, b"resolved", f"a round trip via {address!r}")
