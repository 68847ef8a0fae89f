"""Master-Slave: the schedule (sans-IO), the votes, master and slaves as threads
of one process, and slave processes that are killed or lie mid-job."""
from __future__ import annotations

import json
import sys
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import posa
from posa.work.jobstate import First, JobState, Majority, Mean
from posa.work.masterslave import (
    Master,
    Slave,
    majority,
    merge_concat,
    merge_first,
    split_chunks,
    split_whole,
)
from tests.support import Proc, load_example

pytestmark = pytest.mark.timeout(120)


tsp = load_example("tsp")


# ---------------------------------------------------------------------------
# the schedule and the votes (sans-IO)
# ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(1, 6), st.integers(1, 4), st.sampled_from([1, 2, 3, None]),
       st.sampled_from([None, First()]), st.sampled_from([0.0, 0.5, None]))
def test_any_order_of_answers_deaths_and_failures_ends_right(
        data: st.DataObject, n_tasks: int, n_slaves: int, replicas: int | None,
        vote: First | None, hedge: float | None) -> None:
    slaves = [f"s{i}" for i in range(n_slaves)]
    state = JobState([10 * i for i in range(n_tasks)], slaves, replicas=replicas,
                     max_attempts=3, vote=vote, hedge=hedge)
    running: list[tuple[str, int]] = []
    now = 0.0

    def check() -> None:
        decided = sum(task.decided for task in state.tasks)
        assert decided == n_tasks - state.undecided                 # each decided once
        for i, task in enumerate(state.tasks):
            assert not task.decided or task.value == 10 * i + 1     # from an answer

    for _ in range(60):                                  # random phase
        if state.finished:
            break
        now += data.draw(st.floats(0.0, 1.0))
        if running and data.draw(st.booleans()):
            slave, index = running.pop(data.draw(st.integers(0, len(running) - 1)))
            outcome = data.draw(st.sampled_from(["ok", "ok", "dead", "raise"]))
            if outcome == "ok":
                state.succeeded(slave, index, 10 * index + 1, now)
            else:
                state.failed(slave, index, posa.RemoteError("ValueError", "boom"),
                             dead=outcome == "dead")
                if outcome == "dead":
                    running = [(s, i) for s, i in running if s != slave]
        elif state.live:
            slave = data.draw(st.sampled_from(sorted(state.live)))
            task = state.take(slave, now)
            if task is not None:
                running.append((slave, task[0]))
        check()
    for _ in range(200):                                 # drain: every slave answers
        if state.finished:
            break
        now += 1.0
        for slave, index in running:
            state.succeeded(slave, index, 10 * index + 1, now)
        running = []
        for slave in sorted(state.live):
            task = state.take(slave, now)
            if task is not None:
                running.append((slave, task[0]))
        assert running or state.finished, "stuck: nothing running, nothing to take"
        check()
    assert state.finished
    if state.error is None:
        assert state.results() == [10 * i + 1 for i in range(n_tasks)]
    else:
        with pytest.raises(posa.PosaError):
            state.results()


def test_a_dead_slaves_subtasks_are_reassigned() -> None:
    state = JobState(["a", "b"], ["s0", "s1"])
    assert state.take("s0", 0.0) == (0, "a")
    assert state.take("s1", 0.0) == (1, "b")
    state.failed("s0", 0, posa.Timeout("gone"), dead=True)
    state.succeeded("s1", 1, "B", 1.0)
    assert state.take("s0", 1.0) is None                 # dead: gets nothing
    assert state.take("s1", 1.0) == (0, "a")
    state.succeeded("s1", 0, "A", 2.0)
    assert (state.results(), state.reassigned) == (["A", "B"], 1)


def test_backup_copies_only_for_overdue_subtasks() -> None:
    state = JobState(["a", "b", "c"], ["fast", "slow"], backup_factor=2.5)
    state.take("slow", 0.0)                              # "a", and then it hangs
    for t in (0.0, 1.0):
        index, _ = state.take("fast", t)
        state.succeeded("fast", index, "x", t + 1.0)     # 1 s per subtask
    assert state.take("fast", 2.0) is None               # "a" has run 2 s: not overdue
    assert state.backup_due() == 2.5                     # 2.5 x the mean of 1 s
    assert state.take("fast", 2.5) == (0, "a")           # overdue: a backup copy
    state.succeeded("fast", 0, "x", 3.0)
    state.succeeded("slow", 0, "late", 9.0)              # ignored: decided already
    assert (state.results(), state.backup_runs) == (["x", "x", "x"], 1)


def test_failed_work_moves_to_another_slave_then_fails_the_job() -> None:
    state = JobState(["a"], ["s0", "s1"], max_attempts=2)
    error = posa.RemoteError("ValueError", "bad input")
    state.take("s0", 0.0)
    state.failed("s0", 0, error, dead=False)
    assert state.take("s0", 0.0) is None and state.take("s1", 0.0) == (0, "a")
    state.failed("s1", 0, error, dead=False)
    with pytest.raises(posa.RemoteError, match="subtask 0 failed 2 times: bad input"):
        state.results()


@pytest.mark.parametrize("vote, answers, value, dissenters", [
    (Majority(), [("a", 1), ("b", 1), ("c", 2)], 1, ["c"]),
    (Majority(), [("a", {"x": [1]}), ("b", {"x": [1]})], {"x": [1]}, []),
    (First(), [("a", 3), ("b", 4)], 3, []),
    (Mean(), [("a", 1.0), ("b", 2.0), ("c", 6.0)], 3.0, []),
    (Mean(tolerance=0.5), [("a", 1.0), ("b", 1.2), ("c", 6.0)], 1.1, ["c"]),
    (Mean(), [("a", 2), ("b", "two")], 2.0, ["b"]),
])
def test_votes(vote: Any, answers: list[tuple[str, Any]], value: Any,
               dissenters: list[str]) -> None:
    got, against = vote.decide(answers)
    assert got == pytest.approx(value) if isinstance(value, float) else got == value
    assert against == dissenters


def test_no_majority_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(posa.PosaError, match="no majority among 2 answers.*more replicas"):
        majority.decide([("a", 1), ("b", 2)])


def test_split_and_merge_strategies() -> None:
    assert split_chunks(range(7), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_chunks([1], 4) == [[1]]
    assert merge_concat([[0, 1], [2]]) == [0, 1, 2]
    assert split_whole("job", 5) == ["job"] and merge_first(["r"]) == "r"


# ---------------------------------------------------------------------------
# master and slaves as threads of one process
# ---------------------------------------------------------------------------

def squares(part: list[int]) -> list[int]:
    return [x * x for x in part]


def test_partition_gives_the_single_process_result(registry: posa.LocalRegistry) -> None:
    progress: list[tuple[int, int]] = []
    slaves = [Slave(f"calc/sq/{i}", squares, registry=registry) for i in range(3)]
    try:
        with Master("calc/sq/*", registry=registry, on_progress=lambda d, t:
                    progress.append((d, t))) as master:
            outcome = master.execute(list(range(100)))
            again = master.run(list(range(10)))          # lanes are reused
    finally:
        for slave in slaves:
            slave.close()
    assert outcome.result == squares(list(range(100))) and again == squares(list(range(10)))
    assert outcome.subtasks == 3 and sum(outcome.answers.values()) == 3
    assert progress[0] == (0, 3) and progress[-1] == (3, 3)
    assert master.metrics["jobs"] == 2


def test_redundancy_reports_the_dissenting_slave(registry: posa.LocalRegistry) -> None:
    slaves = [Slave("calc/vote/good-1", lambda q: q * 2, registry=registry),
              Slave("calc/vote/good-2", lambda q: q * 2, registry=registry),
              Slave("calc/vote/faulty", lambda q: q * 2 + 1, registry=registry)]
    try:
        with Master("calc/vote/*", registry=registry, split=split_whole, merge=merge_first,
                    replicas=None, vote=majority) as master:
            outcome = master.execute(21)
    finally:
        for slave in slaves:
            slave.close()
    assert outcome.result == 42
    assert outcome.dissenters == {"calc/vote/faulty": [0]}


def test_work_that_raises_is_retried_elsewhere_then_reported(
        registry: posa.LocalRegistry) -> None:
    def broken(part: list[int]) -> list[int]:
        raise ValueError("this slave cannot count")

    good = Slave("calc/retry/good", squares, registry=registry)
    bad = Slave("calc/retry/bad", broken, registry=registry)
    try:
        with Master("calc/retry/*", registry=registry,
                    split=lambda job, n: [[x] for x in job]) as master:
            assert master.run([1, 2, 3, 4]) == [1, 4, 9, 16]
        with Master("calc/retry/bad", registry=registry) as master:
            with pytest.raises(posa.RemoteError, match="ValueError.*cannot count"):
                master.run([1, 2])
        with Master("calc/none/*", registry=registry) as master:
            with pytest.raises(posa.NameNotFound, match="no live slave matches"):
                master.run([1])
    finally:
        good.close()
        bad.close()


def test_a_hung_slave_is_overtaken_by_a_backup(registry: posa.LocalRegistry) -> None:
    release = threading.Event()
    entered = threading.Event()

    def hangs(part: list[int]) -> list[int]:
        entered.set()
        release.wait(30)
        return squares(part)

    slaves = [Slave("calc/hang/a-hung", hangs, registry=registry),
              Slave("calc/hang/b-fast", squares, registry=registry)]
    try:
        with Master("calc/hang/*", registry=registry, timeout=60.0,
                    split=lambda job, n: [[x] for x in job]) as master:
            try:
                outcome = master.execute(list(range(8)), timeout=20)
            finally:
                release.set()                    # lets the hung lane end before close
    finally:
        for slave in slaves:
            slave.close()
    assert entered.is_set()
    assert outcome.result == squares(list(range(8)))
    assert outcome.backups >= 1 and outcome.elapsed < 20


def test_tsp_example_runs() -> None:
    demo = Proc([sys.executable, "examples/tsp.py"])
    try:
        assert "same as sequential" in demo.line(timeout=60)
        assert demo.popen.wait(30) == 0
    finally:
        demo.close()


# ---------------------------------------------------------------------------
# slaves in real processes
# ---------------------------------------------------------------------------

def test_a_slave_killed_mid_job_changes_nothing_in_the_result(dispatcher: str) -> None:
    job = tsp.make_job(cities=30, tours=24_000, parts=8, seed=7)
    expected = tsp.solve(job)
    procs = [Proc([sys.executable, "examples/tsp.py", "slave", f"tsp/proc-{i}",
                   "--dispatcher", dispatcher]) for i in range(2)]
    outcome: dict[str, Any] = {}
    try:
        for proc in procs:
            proc.expect("ready")
        with posa.RegistryClient(dispatcher) as registry, \
                Slave("tsp/thread", tsp.sample, registry=registry,
                      listen="tcp://127.0.0.1:0"), \
                Master("tsp/*", registry=registry, split=tsp.split, merge=tsp.merge,
                       timeout=30.0) as master:
            def run() -> None:
                try:
                    outcome["ok"] = master.execute(job, timeout=60)
                except posa.PosaError as exc:
                    outcome["error"] = exc
            runner = threading.Thread(target=run)
            runner.start()
            procs[0].expect("subtask")           # it is computing: kill it now
            procs[0].kill()
            runner.join(90)
        assert "error" not in outcome, outcome.get("error")
        result = outcome["ok"]
        assert result.result == expected
        assert result.reassigned == 1 and "tsp/proc-0" not in result.answers
    finally:
        for proc in procs:
            proc.close()


def test_tsp_master_process_shows_progress_and_matches_the_sequential_result(
        dispatcher: str) -> None:
    slave = Proc([sys.executable, "examples/tsp.py", "slave", "tsp/only",
                  "--dispatcher", dispatcher])
    master = None
    try:
        slave.expect("ready")
        master = Proc([sys.executable, "examples/tsp.py", "master", "--dispatcher",
                       dispatcher, "--slaves", "tsp/*", "--tours", "2000", "--cities", "20",
                       "--progress"])
        answer = json.loads(master.line(timeout=60))
        assert master.popen.wait(30) == 0
        expected = tsp.solve(tsp.make_job(cities=20, tours=2000))
        assert (answer["length"], answer["tour"]) == (expected["length"], expected["tour"])
        assert "subtasks [" + "#" * 30 + "] 8/8 100%" in master.stderr_now()
    finally:
        slave.close()
        if master is not None:
            master.close()


VOTER = """
import sys, posa
from posa.work.masterslave import Slave
name, dispatcher, factor = sys.argv[1], sys.argv[2], int(sys.argv[3])
registry = posa.RegistryClient(dispatcher)
slave = Slave(name, lambda job: {"answer": job["x"] * factor}, registry=registry,
              listen="tcp://127.0.0.1:0")
print("ready", flush=True)
sys.stdin.readline()
slave.close()
registry.close()
"""


def test_redundant_slave_processes_outvote_a_faulty_one(dispatcher: str) -> None:
    procs = [Proc.python(VOTER, name, dispatcher, factor)
             for name, factor in (("vote/a", "2"), ("vote/b", "2"), ("vote/c", "3"))]
    try:
        for proc in procs:
            proc.expect("ready")
        with posa.RegistryClient(dispatcher) as registry, \
                Master("vote/*", registry=registry, split=split_whole, merge=merge_first,
                       replicas=None, vote=majority, timeout=10.0) as master:
            outcome = master.execute({"x": 21})
        assert outcome.result == {"answer": 42}
        assert outcome.dissenters == {"vote/c": [0]}
        assert sorted(outcome.answers) == ["vote/a", "vote/b", "vote/c"]
    finally:
        for proc in procs:
            proc.close()
