"""The blocking wait of protocol steps (``posa.delivery.waiting``).

A process that holds many sockets (a dispatcher's client with a thousand
connections, a gateway) gets descriptors from 1024 up, which ``select.select``
refuses: the wait then took the error for "readable", and every request, call
and lookup of that process busy-waited.
"""
from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator

import pytest

from posa.delivery.waiting import readable

HIGH = 1500   # above select's FD_SETSIZE (1024)


class _Endpoint:
    """Just enough of a Connection for ``readable``: its descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


@pytest.fixture
def high_pair() -> Iterator[tuple[socket.socket, int]]:
    """A connected socket pair whose reading end sits at descriptor ``HIGH``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH:
        pytest.skip(f"the descriptor limit ({hard}) is too low for fd {HIGH}")
    if soft != resource.RLIM_INFINITY and soft <= HIGH:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH + 1, hard))
    writer, reader = socket.socketpair()
    fd = os.dup2(reader.fileno(), HIGH)
    reader.close()
    try:
        yield writer, fd
    finally:
        os.close(fd)
        writer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_quiet_descriptor_above_1024_is_waited_for_not_reported_readable(
        high_pair: tuple[socket.socket, int]) -> None:
    _, fd = high_pair
    assert readable(_Endpoint(fd), 0.05) is False  # type: ignore[arg-type]


def test_a_readable_descriptor_above_1024_is_reported(
        high_pair: tuple[socket.socket, int]) -> None:
    writer, fd = high_pair
    writer.send(b"x")
    assert readable(_Endpoint(fd), 5.0) is True  # type: ignore[arg-type]


def test_a_closed_endpoint_counts_as_readable_so_the_receive_says_why() -> None:
    assert readable(_Endpoint(-1), 5.0) is True  # type: ignore[arg-type]
