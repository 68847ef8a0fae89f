"""Work queue: the queue manager's state (sans-IO), the queue and its competing
workers in one process, the scaling rule, progress, and workers in real
processes that are killed mid-item."""
from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import posa
from posa.errors import Rejected
from posa.work.client import submit
from posa.work.progress import progress_bar, render_progress
from posa.work.protocol import QUEUE, next_request
from posa.work.queue import WorkQueue
from posa.work.scaling import ScalingAdvisor
from posa.work.sources import DirectorySource, ListSource
from posa.work.state import DEAD, DONE, LEASED, PENDING, Lease, WorkState
from posa.work.worker import Item, Worker
from tests.support import ROOT, Proc

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------
# the queue manager's state (sans-IO)
# ---------------------------------------------------------------------------

class WorkStateMachine(RuleBasedStateMachine):
    """Any sequence of add/lease/ack/fail/extend/expire keeps the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.state = WorkState(visibility=5.0, max_in_flight=4, max_attempts=3,
                               capacity=12)
        self.now = 0.0
        self.added: set[str] = set()
        self.completed: list[str] = []          # keys for which ack returned DONE
        self.leases: list[Lease] = []           # every lease ever handed out

    @rule(key=st.sampled_from([f"k{i}" for i in range(16)]))
    def add(self, key: str) -> None:
        if self.state.room() <= 0 and key not in self.added:
            with pytest.raises(Rejected):
                self.state.add(key, key.upper())
            return
        fresh = self.state.add(key, key.upper())
        assert fresh == (key not in self.added)
        self.added.add(key)

    @rule(worker=st.sampled_from(["w1", "w2", "w3"]), n=st.integers(1, 3))
    def lease(self, worker: str, n: int) -> None:
        got = self.state.lease(worker, self.now, n)
        assert len(got) <= n
        for lease in got:
            assert lease.data == str(lease.key).upper()
            assert self.state.status(lease.key) == LEASED
        self.leases.extend(got)

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        if not self.leases:
            return
        lease = data.draw(st.sampled_from(self.leases))   # current or stale: any
        before = self.state.status(lease.key)
        outcome = self.state.ack(lease.key)
        if before == DONE:
            assert outcome == "duplicate"
        else:
            assert outcome == DONE
            self.completed.append(str(lease.key))

    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        if not self.leases:
            return
        lease = data.draw(st.sampled_from(self.leases))
        current = self._is_current(lease)
        outcome = self.state.fail(lease.key, lease.token, "boom")
        assert (outcome != "stale") == current

    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        if not self.leases:
            return
        lease = data.draw(st.sampled_from(self.leases))
        assert self.state.extend(lease.key, lease.token, self.now) == self._is_current(lease)

    @rule(dt=st.floats(0.0, 4.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        for key, outcome in self.state.expire(self.now):
            assert outcome in (PENDING, DEAD)
            assert self.state.status(key) == outcome
        deadline = self.state.next_deadline()
        assert deadline is None or deadline > self.now

    def _is_current(self, lease: Lease) -> bool:
        newer = [other for other in self.leases if other.key == lease.key]
        return (self.state.status(lease.key) == LEASED and newer[-1] is lease)

    @invariant()
    def none_lost_none_twice(self) -> None:
        counts = self.state.counts()
        statuses = [self.state.status(key) for key in self.added]
        assert None not in statuses                       # none lost
        assert counts["total"] == len(self.added)
        assert counts["pending"] == statuses.count(PENDING)
        assert counts["leased"] == statuses.count(LEASED)
        assert counts["done"] == statuses.count(DONE) == len(self.completed)
        assert counts["dead"] == statuses.count(DEAD)
        assert len(set(self.completed)) == len(self.completed)   # each done at most once
        assert counts["leased"] <= self.state.max_in_flight


TestWorkStateMachine = WorkStateMachine.TestCase
TestWorkStateMachine.settings = settings(max_examples=100, stateful_step_count=50,
                                         deadline=None)


def test_draining_completes_every_item_exactly_once() -> None:
    state = WorkState(visibility=1.0, max_in_flight=8, max_attempts=5)
    for i in range(100):
        assert state.add(i, i)
    now, done = 0.0, []
    for _ in range(1000):                       # bounded: 100 items, 8 at a time
        leases = state.lease("w", now, 8)
        if not leases:
            break
        for n, lease in enumerate(leases):
            if n == 0 and lease.attempt == 1:
                continue                        # "dies": never answers; expires later
            assert state.ack(lease.key) == DONE
            done.append(lease.key)
        now += 2.0
        state.expire(now)
    assert sorted(done) == list(range(100))
    assert state.counts()["redelivered"] > 0


def test_dead_letter_after_max_attempts_and_requeue() -> None:
    state = WorkState(visibility=1.0, max_attempts=2)
    state.add("poison", {"x": 1})
    first = state.lease("w1", 0.0)[0]
    assert state.fail("poison", first.token, "ValueError: bad") == PENDING
    second = state.lease("w2", 0.0)[0]
    assert second.attempt == 2
    assert state.fail("poison", first.token, "stale lease") == "stale"
    assert state.fail("poison", second.token, "ValueError: bad") == DEAD
    [letter] = state.dead_letters()
    assert (letter.key, letter.data, letter.attempts, letter.reason) == (
        "poison", {"x": 1}, 2, "ValueError: bad")
    assert not state.add("poison")              # remembered: not queued again
    assert state.requeue_dead("poison")
    assert state.lease("w1", 0.0)[0].attempt == 1


def test_in_flight_limit_and_capacity() -> None:
    state = WorkState(max_in_flight=2, capacity=3)
    for key in "abc":
        state.add(key)
    with pytest.raises(Rejected, match="capacity"):
        state.add("d")
    assert [lease.key for lease in state.lease("w", 0.0, 10)] == ["a", "b"]
    assert state.lease("w", 0.0, 10) == []
    state.ack("a")
    assert state.add("d")
    assert [lease.key for lease in state.lease("w", 0.0, 10)] == ["c"]


def test_extend_keeps_a_lease_alive() -> None:
    state = WorkState(visibility=1.0)
    state.add("slow")
    lease = state.lease("w", 0.0)[0]
    assert state.extend("slow", lease.token, 0.9)
    assert state.expire(1.5) == []
    assert state.expire(2.0) == [("slow", PENDING)]
    assert not state.extend("slow", lease.token, 2.0)


def test_remember_bounds_the_finished_keys() -> None:
    state = WorkState(remember=2)
    for key in "abc":
        state.add(key)
        state.lease("w", 0.0)
        state.ack(key)
    assert state.status("a") is None and state.status("c") == DONE
    assert state.add("a")                        # forgotten: accepted again


# ---------------------------------------------------------------------------
# the scaling rule
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("interval, processing, current, expected", [
    (60.0, 30.0, 1, 1),      # one a minute, 30 s each: one worker keeps up
    (60.0, 60.0, 1, 2),      # balanced is not stable: no reserve, scale up
    (60.0, 120.0, 1, 3),     # falls behind: 120/n < 60 needs 3
    (16.0, 60.0, 4, 4),      # 60 s / 4 = 15 s < 16 s: steady
    (15.0, 60.0, 4, 5),      # 15 s is not below 15 s: up
    (60.0, 30.0, 8, 1),      # far too many: down to ceil(30 / 54) = 1
    (10.0, 40.0, 5, 5),      # 40/4 = 10 > 0.9 * 10: do not go down to 4
])
def test_scaling_rule(interval: float, processing: float, current: int,
                      expected: int) -> None:
    advisor = ScalingAdvisor(window=100, max_workers=16)
    for i in range(10):
        advisor.observe_arrival(i * interval)
        advisor.observe_processing(processing)
    recommendation = advisor.recommend(current, now=10 * interval)
    assert recommendation.workers == expected, recommendation.reason
    assert recommendation.mean_interval == pytest.approx(interval)


def test_scaling_without_data_keeps_the_pool() -> None:
    advisor = ScalingAdvisor(min_workers=2)
    recommendation = advisor.recommend(1, now=0.0)
    assert recommendation.workers == 2 and "not enough data" in recommendation.reason


@given(st.lists(st.floats(0.001, 100.0), min_size=1, max_size=20),
       st.floats(0.01, 100.0), st.integers(1, 32))
def test_scaling_recommendation_is_stable_by_the_rule(durations: list[float],
                                                      interval: float, current: int) -> None:
    advisor = ScalingAdvisor(max_workers=10_000)
    advisor.observe_arrival(0.0)
    for seconds in durations:
        advisor.observe_processing(seconds)
    recommendation = advisor.recommend(current, now=interval)
    processing = sum(durations) / len(durations)
    assert processing / recommendation.workers < interval * (1 + 1e-9)
    if recommendation.workers < current:        # scaled down: still within headroom
        assert processing / recommendation.workers <= 0.9 * interval * (1 + 1e-9)


# ---------------------------------------------------------------------------
# the queue and its workers, in one process
# ---------------------------------------------------------------------------

class Collector:
    """Records ``on_done`` calls; ``wait(n)`` blocks until n keys are done."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, key: str, result: Any) -> None:
        with self._cond:
            self.calls.append((key, result))
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 30.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), (
                f"{len(self.calls)} of {n} items done in {timeout} s")


def test_competing_workers_complete_every_item_once(registry: posa.LocalRegistry) -> None:
    done = Collector()
    with WorkQueue("jobs/q", source=ListSource(list(range(300))), registry=registry,
                   on_done=done) as queue:
        workers = [Worker(f"jobs/q/w{i}", "jobs/q", lambda item: item.data * 2,
                          registry=registry).start() for i in range(3)]
        try:
            metrics = queue.join(30)
        finally:
            for worker in workers:
                worker.stop()
            for worker in workers:
                worker.close()
    assert sorted(done.calls) == sorted((str(i), 2 * i) for i in range(300))
    assert (metrics["done"], metrics["total"], metrics["progress"]) == (300, 300, 1.0)
    assert sum(w.stats["processed"] for w in workers) == 300
    assert all(w.stats["processed"] > 0 for w in workers), "a worker got nothing"


def test_a_worker_that_vanishes_mid_item_has_it_redelivered(
        registry: posa.LocalRegistry) -> None:
    done = Collector()
    with WorkQueue("jobs/r", registry=registry, visibility=0.3, on_done=done) as queue, \
            posa.Peer("jobs/r/dies", registry=registry) as dying:
        queue.put({"a": 1, "b": 2})
        taken = dying.request("jobs/r", {"op": "next", "max": 1})["items"]
        assert [key for key, *_ in taken] == ["a"]           # ... and never acknowledged
        with Worker("jobs/r/lives", "jobs/r", lambda item: (item.data, item.attempt),
                    registry=registry) as worker:
            worker.start()
            done.wait(2)
        metrics = queue.metrics()
    assert dict(done.calls) == {"a": [1, 2], "b": [2, 1]}    # "a" on its second attempt
    assert metrics["expired"] == 1 and metrics["redelivered"] == 1


def test_completion_is_idempotent(registry: posa.LocalRegistry) -> None:
    done = Collector()
    with WorkQueue("jobs/i", registry=registry, on_done=done) as queue, \
            posa.Peer("jobs/i/w", registry=registry) as worker:
        queue.put({"x": 0})
        [[key, token, attempt, data]] = worker.request("jobs/i", {"op": "next"})["items"]
        for _ in range(3):                              # acknowledged three times
            worker.request("jobs/i", {"op": "next", "max": 0, "done": [[key, "r", 0.1]]})
        assert queue.put({"x": 0}) == 0                 # and submitted again
        metrics = queue.metrics()
    assert done.calls == [("x", "r")]
    assert (metrics["done"], metrics["duplicates"]) == (1, 3)


def test_failing_items_are_retried_then_dead_lettered(registry: posa.LocalRegistry) -> None:
    done, dead = Collector(), Collector()

    def work(item: Item) -> Any:
        if item.data == "poison":
            raise ValueError(f"cannot digest {item.data}")
        return item.data

    with WorkQueue("jobs/d", registry=registry, max_attempts=3, on_done=done,
                   on_dead=dead) as queue:
        queue.put({"ok": "fine", "bad": "poison"})
        with Worker("jobs/d/w", "jobs/d", work, registry=registry) as worker:
            worker.start()
            done.wait(1)
            dead.wait(1)
        letters = queue.dead_letters()
        metrics = queue.metrics()
    assert done.calls == [("ok", "fine")]
    assert letters == [("bad", "poison", 3, "ValueError: cannot digest poison")]
    assert dead.calls == [("bad", "ValueError: cannot digest poison")]
    assert (metrics["dead"], metrics["failed"], metrics["progress"]) == (1, 3, 1.0)


def test_in_flight_limit_holds_workers_back(registry: posa.LocalRegistry) -> None:
    with WorkQueue("jobs/l", registry=registry, max_in_flight=2) as queue, \
            posa.Peer("jobs/l/w", registry=registry) as worker:
        queue.put({str(i): i for i in range(5)})
        first = worker.request("jobs/l", {"op": "next", "max": 10})["items"]
        second = worker.request("jobs/l", {"op": "next", "max": 10})["items"]
        assert (len(first), second) == (2, [])
        assert queue.metrics()["in_flight"] == 2


def test_an_idle_worker_waits_without_polling_and_gets_new_items_at_once(
        registry: posa.LocalRegistry) -> None:
    done = Collector()
    with WorkQueue("jobs/w", registry=registry, on_done=done) as queue, \
            Worker("jobs/w/w", "jobs/w", lambda item: item.data, registry=registry,
                   wait=30.0) as worker:
        worker.start()
        queue.wait_until(lambda m: m["waiting"] == 1, 10)   # its request is held
        started = time.monotonic()
        queue.put({"late": "item"})
        done.wait(1)
        assert time.monotonic() - started < 1.0          # not after a poll interval
        worker.stop()
        queue.close()                                    # answers the held request


def test_long_items_keep_their_lease(registry: posa.LocalRegistry) -> None:
    started, release = threading.Event(), threading.Event()
    done = Collector()

    def slow(item: Item) -> Any:
        started.set()
        assert release.wait(10)
        return item.attempt

    with WorkQueue("jobs/s", registry=registry, visibility=0.3, on_done=done) as queue:
        queue.put({"slow": None})
        with Worker("jobs/s/w", "jobs/s", slow, registry=registry) as worker:
            worker.start()
            assert started.wait(10)
            with pytest.raises(posa.Timeout):   # three visibility timeouts pass: no expiry
                queue.wait_until(lambda m: m["expired"] > 0, 1.0)
            release.set()
            done.wait(1)
    assert done.calls == [("slow", 1)]                  # one attempt: never redelivered


def test_submit_waits_while_the_queue_is_full(registry: posa.LocalRegistry) -> None:
    done = Collector()
    with WorkQueue("jobs/c", registry=registry, capacity=10, on_done=done) as queue, \
            posa.Peer("jobs/c/producer", registry=registry) as producer:
        with pytest.raises(Rejected, match="full"):
            queue.put({f"k{i}": i for i in range(11)})
        assert queue.metrics()["total"] == 10
        with pytest.raises(posa.Timeout, match="accepted"):
            submit(producer, "jobs/c", {"more": 1}, timeout=0.2)
        with Worker("jobs/c/w", "jobs/c", lambda item: item.data, registry=registry,
                    prefetch=4) as worker:
            worker.start()
            added = submit(producer, "jobs/c", {f"m{i}": i for i in range(50)},
                           timeout=20, batch=7)
            done.wait(60)
    assert added == 50
    assert len({key for key, _ in done.calls}) == len(done.calls) == 60


def test_directory_source_is_listed_and_refreshed(registry: posa.LocalRegistry,
                                                  tmp_path: Any) -> None:
    (tmp_path / "a.txt").write_text("alpha")
    done = Collector()
    with WorkQueue("jobs/f", source=DirectorySource(tmp_path, "*.txt"), refresh=0.05,
                   registry=registry, on_done=done) as queue, \
            Worker("jobs/f/w", "jobs/f", lambda item: open(item.data["path"]).read(),
                   registry=registry) as worker:
        worker.start()
        done.wait(1)
        (tmp_path / "b.txt").write_text("beta")
        (tmp_path / "ignored.bin").write_text("x")
        done.wait(2)
        assert queue.metrics()["total"] == 2
    assert sorted(done.calls) == [("a.txt", "alpha"), ("b.txt", "beta")]


def test_metrics_carry_the_scaling_advice(registry: posa.LocalRegistry) -> None:
    advice = []
    with WorkQueue("jobs/a", registry=registry, on_scale=advice.append) as queue:
        started = time.monotonic() - 20
        for i in range(20):                              # one a second for 20 s ...
            queue.advisor.observe_arrival(started + i)
            queue.advisor.observe_processing(3.5)       # ... taking 3.5 s each
        with Worker("jobs/a/w", "jobs/a", lambda item: None, registry=registry) as worker:
            worker.start()
            queue.wait_until(lambda m: m["workers"] == 1, 10)
            scaling = queue.wait_until(   # the advisor looks once a second
                lambda m: m["scaling"] is not None and m["scaling"]["current"] == 1,
                10)["scaling"]
    assert scaling["workers"] == 4 and "scale up" in scaling["reason"]
    assert advice and advice[-1].workers == 4


BAD_REQUESTS = [       # (body, what the refusal says)
    ("next", "a work-queue request is a map with an 'op' field, one of dead, extend, "
             "metrics, next, put, wake"),
    ({"max": 1}, "a map with an 'op' field"),
    ({"op": "steal"}, "unknown work-queue operation 'steal'; known: dead, extend, "
                      "metrics, next, put, wake"),
    ({"op": "put"}, "work-queue operation 'put' needs the field 'items' (a list)"),
    ({"op": "put", "items": [[1, 2]]},
     "field 'items' of work-queue operation 'put' must be a list of [key (a string), data]"),
    ({"op": "put", "items": {"a": 1}}, "must be a list, got dict"),
    ({"op": "next", "max": "3"}, "field 'max' of work-queue operation 'next' must be an "
                                 "integer, got str"),
    ({"op": "next", "max": True}, "field 'max' of work-queue operation 'next' must be an "
                                  "integer, got bool"),
    ({"op": "next", "wait": [1]}, "must be a number, got list"),
    ({"op": "next", "max": 0, "done": [["a", 1]]},
     "field 'done' of work-queue operation 'next' must be a list of [key (a string), "
     "result, seconds (a number)]"),
    ({"op": "next", "max": 0, "failed": [["a", "t", "boom"]]},
     "must be a list of [key (a string), token (an integer), reason]"),
    ({"op": "extend", "leases": [["a"]]}, "must be a list of [key (a string), token"),
]


@pytest.mark.parametrize(("body", "says"), BAD_REQUESTS)
def test_the_table_refuses_malformed_requests_saying_what_to_send(body: Any,
                                                                  says: str) -> None:
    with pytest.raises(Rejected) as refused:
        QUEUE.parse(body)
    assert says in str(refused.value)


def test_bad_requests_are_refused_with_a_clear_error(registry: posa.LocalRegistry) -> None:
    with WorkQueue("jobs/b", registry=registry) as queue, \
            posa.Peer("jobs/b/x", registry=registry) as peer:
        for body, says in BAD_REQUESTS:
            if isinstance(body, dict) and body.get("op") == "extend":
                continue                              # one-way: no answer to refuse
            with pytest.raises(Rejected) as refused:
                peer.request("jobs/b", body)
            assert says in str(refused.value)
        assert peer.request("jobs/b", {"op": "put", "items": [["k", 1]]}) == {
            "accepted": 1, "added": 1}                 # and it goes on serving
        assert queue.metrics()["pending"] == 1


def test_clients_build_requests_from_the_table() -> None:
    done, failed = [["a", 1, 0.5]], [["b", 7, "boom"]]
    assert next_request(2, 1.0, done, failed) == QUEUE.request(
        "next", max=2, wait=1.0, done=done, failed=failed)
    assert QUEUE.parse(next_request(2, 1.0, done, failed))[1] == {
        "max": 2, "wait": 1.0, "done": done, "failed": failed}
    with pytest.raises(TypeError, match="no field"):
        QUEUE.request("put", item=[])
    op, fields = QUEUE.parse({"op": "next"})
    assert (op.name, fields["max"], fields["wait"], list(fields["done"])) == (
        "next", 1, 0.0, [])


def test_the_protocol_doc_shows_the_table() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("## The work queue's requests"):]
    assert QUEUE.describe() in section, "regenerate it: print(QUEUE.describe())"


def test_progress_rendering() -> None:
    line = render_progress({"name": "q", "total": 200, "done": 50, "dead": 0,
                            "rate": 25.0, "in_flight": 3, "workers": 2}, width=10)
    assert line == "q [##........] 50/200 25% 25/s eta 6s in flight 3 workers 2 dead 0"
    assert progress_bar(3, 8, width=8) == "[###.....] 3/8 38%"
    assert progress_bar(0, 0, width=4) == "[....] 0/0 0%"


def docs_blocks() -> list[str]:
    text = (ROOT / "docs" / "work.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(docs_blocks())))
def test_every_code_block_of_the_docs_runs(index: int) -> None:
    block = Proc.python(docs_blocks()[index])
    try:
        assert block.popen.wait(60) == 0, block.stderr_now()
    finally:
        block.close()


def test_work_queue_example_runs() -> None:
    demo = Proc([sys.executable, "examples/work_queue.py"])
    try:
        assert demo.line(timeout=60).startswith("work/wordcount [" + "#" * 30 + "] 300/300")
        assert "each file done once" in demo.line()
        assert demo.popen.wait(30) == 0
    finally:
        demo.close()


# ---------------------------------------------------------------------------
# workers in real processes
# ---------------------------------------------------------------------------

WORKER = """
import sys, time, posa
from posa.work.worker import Worker
name, queue, dispatcher = sys.argv[1:4]
registry = posa.RegistryClient(dispatcher)

def work(item):
    print("item", item.key, flush=True)
    end = time.perf_counter() + 0.002          # a little CPU per item
    while time.perf_counter() < end:
        pass
    return item.data * 2

worker = Worker(name, queue, work, registry=registry, listen="tcp://127.0.0.1:0")
print("ready", flush=True)
worker.run()
"""


def test_three_worker_processes_one_killed_mid_item_each_item_done_once(
        dispatcher: str) -> None:
    done = Collector()
    procs: list[Proc] = []
    with posa.RegistryClient(dispatcher) as registry, \
            WorkQueue("jobs/mp", registry=registry, listen="tcp://127.0.0.1:0",
                      visibility=1.0, on_done=done) as queue:
        try:
            for i in range(3):
                procs.append(Proc.python(WORKER, f"jobs/mp/w{i}", "jobs/mp", dispatcher))
                procs[-1].expect("ready")
            queue.put({str(i): i for i in range(1000)})
            victim = procs[0]
            for _ in range(20):                    # let it take a few items, then kill it
                victim.expect("item")
            victim.kill()
            done.wait(1000, timeout=60)
            metrics = queue.join(30)
        finally:
            for proc in procs:
                proc.close()
    keys = [key for key, _ in done.calls]
    assert sorted(keys, key=int) == [str(i) for i in range(1000)], "lost or duplicated"
    assert all(result == 2 * int(key) for key, result in done.calls)
    assert (metrics["done"], metrics["dead"], metrics["pending"]) == (1000, 0, 0)
    print(f"killed worker: {metrics['expired']} lease(s) expired, "
          f"{metrics['redelivered']} redelivered, {metrics['duplicates']} duplicate(s)")


def test_progress_command_draws_a_bar_until_done(dispatcher: str) -> None:
    with posa.RegistryClient(dispatcher) as registry, \
            WorkQueue("jobs/p", registry=registry, listen="tcp://127.0.0.1:0") as queue:
        queue.put({"a": 1, "b": 2})
        once = Proc.posa("progress", "jobs/p", "--dispatcher", dispatcher, "--once")
        try:
            assert once.line().startswith("jobs/p [" + "." * 30 + "] 0/2 0% ")
            assert once.popen.wait(20) == 0
        finally:
            once.close()
        follow = Proc.posa("progress", "jobs/p", "--dispatcher", dispatcher,
                           "--interval", "0.05")
        try:
            assert " 0/2 " in follow.line()
            with Worker("jobs/p/w", "jobs/p", lambda item: item.data, registry=registry,
                        listen="tcp://127.0.0.1:0") as worker:
                worker.start()
                follow.expect("jobs/p [" + "#" * 30 + "] 2/2 100% ")
                assert follow.popen.wait(20) == 0          # it ends when all is done
        finally:
            follow.close()
