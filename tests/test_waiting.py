"""The blocking wait of protocol steps (``posa.delivery.waiting``).

A process that holds many sockets (a dispatcher's client with a thousand
connections, a gateway) gets descriptors from 1024 up, which ``select.select``
refuses: the wait then took the error for "readable", and every request, call
and lookup of that process busy-waited. A wait of weeks (over poll's C int of
milliseconds) is polled in slices (``posa.transport.base.wait_fd``).
"""
from __future__ import annotations

import math
import os
import resource
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from posa.delivery.waiting import readable
from posa.transport import base
from posa.transport.base import wait_fd

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


def test_a_wait_of_weeks_or_for_ever_sees_a_readable_descriptor_at_once() -> None:
    """poll's milliseconds are a C int (about 24 days): a longer wait is polled in
    slices, so it neither overflows nor misses a descriptor already readable."""
    writer, reader = socket.socketpair()
    with writer, reader:
        writer.send(b"x")
        for timeout in (30 * 86_400.0, 1e12, math.inf):
            assert readable(_Endpoint(reader.fileno()), timeout) is True  # type: ignore[arg-type]
            assert wait_fd(reader.fileno(), timeout) is True
        assert wait_fd(reader.fileno(), math.nan) is True


def test_a_wait_longer_than_a_slice_polls_again_until_its_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With slices made tiny, a quiet descriptor is waited for through several of
    them and reported not readable at the end; a readable one at once."""
    monkeypatch.setattr(base, "POLL_SLICE", 0.01)
    slices: list[int] = []
    writer, reader = socket.socketpair()
    with writer, reader:
        real = select.poll

        class Counting:
            def __init__(self) -> None:
                self._poll = real()

            def register(self, fd: int, mask: int) -> None:
                self._poll.register(fd, mask)

            def poll(self, ms: int) -> list[tuple[int, int]]:
                slices.append(ms)
                return self._poll.poll(ms)
        monkeypatch.setattr(base, "_poll", Counting)
        monkeypatch.setattr(base, "_local", threading.local())
        assert wait_fd(reader.fileno(), 0.05) is False
        assert len(slices) >= 2 and max(slices) <= 10
        writer.send(b"x")
        slices.clear()
        assert wait_fd(reader.fileno(), 0.05) is True and len(slices) == 1
