"""A work queue's store attacked the way a disk and an operator attack it: the
file cannot grow, another process holds the database, a second queue is started
on the same file, the file is no queue's store or cannot be written. A put the
store did not take is refused to its producer, saying why; the queue keeps
running and takes items again once the store does; after a SIGKILL every
acknowledged item is there."""
from __future__ import annotations

import logging
import random
import resource
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import posa
from posa.channel.store import SqliteStore as ChannelStore
from posa.errors import PosaError
from posa.work.queue import WorkQueue
from posa.work.sqlitestore import SqliteStore
from posa.work.store import Change, MemoryStore
from posa.work.worker import Item, Worker
from tests.support import (
    Proc,
    damage,
    read_only,
    run_in_a_file_that_cannot_grow,
    second_owner_says,
    wait_until,
)


class Broken(MemoryStore):
    """A store whose writes fail (as on a full disk) while ``broken``."""

    def __init__(self) -> None:
        super().__init__()
        self.broken, self.attempts = True, 0

    def write(self, changes: Sequence[Change]) -> None:
        self.attempts += 1
        if self.broken:
            raise PosaError("the queue store could not be written (disk I/O error)")
        super().write(changes)


def test_a_store_that_keeps_failing_is_logged_once_not_at_every_tick(
        registry: posa.LocalRegistry, caplog: pytest.LogCaptureFixture) -> None:
    """Each tick (20 a second) tried the write again and logged a traceback."""
    store = Broken()
    caplog.set_level(logging.ERROR, logger="posa.work.queue")
    with WorkQueue("jobs/failing", registry=registry, store=store), \
            posa.Peer("jobs/failing/producer", registry=registry) as producer:
        with pytest.raises(PosaError, match="could not be written"):
            posa.submit(producer, "jobs/failing", {"a": 1}, timeout=5)
        wait_until(lambda: store.attempts >= 10, what="the ticks' writes")
        said = [r for r in caplog.records if "not stored" in r.getMessage()]
        assert len(said) == 1 and said[0].exc_info is None, said
        store.broken = False
        wait_until(lambda: "a" in store.items, what="the item stored once there is room")


def _queue_in_a_small_file(name: str, dispatcher: str, store: Path) -> Proc:
    """``posa queue`` that gets EFBIG (not SIGXFSZ) when a file grows past its limit."""
    proc = Proc.python(f"""
        import runpy, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        sys.argv = ["posa", "queue", {name!r}, "--dispatcher", {dispatcher!r},
                    "--listen", "tcp://127.0.0.1:0", "--store", {str(store)!r},
                    "--credential", "q-secret"]
        runpy.run_module("posa", run_name="__main__")
    """)
    proc.expect(f"queue {name} at", timeout=30)
    return proc


def test_a_completion_acknowledged_while_the_store_failed_is_reported_once_stored(
        registry: posa.LocalRegistry) -> None:
    """The worker's acknowledgement failed with the store; its retry found the key
    done (in memory) and ``on_done`` never ran: the result was lost."""
    store = Broken()
    store.broken = False
    results: list[tuple[str, Any]] = []
    started, release = threading.Event(), threading.Event()

    def work(item: Item) -> Any:
        started.set()
        release.wait(20)
        return item.data * 2

    with WorkQueue("jobs/results", registry=registry, store=store,
                   on_done=lambda key, result: results.append((key, result))) as queue:
        queue.put({"a": 21})
        with Worker("jobs/results/w", "jobs/results", work, registry=registry,
                    timeout=1.0).start():
            assert started.wait(20)
            store.broken = True                # the acknowledgement meets a full disk
            tries = store.attempts
            release.set()
            wait_until(lambda: store.attempts > tries + 2, what="the ack's failed writes")
            assert results == []               # not stored: not reported
            store.broken = False
            wait_until(lambda: results, what="on_done once the completion is stored")
            assert results == [("a", 42)] and store.finished == {"a": "done"}


@pytest.mark.timeout(120)
def test_a_queue_whose_file_cannot_grow_refuses_puts_saying_so_then_takes_them(
        dispatcher: str, tmp_path: Path) -> None:
    """A real ``posa queue`` whose store stops growing (RLIMIT_FSIZE: EFBIG, as a
    full disk). The refusal said "cannot rollback - no transaction is active",
    hiding the cause."""
    name, store = "jobs/small", tmp_path / "q.db"
    queue = _queue_in_a_small_file(name, dispatcher, store)
    pad = "x" * 20000
    acknowledged: list[str] = []
    refusals: list[str] = []
    try:
        with posa.RegistryClient(dispatcher) as registry, \
                posa.Peer("jobs/small/producer", registry=registry) as producer:
            for i in range(10):
                posa.submit(producer, name, {f"k{i}": pad}, timeout=10)
                acknowledged.append(f"k{i}")
            files = [store, Path(f"{store}-wal")]
            limit = max(f.stat().st_size for f in files if f.exists()) + 65536
            resource.prlimit(queue.popen.pid, resource.RLIMIT_FSIZE,
                             (limit, resource.RLIM_INFINITY))
            for i in range(10, 60):
                try:
                    posa.submit(producer, name, {f"k{i}": pad}, timeout=10)
                    acknowledged.append(f"k{i}")
                except posa.PosaError as exc:
                    refusals.append(str(exc))
            assert refusals and len(acknowledged) < 60 and queue.popen.poll() is None
            assert "could not be written" in refusals[0] and "disk" in refusals[0]
            assert "nothing of this batch was stored" in refusals[0]
            resource.prlimit(queue.popen.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            posa.submit(producer, name, {f"k{i}": pad for i in range(60)}, timeout=20)
            posa.submit(producer, name, {"last": 1}, timeout=20)   # after the rest
        queue.kill()
        queue.close()
        opened = SqliteStore(store)
        try:
            keys = {item.key for item in opened.load().items}
        finally:
            opened.close()
        assert set(acknowledged) <= keys
        assert keys == {f"k{i}" for i in range(60)} | {"last"}
    finally:
        queue.close()


def test_a_store_another_process_holds_is_refused_at_once_and_one_held_is_not_taken(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    SqliteStore(path).close()
    holder = Proc.python(f"""
        import sqlite3, sys
        db = sqlite3.connect({path!r}, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        print("holding", flush=True)
        sys.stdin.readline()
    """)
    try:
        holder.expect("holding")
        with pytest.raises(posa.PosaError, match="held by another process; stop it, or "
                                                  "give this queue a file of its own"):
            SqliteStore(path)
    finally:
        holder.close()
    store = SqliteStore(path)
    try:
        intruder = sqlite3.connect(path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            intruder.execute("BEGIN IMMEDIATE")
        intruder.close()
        store.write([("add", "a", 1)])
    finally:
        store.close()


def test_a_file_that_is_no_queue_store_is_refused_at_start_saying_what_to_do(
        tmp_path: Path) -> None:
    """A channel's store or another program's database was taken: the queue's
    tables were added to it."""
    channel = tmp_path / "channel.db"
    ChannelStore(str(channel)).close()
    with pytest.raises(posa.PosaError, match="it is a channel store, not a queue store; "
                                              "give the queue a file of its own"):
        SqliteStore(channel)
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE accounts (id INTEGER, owner TEXT)")
    with pytest.raises(posa.PosaError, match=r"holds tables a queue store does not "
                                              r"\(accounts\)"):
        SqliteStore(other)
    with closing(sqlite3.connect(other)) as db, db:
        assert [name for (name,) in db.execute("SELECT name FROM sqlite_master")] == [
            "accounts"]                             # left as it was
    older = tmp_path / "older.db"
    with closing(sqlite3.connect(older)) as db, db:
        db.execute("CREATE TABLE items (key TEXT PRIMARY KEY, seq INTEGER, data BLOB)")
    with pytest.raises(posa.PosaError, match="its table items lacks the columns "
                                              "attempts, token, worker"):
        SqliteStore(older)
    with pytest.raises(posa.PosaError, match="in a directory that exists"):
        SqliteStore(tmp_path / "missing" / "q.db")


def test_a_store_written_before_stores_were_marked_opens_with_its_items(
        tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    store.write([("add", "a", 1), ("add", "b", 2), ("done", "a")])
    store.close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA user_version = 0")      # as an older posa left it
    again = SqliteStore(path)
    try:
        assert [item.key for item in again.load().items] == ["b"]
        assert again.done_keys() == {"a"}
    finally:
        again.close()


def test_a_store_on_a_full_disk_is_refused_at_start_saying_so(tmp_path: Path) -> None:
    """The refusal said to give the queue a file of its own."""
    printed = run_in_a_file_that_cannot_grow(tmp_path, (
        "import posa\n"
        "from posa.work.sqlitestore import SqliteStore\n"
        "try:\n"
        "    SqliteStore('q.db')\n"
        "except posa.PosaError as exc:\n"
        "    print(exc)\n"))
    assert "could not be written" in printed and "disk" in printed, printed
    assert "Make room, then start again" in printed


def test_a_damaged_store_is_refused_at_start_saying_what_to_do(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    """The refusal said to give the queue a file of its own."""
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    for i in range(300):
        store.write([("add", f"k{i}", b"x" * 3000)])
    store.close()
    damage(path)
    with pytest.raises(posa.PosaError, match=r"is damaged .*\.recover"):
        WorkQueue("jobs/damaged", registry=registry, store=path)


def test_a_store_the_process_may_not_write_is_refused_at_start(tmp_path: Path) -> None:
    """A read-only file was opened (the first put failed); on a read-only mount
    the refusal said nothing of what to do."""
    path = tmp_path / "q.db"
    SqliteStore(path).close()
    printed = read_only(tmp_path, "import posa\n"
                                  "from posa.work.sqlitestore import SqliteStore\n"
                                  "try:\n"
                                  f"    SqliteStore({str(path)!r})\n"
                                  "    print('opened')\n"
                                  "except posa.PosaError as exc:\n"
                                  "    print(exc)\n")
    assert "cannot be written" in printed and "writable" in printed, printed


def test_a_second_posa_queue_on_a_store_exits_saying_why(dispatcher: str,
                                                         tmp_path: Path) -> None:
    err = second_owner_says("queue", dispatcher, tmp_path / "q.db")
    assert "in use by another queue" in err and "Traceback" not in err, err


PRODUCER = """
import sys, posa
queue, dispatcher, batches, size, me = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    int(sys.argv[4]), sys.argv[5]
with posa.RegistryClient(dispatcher) as registry, \\
        posa.Peer(me, registry=registry, listen="tcp://127.0.0.1:0") as peer:
    for b in range(batches):
        posa.submit(peer, queue, {f"{me}b{b:03d}-{i:05d}": i for i in range(size)},
                    timeout=20, batch=size)
        print("acked", b, flush=True)
"""


@pytest.mark.timeout(120)
def test_a_queue_killed_amid_large_batches_keeps_each_acknowledged_one_whole(
        dispatcher: str, tmp_path: Path) -> None:
    """SIGKILL while a producer puts batches of 3000 items back to back (one
    request, one transaction each), at a seeded random batch (two rounds): after it, every
    acknowledged batch is stored, and every batch is stored whole or not at all."""
    seed = random.SystemRandom().randrange(10**6)
    print(f"seed {seed}")
    rng = random.Random(seed)
    name, store, size, batches = "jobs/large", tmp_path / "q.db", 3000, 6
    for round_ in range(2):
        queue = Proc.posa("queue", name, "--dispatcher", dispatcher, "--listen",
                          "tcp://127.0.0.1:0", "--store", str(store), "--credential",
                          "q-secret")
        producer = None
        try:
            queue.expect(f"queue {name} at", timeout=30)
            producer = Proc.python(PRODUCER, name, dispatcher, str(batches), str(size),
                                   f"jobs/producer{round_}")
            kill_after = rng.randrange(1, batches)
            acked = [int(producer.expect("acked", timeout=30)) for _ in range(kill_after)]
            queue.kill()
        finally:
            queue.close()
            if producer is not None:
                producer.close()
        opened = SqliteStore(store)
        try:
            keys = [str(item.key) for item in opened.load().items]
        finally:
            opened.close()
        per_batch = {b: sum(1 for key in keys if key.startswith(f"jobs/producer{round_}b{b:03d}-"))
                     for b in range(batches)}
        print(f"round {round_}: killed after batch {acked[-1]} acknowledged; stored "
              f"{per_batch}")
        assert all(per_batch[b] == size for b in acked), f"seed {seed}: {per_batch}"
        assert set(per_batch.values()) <= {0, size}, f"seed {seed}: a batch in part"
        assert len(keys) == len(set(keys))
