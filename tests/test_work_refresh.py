"""A ``WorkQueue`` refuses a ``refresh`` that means nothing, before anything starts.

Before: ``refresh=0`` with a ``ListSource`` listed it without a pause (one core
busy for ever), ``refresh=nan`` was taken and ``refresh=inf`` ended the feeder's
thread with an OverflowError. 0 stays right for a source that waits in
``items()`` itself (a ``ChannelSource`` with a ``wait``: ``paced``).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Any

import pytest

import posa
from posa.work.queue import WorkQueue
from posa.work.sources import ListSource, check_refresh

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"


@pytest.mark.parametrize("refresh", [0, 0.0, -1.0, math.nan, math.inf, -math.inf, "5"])
def test_a_refresh_that_means_nothing_is_refused(refresh: Any) -> None:
    with pytest.raises(ValueError, match=r"refresh=.* refresh is the seconds between two "
                                         r"listings of the source; give a"):
        WorkQueue("refresh/q", source=ListSource([1, 2]), listen=TCP, refresh=refresh)


def test_the_peer_of_a_refused_queue_is_never_made() -> None:
    with pytest.raises(ValueError, match="ListSource without a pause"):
        WorkQueue("refresh/never", source=ListSource([1]), listen=TCP, refresh=0)
    assert not [t for t in threading.enumerate() if t.name == "posa-source-refresh/never"]
    with posa.Peer("refresh/never", listen=TCP):    # the name is free: nothing took it
        pass


class Paced:
    """A source whose ``items()`` waits itself, as a ``ChannelSource`` does."""

    paced = True

    def __init__(self) -> None:
        self.listed = threading.Event()
        self._stop = threading.Event()

    def items(self) -> Iterable[str]:
        self.listed.set()
        self._stop.wait(0.05)       # the source's own pacing, not the test's
        return ["only"]

    def fetch(self, key: str) -> Any:
        return key


def test_refresh_zero_serves_a_source_that_waits_itself() -> None:
    source = Paced()
    check_refresh(0, source)
    with WorkQueue("refresh/paced", source=source, listen=TCP, refresh=0):
        assert source.listed.wait(20.0)


def test_without_a_source_refresh_is_not_used() -> None:
    check_refresh(math.nan, None)
