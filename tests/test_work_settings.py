"""A ``Worker`` refuses settings that mean nothing, saying what to pass.

Before: ``Worker(wait=nan)`` or ``timeout=nan`` was taken and ``run`` ended at its
first request with ``ValueError`` about the request's timeout; ``timeout=0`` asked
an unreachable queue again and again without a pause; ``prefetch=1.5`` was taken.
The edge values serve: a queue and a worker over real tcp, ``wait=0``.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

import posa
from posa.work.queue import WorkQueue
from posa.work.worker import Worker

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"


@pytest.mark.parametrize("setting", [{"wait": math.nan}, {"wait": -1.0}, {"wait": math.inf},
                                     {"timeout": 0.0}, {"timeout": math.nan},
                                     {"timeout": -5.0}, {"prefetch": 0}, {"prefetch": 1.5}])
def test_a_worker_setting_that_means_nothing_is_refused(setting: dict[str, float]) -> None:
    label = next(iter(setting))
    with pytest.raises(ValueError, match=rf"{label} must be a "):
        Worker("settings/w", "settings/q", lambda item: item.data, listen=TCP, **setting)


def test_a_worker_that_does_not_wait_on_an_empty_queue_still_does_the_work() -> None:
    done = threading.Event()
    results: dict[str, object] = {}

    def finished(key: str, result: object) -> None:
        results[key] = result
        if len(results) == 3:
            done.set()
    with WorkQueue("settings/q", listen=TCP, on_done=finished) as queue:
        queue.put({"a": 1, "b": 2, "c": 3})
        with Worker("settings/w", "settings/q", lambda item: item.data * 10, listen=TCP,
                    wait=0, timeout=5.0) as worker:
            worker.start()
            assert done.wait(20.0)
    assert results == {"a": 10, "b": 20, "c": 30}


def test_the_peer_of_a_refused_worker_is_never_made() -> None:
    with pytest.raises(ValueError):
        Worker("settings/never", "settings/q", lambda item: None, wait=math.nan)
    with posa.Peer("settings/never"):       # the name is free: nothing registered it
        pass


def test_a_store_that_is_not_a_database_is_said_with_what_to_do(tmp_path: Path) -> None:
    """It raised sqlite3.DatabaseError, a traceback from ``posa queue --store``."""
    store = tmp_path / "not-a-db"
    store.write_bytes(b"garbage, not SQLite" * 100)
    with pytest.raises(posa.PosaError, match=r"cannot use .* as a queue store: file is "
                       r"not a database; give the queue a file of its own"):
        WorkQueue("settings/q", listen=TCP, store=store)
    assert store.read_bytes() == b"garbage, not SQLite" * 100   # left as it was
    with posa.Peer("settings/q", listen=TCP):   # nothing registered the queue's name
        pass
