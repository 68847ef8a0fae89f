"""Hedged Master-Slave: with ``vote=first`` every replica gets a copy (at once or
after a delay from observed times), the first answer wins, the later ones are
ignored and counted; a master with a deadline may return what was decided."""
from __future__ import annotations

import threading
from typing import Any

import pytest

import posa
from posa.work.jobstate import JobState, first
from posa.work.masterslave import Master, Slave, merge_first, split_whole
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


# -- the schedule (sans-IO) --------------------------------------------------------

def test_first_with_redundancy_sends_every_replica_at_once_and_counts_late_answers(
        ) -> None:
    state = JobState(["job"], ["a", "b", "c"], replicas=None, vote=first)
    taken = [state.take(slave, 0.0) for slave in ("a", "b", "c")]
    assert taken == [(0, "job")] * 3                 # three copies, not one
    assert state.hedged == 2
    state.succeeded("b", 0, "answer", 1.0)
    assert state.finished and state.results() == ["answer"]
    state.succeeded("a", 0, "answer", 2.0)
    state.succeeded("c", 0, "answer", 3.0)
    assert state.late == 2                           # ignored, and counted


def test_a_hedging_delay_holds_the_other_copies_back_until_it_passes() -> None:
    state = JobState(["job"], ["a", "b"], replicas=None, vote=first, hedge=1.5)
    assert state.take("a", 10.0) == (0, "job")
    assert state.take("b", 10.5) is None             # the first copy may still answer
    assert state.backup_due() == 11.5
    assert state.take("b", 11.5) == (0, "job")       # overdue: the backup goes out
    assert state.hedged == 1


def test_no_hedging_keeps_one_copy() -> None:
    state = JobState(["job"], ["a", "b"], replicas=None, vote=first, hedge=None)
    assert state.take("a", 0.0) == (0, "job")
    assert state.take("b", 100.0) is None


def test_the_delay_derived_from_observed_times_is_their_percentile() -> None:
    from posa.work.masterslave import _hedge_delay
    p95 = _hedge_delay("p95")
    assert p95([]) == 0.0                            # nothing seen yet: at once
    assert p95([float(i) for i in range(1, 101)]) == 96.0
    assert _hedge_delay(0.25)([1.0]) == 0.25 and _hedge_delay(None)([1.0]) is None
    with pytest.raises(ValueError, match="percentile"):
        _hedge_delay("fast")


# -- master and slaves ---------------------------------------------------------------

def test_one_slow_slave_no_longer_holds_a_first_vote_job(
        registry: posa.LocalRegistry) -> None:
    release, entered = threading.Event(), threading.Event()
    copies = threading.Barrier(3)    # the first job: each replica has its copy

    def fast(job: int) -> int:
        if job == 21:                # answer once all three copies went out (a lane
            copies.wait(30)          # thread may start late; the first answer ends
        return job * 2               # the job and a copy not yet taken is not sent)

    def slow(job: int) -> int:
        if job == 21:
            copies.wait(30)
        entered.set()
        release.wait(60)
        return job * 2

    slaves = [Slave("calc/hedge/fast-1", fast, registry=registry),
              Slave("calc/hedge/fast-2", fast, registry=registry),
              Slave("calc/hedge/slow", slow, registry=registry)]
    outcomes: list[Any] = []
    try:
        with Master("calc/hedge/*", registry=registry, split=split_whole,
                    merge=merge_first, replicas=None, vote=first, timeout=90) as master:
            try:
                job = threading.Thread(target=lambda: outcomes.append(
                    master.execute(21, timeout=60)), daemon=True)
                job.start()
                assert entered.wait(30), "the slow slave never got a copy"
                job.join(30)
                assert not job.is_alive(), "the job waited for the slow slave"
                assert entered.is_set() and not release.is_set()
                for value in range(5):              # and the next jobs too
                    assert master.run(value, timeout=30) == value * 2
            finally:
                release.set()
            wait_until(lambda: master.metrics["ignored"] >= 1, what="a late answer")
    finally:
        for slave in slaves:
            slave.close()
    assert outcomes[0].result == 42 and outcomes[0].hedged == 2
    assert master.metrics["hedged"] >= 2


def test_a_master_with_a_deadline_returns_what_was_decided(
        registry: posa.LocalRegistry) -> None:
    release = threading.Event()

    def stuck_on_two(part: list[int]) -> list[int]:
        if 2 in part:
            release.wait(60)
        return [x * x for x in part]

    slave = Slave("calc/partial/one", stuck_on_two, registry=registry, threads=2)
    try:
        with Master("calc/partial/*", registry=registry, per_slave=2, backups=False,
                    split=lambda job, n: [[x] for x in job], timeout=90) as master:
            try:
                outcome = master.execute([1, 2, 3], timeout=3.0, partial=True)
                with pytest.raises(posa.Timeout, match="partial=True"):
                    master.execute([2], timeout=0.5)
            finally:
                release.set()
    finally:
        slave.close()
    assert outcome.result is None and not outcome.complete
    assert 1 in outcome.missing                       # the stuck subtask
    assert sorted([*outcome.partial, *outcome.missing]) == [0, 1, 2]
    assert all(outcome.partial[i] == [[1, 4, 9][i]] for i in outcome.partial)
    assert master.metrics["partial"] == 1
