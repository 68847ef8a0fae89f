"""A work queue's store: the journal a state keeps, its two stores (memory and
SQLite) held to one contract, and queues restarted on a store in one process.

The crash test with real processes is tests/test_workqueue_crash.py; drain,
credentials and ``posa worker`` are in tests/test_workqueue_cli.py."""
from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

import posa
from posa.errors import PosaError
from posa.work.queue import WorkQueue
from posa.work.sources import DirectorySource
from posa.work.sqlitestore import SqliteStore
from posa.work.state import DEAD, WorkState
from posa.work.store import MemoryStore
from posa.work.worker import Item, Worker
from tests.test_workqueue import Collector, WorkStateMachine

pytestmark = pytest.mark.timeout(120)


class JournaledStateMachine(WorkStateMachine):
    """The work-state machine with a journal: at any point its changes, written
    to a MemoryStore and to a SqliteStore, give equal snapshots, and a state
    restored from them holds every key in the same status."""

    def __init__(self) -> None:
        super().__init__()
        self.state = self._new_state()
        self._dir = tempfile.mkdtemp(prefix="posa-store-")
        self.memory = MemoryStore()
        self.sqlite = SqliteStore(Path(self._dir) / "q.db")

    def _new_state(self) -> WorkState:
        return WorkState(visibility=5.0, max_in_flight=4, max_attempts=3, capacity=12,
                         max_dead=2, journal=True)

    @rule(key=st.sampled_from([f"k{i}" for i in range(16)]))
    def requeue(self, key: str) -> None:
        if self.state.requeue_dead(key):
            assert self.state.status(key) == "pending"

    @rule()
    def restart(self) -> None:
        changes = self.state.take_changes()
        self.memory.write(changes)
        self.sqlite.write(changes)
        snapshot = self.memory.load()
        assert self.sqlite.load() == snapshot
        restored = self._new_state()
        restored.restore(snapshot, self.now)
        for key in self.added:
            assert restored.status(key) == self.state.status(key), key
        for what in ("pending", "leased", "done", "dead", "total"):
            assert restored.counts()[what] == self.state.counts()[what], what
        assert restored.dead_letters() == self.state.dead_letters()
        self.state = restored

    def teardown(self) -> None:
        self.sqlite.close()
        shutil.rmtree(self._dir, ignore_errors=True)


TestJournaledStateMachine = JournaledStateMachine.TestCase
TestJournaledStateMachine.settings = settings(max_examples=60, stateful_step_count=50,
                                              deadline=None)


def test_a_state_without_a_journal_records_nothing() -> None:
    state = WorkState()
    state.add("a", 1)
    state.lease("w", 0.0)
    assert state.ack("a") == "done"
    assert state.take_changes() == [] and state.journal is None


def test_a_restored_lease_runs_a_visibility_from_the_restart_under_its_token() -> None:
    state = WorkState(visibility=10.0, journal=True)
    state.add("a", 1)
    (lease,) = state.lease("w1", now=0.0)
    store = MemoryStore()
    store.write(state.take_changes())
    restored = WorkState(visibility=10.0, journal=True)
    restored.restore(store.load(), now=500.0)
    assert restored.status("a") == "leased" and restored.next_deadline() == 510.0
    assert restored.extend("a", lease.token, 505.0)        # its worker carries on
    assert restored.expire(514.0) == []
    assert restored.expire(515.0) == [("a", "pending")]     # then it is handed out again
    (again,) = restored.lease("w2", now=515.0)
    assert again.attempt == 2 and again.token > lease.token


def test_a_store_file_serves_one_queue_at_a_time(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "q.db")
    try:
        with pytest.raises(PosaError, match="in use by another queue"):
            SqliteStore(tmp_path / "q.db")
    finally:
        first.close()
    SqliteStore(tmp_path / "q.db").close()                 # free again once closed
    with pytest.raises(ValueError, match="NORMAL, FULL"):
        SqliteStore(tmp_path / "q.db", synchronous="OFF")


def test_data_of_every_kind_comes_back_from_the_file(tmp_path: Path) -> None:
    data = {"a": b"\x00raw", "b": "text", "c": {"nested": [1, 2.5, None, True]}, "d": 7}
    store = SqliteStore(tmp_path / "q.db")
    store.write([("add", key, value) for key, value in data.items()])
    store.close()
    store = SqliteStore(tmp_path / "q.db")
    assert {item.key: item.data for item in store.load().items} == data
    store.close()


# ---------------------------------------------------------------------------
# queues restarted on a store, in this process
# ---------------------------------------------------------------------------

@pytest.fixture
def registry() -> Any:
    with posa.LocalRegistry() as reg:
        yield reg


def _work(item: Item) -> Any:
    if item.data == "poison":
        raise ValueError("cannot digest poison")
    return item.data * 2


def test_a_restarted_queue_keeps_its_dead_letters_and_done_keys(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    store = tmp_path / "q.db"
    with WorkQueue("jobs/st", registry=registry, store=store, max_attempts=2) as queue, \
            Worker("jobs/st/w", "jobs/st", _work, registry=registry) as worker:
        queue.put({"a": 1, "b": 2, "p": "poison"})
        worker.start()
        queue.join(30)
    with WorkQueue("jobs/st", registry=registry, store=store, max_attempts=2) as again:
        assert [(k, d, n) for k, d, n, _ in again.dead_letters()] == [("p", "poison", 2)]
        assert "cannot digest poison" in again.dead_letters()[0][3]
        assert again.put({"a": 1, "b": 2}) == 0                 # done keys: ignored
        metrics = again.metrics()
    assert (metrics["done"], metrics["dead"], metrics["pending"]) == (2, 1, 0)


def test_a_memory_store_carries_items_to_a_new_queue_in_the_process(
        registry: posa.LocalRegistry) -> None:
    store = MemoryStore()
    with WorkQueue("jobs/mem", registry=registry, store=store) as queue:
        queue.put({"a": 1, "b": 2})
    done = Collector()
    with WorkQueue("jobs/mem", registry=registry, store=store, on_done=done) as again, \
            Worker("jobs/mem/w", "jobs/mem", _work, registry=registry) as worker:
        worker.start()
        again.join(30)
    assert sorted(done.calls) == [("a", 2), ("b", 4)]
    assert store.items == {} and store.writes >= 3


def test_a_directory_queue_does_not_redo_done_files_after_a_restart(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    for i in range(5):
        (media / f"v{i}.mp4").write_bytes(b"x" * i)
    executed: Counter[str] = Counter()
    lock = threading.Lock()

    def thumbnail(item: Item) -> int:
        with lock:
            executed[item.key] += 1
        return int(item.data["size"])

    def run_once() -> dict[str, Any]:
        with WorkQueue("jobs/dir", registry=registry, store=tmp_path / "q.db",
                       source=DirectorySource(media, "*.mp4")) as queue, \
                Worker("jobs/dir/w", "jobs/dir", thumbnail, registry=registry) as worker:
            worker.start()
            return queue.join(30)            # listed once, nothing pending or in flight

    assert run_once()["done"] == 5
    (media / "v9.mp4").write_bytes(b"new")
    metrics = run_once()
    assert metrics["done"] == 6 and metrics["total"] == 6
    assert executed == Counter({f"v{i}.mp4": 1 for i in (0, 1, 2, 3, 4, 9)})


def test_no_put_is_acknowledged_while_its_item_is_not_stored(
        registry: posa.LocalRegistry) -> None:
    class Flaky(MemoryStore):
        failures = 1

        def write(self, changes: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise PosaError("disk full")
            super().write(changes)

    store = Flaky()
    with WorkQueue("jobs/flaky", registry=registry, store=store), \
            posa.Peer("jobs/flaky/p", registry=registry) as producer:
        with pytest.raises(PosaError, match="disk full"):
            posa.submit(producer, "jobs/flaky", {"a": 1}, timeout=5)
        assert "a" not in store.items
        assert posa.submit(producer, "jobs/flaky", {"a": 1}, timeout=5) == 0   # known ...
        assert "a" in store.items                                             # ... and stored


def test_dead_letters_survive_with_their_reason(tmp_path: Path) -> None:
    state = WorkState(max_attempts=1, journal=True)
    state.add("x", {"v": 1})
    (lease,) = state.lease("w", 0.0)
    assert state.fail("x", lease.token, "boom") == DEAD
    store = SqliteStore(tmp_path / "q.db")
    store.write(state.take_changes())
    letter = store.load().dead[0]
    store.close()
    assert (letter.key, letter.data, letter.attempts, letter.reason) == ("x", {"v": 1}, 1,
                                                                         "boom")
