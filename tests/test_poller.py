"""``posa.transport.poller``: epoll and its ``selectors`` stand-in behave alike."""
from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any

import pytest

from posa.transport.poller import READ, WRITE, SelectorPoller, readable, writable

POLLERS: list[Callable[[], Any]] = [SelectorPoller]
if hasattr(select, "epoll"):
    POLLERS.append(select.epoll)


@pytest.fixture(params=POLLERS, ids=lambda make: make.__name__)
def poller(request: pytest.FixtureRequest) -> Any:
    made = request.param()
    yield made
    made.close()


def test_reports_input_room_and_hang_up(poller: Any) -> None:
    here, there = socket.socketpair()
    try:
        poller.register(here, READ)
        assert poller.poll(0) == []
        there.send(b"x")
        [(fd, mask)] = poller.poll(-1)        # ready now: a negative wait returns at once
        assert fd == here.fileno() and readable(mask) and not writable(mask)
        poller.modify(here, READ | WRITE)
        [(fd, mask)] = poller.poll(0)
        assert readable(mask) and writable(mask)
        poller.modify(here, READ)
        here.recv(1)
        assert poller.poll(0) == []
        there.close()                          # a hang-up calls for a read
        [(fd, mask)] = poller.poll(1.0)
        assert readable(mask)
        poller.unregister(here)
        assert poller.poll(0) == []
    finally:
        here.close()
        there.close()


def test_a_number_closed_while_registered_can_be_registered_again(poller: Any) -> None:
    first, first_peer = socket.socketpair()
    poller.register(first.fileno(), READ)
    number = first.fileno()
    first.close()
    first_peer.close()
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(32):                    # get a socket on the same number
            pairs.append(socket.socketpair())
            if number in (pairs[-1][0].fileno(), pairs[-1][1].fileno()):
                break
        reused, partner = pairs[-1]
        if partner.fileno() == number:
            reused, partner = partner, reused
        assert reused.fileno() == number, "the closed number was not handed out again"
        poller.register(reused, READ)          # epoll forgot the old one; so must we
        partner.send(b"x")
        assert [fd for fd, _ in poller.poll(1.0)] == [number]
    finally:
        for pair in pairs:
            for s in pair:
                s.close()
