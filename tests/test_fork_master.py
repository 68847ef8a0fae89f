"""A ``Master`` closed in a forked child closes the child's copies only: its lanes
are the parent's threads, and one of them may have held the master's lock at the
fork (before: the child's close waited for that lock for ever)."""
from __future__ import annotations

import pytest

import posa
from posa.work.masterslave import Master
from posa.work.slave import Slave
from tests.forking import Forked, held_by_a_thread

pytestmark = pytest.mark.timeout(60)

CLOSE_DEADLINE = 5.0    # s: far more than a child's close needs


def test_a_child_closes_an_inherited_master_whose_lock_a_parents_thread_held() -> None:
    with posa.LocalRegistry() as registry, \
            Slave("work/fork-master", lambda part: [x * 2 for x in part],
                  registry=registry, listen="tcp://127.0.0.1:0"), \
            Master("work/*", registry=registry) as master:
        assert master.run([1, 2]) == [2, 4]             # its lanes run
        with held_by_a_thread(master._cond), Forked(master.close) as child:
            assert child.outcome(CLOSE_DEADLINE) == "ok"
        assert master.run([3]) == [6]                   # the parent's lanes go on
        assert not master._closed
