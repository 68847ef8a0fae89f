"""A tcp listener served from its reactor's poller: one poll per event, no nested poller.

A reactor takes a tcp listener's descriptors into its own poller
(``posa.transport.tcp.sharing``): frames are served without the listener ever
polling an inner poller, the listener can be given back (and then receives on
its own again), and closing it while attached leaves none of its descriptors
watched by the reactor.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from posa import transport
from posa.runtime.reactor import Reactor
from posa.transport.tcp.listener import TcpListener
from tests.support import wait_until


class CountingPoller:
    """A poller that counts its polls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.polls = 0

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        self.polls += 1
        return self.inner.poll(timeout)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor("test-shared-poll")
    r.start()
    try:
        yield r
    finally:
        r.close()


def _served(reactor: Reactor, listener: TcpListener
            ) -> tuple[list[tuple[Any, bytes]], threading.Event, CountingPoller]:
    got: list[tuple[Any, bytes]] = []
    arrived = threading.Event()
    inner = CountingPoller(listener._poller)
    listener._poller = inner       # type: ignore[assignment]

    def drain() -> None:
        while (item := listener.recv_nowait()) is not None:
            got.append(item)
            arrived.set()

    reactor.add_source(listener, drain)
    return got, arrived, inner


def test_frames_are_served_from_the_reactors_poll_without_an_inner_poll(
        reactor: Reactor) -> None:
    listener = transport.listen("tcp://127.0.0.1:0")
    assert isinstance(listener, TcpListener)
    got, arrived, inner = _served(reactor, listener)
    conn = transport.connect(listener.address)
    try:
        for i in range(50):               # one frame at a time: a poll each
            arrived.clear()
            conn.send(b"frame %d" % i)
            assert arrived.wait(10.0)
        wait_until(lambda: len(got) == 50)
        assert [frame for _, frame in got] == [b"frame %d" % i for i in range(50)]
        assert inner.polls == 0           # on main: at least one inner poll per frame
        route = got[0][0]
        listener.send(route, b"reply")    # replies still go out on the connection
        assert conn.recv(10.0) == b"reply"
    finally:
        conn.close()
        reactor.remove_source(listener)
        listener.close()


def test_a_listener_given_back_by_its_reactor_receives_on_its_own(reactor: Reactor) -> None:
    listener = transport.listen("tcp://127.0.0.1:0")
    assert isinstance(listener, TcpListener)
    got, arrived, _ = _served(reactor, listener)
    conn = transport.connect(listener.address)
    try:
        conn.send(b"while served")
        assert arrived.wait(10.0)
        reactor.remove_source(listener)
        conn.send(b"on its own")
        route, frame = listener.recv(10.0)
        assert frame == b"on its own" and route == got[0][0]
    finally:
        conn.close()
        listener.close()


def test_closing_an_attached_listener_leaves_nothing_watched_by_the_reactor(
        reactor: Reactor) -> None:
    listener = transport.listen("tcp://127.0.0.1:0")
    assert isinstance(listener, TcpListener)
    got, arrived, _ = _served(reactor, listener)
    conns = [transport.connect(listener.address) for _ in range(3)]
    try:
        for i, conn in enumerate(conns):
            conn.send(b"hello %d" % i)
        wait_until(lambda: len(got) == 3)
        assert len(reactor._served) == 5      # listening socket, wake-up, 3 connections
        listener.close()
        assert reactor._served == {}
        reactor.remove_source(listener)       # after close: nothing left to give back
    finally:
        for conn in conns:
            conn.close()
