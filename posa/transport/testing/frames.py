"""Checks of frames: a round trip, order, sizes, and frames over max_frame_size."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

from posa.errors import TransportError
from posa.transport.base import Connection, Listener, Options
from posa.transport.testing.support import (
    DEADLINE,
    ORDER_FRAMES,
    SMALL_FRAME_LIMIT,
    AddressFactory,
    Endpoints,
    Worker,
    check,
    expect,
    recv_from,
    recv_on,
    round_trip,
    seq,
    show,
    workers,
)

__all__ = ["check_round_trip", "check_order", "check_frame_sizes",
           "check_oversize_refused_by_send", "check_oversize_dropped_by_listener"]


@check
def check_round_trip(address_factory: AddressFactory, options: Options) -> None:
    """A frame goes to the listener, and the reply sent on its route comes back;
    twice over, on two connections, so that routes are told apart."""
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        first = ends.connect(listener.address, options)
        second = ends.connect(listener.address, options)
        for n in range(2):
            round_trip(listener, first, b"first-%d" % n, f"round trip {n} on connection 1")
            round_trip(listener, second, b"second-%d" % n, f"round trip {n} on connection 2")


@check
def check_order(address_factory: AddressFactory, options: Options) -> None:
    """10k frames arrive in the order sent, each way, with one route throughout."""
    def take_up(listener: Listener) -> list[Any]:
        routes = set()
        for i in range(ORDER_FRAMES):
            route, frame = recv_from(listener, f"frame {i} of {ORDER_FRAMES} to the listener")
            assert frame == seq(i), (f"frame {i} to the listener arrived as "
                                      f"{show(frame)}: out of order or altered")
            routes.add(route)
        return list(routes)

    def take_down(connection: Connection) -> None:
        for i in range(ORDER_FRAMES):
            frame = recv_on(connection, f"frame {i} of {ORDER_FRAMES} to the connection")
            assert frame == seq(i), (f"frame {i} to the connection arrived as "
                                      f"{show(frame)}: out of order or altered")

    with workers() as started, Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        started.append(Worker("listener receiving", take_up, listener))
        for i in range(ORDER_FRAMES):
            connection.send(seq(i))
        routes = started[-1].join()
        assert len(routes) == 1, f"frames of one connection arrived with routes {routes}"
        started.append(Worker("connection receiving", take_down, connection))
        for i in range(ORDER_FRAMES):
            listener.send(routes[0], seq(i))
        started[-1].join()


@check
def check_frame_sizes(address_factory: AddressFactory, options: Options) -> None:
    """An empty frame and one of exactly max_frame_size pass both ways, intact."""
    options = dataclasses.replace(options, max_frame_size=SMALL_FRAME_LIMIT)
    largest = bytes(range(256)) * (SMALL_FRAME_LIMIT // 256)
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        connection = ends.connect(listener.address, options)
        for frame in (b"", largest, b""):
            connection.send(frame)
            route, got = recv_from(listener, f"a frame of {len(frame)} bytes")
            assert got == frame, (f"a frame of {len(frame)} bytes reached the listener "
                                  f"as {show(got)}")
            listener.send(route, frame)
            got = recv_on(connection, f"a frame of {len(frame)} bytes back")
            assert got == frame, (f"a frame of {len(frame)} bytes reached the connection "
                                  f"as {show(got)}")


@check
def check_oversize_refused_by_send(address_factory: AddressFactory, options: Options) -> None:
    """``send`` of a frame over max_frame_size raises TransportError, on either
    side, and the listener goes on serving its other connection."""
    options = dataclasses.replace(options, max_frame_size=SMALL_FRAME_LIMIT)
    oversize = b"x" * (SMALL_FRAME_LIMIT + 1)
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), options)
        offender = ends.connect(listener.address, options)
        other = ends.connect(listener.address, options)
        round_trip(listener, other, b"before", "a round trip before the oversize frame")
        expect(TransportError, "connection.send(max_frame_size + 1 bytes)",
                offender.send, oversize)
        round_trip(listener, other, b"after", "a round trip after the connection's "
                    "oversize frame")
        other.send(b"route please")
        route, _ = recv_from(listener, "a frame to learn a route")
        expect(TransportError, "listener.send(route, max_frame_size + 1 bytes)",
                listener.send, route, oversize)
        round_trip(listener, other, b"later", "a round trip after the listener's "
                    "oversize frame")


@check
def check_oversize_dropped_by_listener(address_factory: AddressFactory,
                                       options: Options) -> None:
    """A frame over the listener's max_frame_size, from a connection that allows
    it, is never delivered: the listener drops that connection and counts it in
    ``rejections["oversize"]``, and serves its other connection."""
    small = dataclasses.replace(options, max_frame_size=SMALL_FRAME_LIMIT)
    large = dataclasses.replace(options, max_frame_size=4 * SMALL_FRAME_LIMIT)
    oversize = b"x" * (2 * SMALL_FRAME_LIMIT)
    with Endpoints() as ends:
        listener = ends.listen(address_factory(), small)
        offender = ends.connect(listener.address, large)
        other = ends.connect(listener.address, small)
        round_trip(listener, other, b"before", "a round trip before the oversize frame")
        with contextlib.suppress(TransportError):   # a transport may refuse it at once
            offender.send(oversize)
        deadline = time.monotonic() + DEADLINE
        for n in range(1_000_000):
            if listener.rejections["oversize"] >= 1 or time.monotonic() > deadline:
                break
            round_trip(listener, other, b"%d" % n, "a round trip while the oversize "
                        "frame is refused")
        assert listener.rejections["oversize"] == 1, (
            f"rejections is {dict(listener.rejections)} {DEADLINE} s after a frame of "
            f"{len(oversize)} bytes was sent to a listener whose max_frame_size is "
            f"{SMALL_FRAME_LIMIT}; expected rejections['oversize'] == 1")
        frame = listener.recv_nowait()
        assert frame is None, f"the listener delivered {show(frame[1])} after the drop"
