"""A ``posa.Server`` closed in a forked child leaves its worker pool to the parent:
the pool's threads are not in the child, and its lock may have been held at the
fork by a thread of the parent handing a call to the workers."""
from __future__ import annotations

from typing import Any

import pytest

import posa
from tests.forking import Forked, held_by_a_thread

pytestmark = pytest.mark.timeout(60)

SERVICE = "lab/fork-pool"
CLOSE_DEADLINE = 5.0    # s: far more than a child's close needs
LEASE = 600.0           # s: no renewal in a test, which would register a name again


def test_a_child_closes_an_inherited_server_whose_pool_lock_a_parents_thread_held(
        dispatcher: str) -> None:
    with posa.Server(SERVICE, lambda body: body, dispatcher=dispatcher, workers=2,
                     lease=LEASE) as server, \
            posa.Client(dispatcher=dispatcher, timeout=20.0) as client:
        assert client.call(SERVICE, "one") == "one"
        pool: Any = server._pool
        with held_by_a_thread(pool._shutdown_lock), Forked(server.close) as child:
            assert child.outcome(CLOSE_DEADLINE) == "ok"
        assert client.call(SERVICE, "two") == "two"     # the parent's workers serve on
        assert server._pool is not None and server._pool is pool
        assert not server._pool._shutdown         # (the parent's to shut down)
