"""A channel's store attacked the way a disk and an operator attack it: the file
cannot grow, a write fails half-way, another process holds the database, a
second channel is started on the same file, the file is not a channel's store.
An event acknowledged is stored; one not stored is not acknowledged; the channel
keeps running and takes events again once the store does."""
from __future__ import annotations

import logging
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import posa
from posa.channel.protocol import Publication
from posa.channel.publisher import Publisher
from posa.channel.run import Run
from posa.channel.service import EventChannel
from posa.channel.store import SqliteStore
from posa.channel.subscriber import Subscriber
from posa.work.sqlitestore import SqliteStore as QueueStore
from tests.support import (
    Proc,
    damage,
    read_only,
    run_in_a_file_that_cannot_grow,
    second_owner_says,
    wait_until,
)


class FlakyStore(SqliteStore):
    """A store whose writes fail (as a full disk fails them) while ``broken``."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.broken: set[str] = set()

    def journal(self, pubs: Sequence[Publication]) -> list[int]:
        if "journal" in self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        return super().journal(pubs)

    def record(self, runs: Sequence[tuple[Run, float, int | None, int | None]],
               done: Sequence[tuple[int, int]], seq: int,
               whole: Sequence[tuple[Run, float, int | None, int | None]] = ()) -> None:
        if "record" in self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        super().record(runs, done, seq, whole)

    def trim(self, first_seq: int) -> None:
        self.trims = getattr(self, "trims", 0) + 1
        if "trim" in self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        super().trim(first_seq)


def _events(sub: Subscriber, n: int) -> list[posa.Event]:
    got: list[posa.Event] = []
    while len(got) < n:
        got += sub.receive_many(n - len(got), timeout=20)
    return got


def _bodies(sub: Subscriber, n: int) -> list[Any]:
    return [event.body for event in _events(sub, n)]


def test_an_event_the_store_did_not_take_is_not_acknowledged_until_it_does(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    """The turn's journal failed, was logged, and its acknowledgements went out."""
    store = FlakyStore(str(tmp_path / "c.db"))
    store.broken = {"journal"}
    with EventChannel("events/full", registry=registry, store=store) as channel, \
            Publisher("events/full", registry=registry) as pub:
        for i in range(5):
            pub.publish("t", i)
        with pytest.raises(posa.Timeout):
            pub.flush(1.5)
        assert pub.sent == 0 and channel.keeping is not None and channel.keeping.errors
        store.broken = set()                       # room again
        pub.flush(20)
        assert pub.sent == 5
        with Subscriber("events/full", registry=registry, from_seq=1) as sub:
            assert _bodies(sub, 5) == [0, 1, 2, 3, 4]


def test_upstream_events_the_store_did_not_take_are_not_taken_until_it_does(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    """A chained channel took an upstream's events its journal had refused (the
    error logged, the events published unjournaled); fails without the wait."""
    store = FlakyStore(str(tmp_path / "c.db"))
    store.broken = {"journal"}
    with EventChannel("events/up", registry=registry) as up, \
            EventChannel("events/down", registry=registry, store=store,
                         upstream=["events/up"], upstream_policy="block") as down, \
            Publisher("events/up", registry=registry) as pub:
        # (the chain's subscriber has its name before the upstream takes its subscription)
        wait_until(lambda: up.stats()["subscriptions"], what="the chain's subscription")
        for i in range(5):
            pub.publish("t", i)
        pub.flush(20)
        keeping = down.keeping
        assert keeping is not None
        wait_until(lambda: keeping.errors >= 2, what="the journal tried again")
        assert down.seq == 0                       # nothing taken unstored
        store.broken = set()
        with Subscriber("events/down", registry=registry, from_seq=1) as sub:
            assert _bodies(sub, 5) == [0, 1, 2, 3, 4]
        assert down.seq == 5


def test_seqs_the_store_did_not_keep_are_held_back_until_it_keeps_them(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    """A failed numbering let subscribers take seqs a restart gives to other events."""
    path = str(tmp_path / "c.db")
    store = FlakyStore(path)
    with EventChannel("events/held", registry=registry, store=store) as channel, \
            Publisher("events/held", registry=registry) as pub, \
            Subscriber("events/held", registry=registry) as sub:
        for i in range(3):
            pub.publish("t", i)
        assert _bodies(sub, 3) == [0, 1, 2]
        store.broken = {"record"}
        for i in range(3, 6):
            pub.publish("t", i)
        pub.flush(20)                              # journaled: acknowledged
        keeping = channel.keeping
        assert keeping is not None
        wait_until(lambda: channel.seq == 6 and keeping.errors > 0, what="numbering fails")
        assert channel.core.safe == 3              # nothing after seq 3 may be taken
        store.broken = set()
        assert _bodies(sub, 3) == [3, 4, 5]
    with EventChannel("events/held", registry=registry, store=path) as again, \
            Subscriber("events/held", registry=registry, from_seq=1) as late:
        assert again.seq == 6
        assert _bodies(late, 6) == list(range(6))


def test_a_restart_whose_numbering_fails_shows_subscribers_only_what_was_kept(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    """Events journaled before a crash are numbered at the restart; when that
    failed, nothing held them back (``core.safe`` was still "all")."""
    path = str(tmp_path / "c.db")
    store = SqliteStore(path)
    store.load()
    store.journal([Publication("t", bodies=["a", "b"], pid=5, pseq=1)])
    store.close()
    flaky = FlakyStore(path)
    flaky.broken = {"record"}
    with EventChannel("events/restart", registry=registry, store=flaky) as channel:
        assert channel.seq == 2 and channel.core.safe == 0
        flaky.broken = set()
        with Subscriber("events/restart", registry=registry, from_seq=1) as sub:
            assert _bodies(sub, 2) == ["a", "b"]


def test_a_trim_that_keeps_failing_is_logged_once_not_at_every_sweep(
        registry: posa.LocalRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
        ) -> None:
    """Each sweep (twice a second) logged the failure again."""
    store = FlakyStore(str(tmp_path / "c.db"))
    store.broken = {"trim"}
    caplog.set_level(logging.ERROR, logger="posa.channel.service")
    with EventChannel("events/trim", registry=registry, store=store, history=2), \
            Publisher("events/trim", registry=registry) as pub:
        for i in range(5):
            pub.publish("t", i)
        pub.flush(20)
        wait_until(lambda: getattr(store, "trims", 0) >= 4, what="sweeps trying the trim")
        said = [r for r in caplog.records if "not trimmed" in r.getMessage()]
        assert len(said) == 1, said
        store.broken = set()
        tries = store.trims
        wait_until(lambda: store.trims > tries, what="the trim once there is room")


def test_a_store_on_a_full_disk_is_refused_at_start_saying_so(tmp_path: Path) -> None:
    """The refusal said to give the channel a file of its own."""
    printed = run_in_a_file_that_cannot_grow(tmp_path, (
        "from posa.channel.store import SqliteStore\n"
        "try:\n"
        "    SqliteStore('c.db')\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"))
    assert "could not be written" in printed and "disk" in printed, printed
    assert "Make room, then start again" in printed


def test_a_write_that_fails_half_way_does_not_stop_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its transaction stayed open: every later write failed ("cannot start a
    transaction within a transaction") though the disk had room again."""
    import posa.channel.store as module
    store = SqliteStore(str(tmp_path / "c.db"))
    store.load()
    (entry,) = store.journal([Publication("t", bodies=["a"])])
    run = Run(1, ["t"], bodies=["a"])

    def fails(run: Run) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(module, "_size", fails)
    with pytest.raises(sqlite3.OperationalError):
        store.record([], [(entry, -2)], 1, [(run, 0.0, None, None)])
    monkeypatch.undo()
    assert store.journal([Publication("t", bodies=["b"])])     # the store goes on
    store.record([], [(entry, -2)], 1, [(run, 0.0, None, None)])
    assert store.size() > 0
    store.close()


def test_a_publisher_id_beyond_sqlites_integers_neither_fails_the_turn_nor_the_store(
        tmp_path: Path) -> None:
    """OverflowError in the journal's transaction: the turn was not kept, and
    the store refused every later write."""
    store = SqliteStore(str(tmp_path / "c.db"))
    store.load()
    assert len(store.journal([Publication("t", bodies=["a"], pid=2**70, pseq=2**64),
                              Publication("t", bodies=["b"], pid=1, pseq=1)])) == 2
    assert store.journal([Publication("t", bodies=["c"])])
    assert [pub.pid for _, pub in store.load().pending] == [None, 1, None]
    store.close()


def test_a_store_file_has_one_owner_and_no_other_process_blocks_its_writes(
        tmp_path: Path) -> None:
    """A second channel opened the file too (two owners numbering one history);
    a process holding a write transaction made each journal wait 5 s, then fail."""
    path = str(tmp_path / "c.db")
    store = SqliteStore(path)
    store.load()
    with pytest.raises(ValueError, match="in use by another channel"):
        SqliteStore(path)
    holder = subprocess.run(
        [sys.executable, "-c", f"import sqlite3; db = sqlite3.connect({path!r}, timeout=0,"
         " isolation_level=None); db.execute('BEGIN IMMEDIATE')"],
        capture_output=True, text=True, timeout=30)
    assert holder.returncode != 0 and "locked" in holder.stderr
    assert store.journal([Publication("t", bodies=["a"])])
    store.close()
    SqliteStore(path).close()                  # free again once closed


def test_a_channel_started_while_another_process_holds_its_store_is_refused_at_once(
        tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
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
        with pytest.raises(ValueError, match="held by another process"):
            SqliteStore(path)
    finally:
        holder.close()


def test_a_file_that_is_no_channel_store_is_refused_at_start_saying_what_to_do(
        tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all " * 500)
    with pytest.raises(ValueError, match="is not a database; give the channel a file of "
                                         "its own"):
        SqliteStore(str(garbage))
    assert garbage.read_bytes() == b"not sqlite at all " * 500
    queue = tmp_path / "queue.db"
    QueueStore(queue).close()
    with pytest.raises(ValueError, match="it is a queue store, not a channel store"):
        SqliteStore(str(queue))
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE accounts (id INTEGER, owner TEXT)")
    with pytest.raises(ValueError, match="holds tables a channel store does not "
                                         r"\(accounts\)"):
        SqliteStore(str(other))
    with pytest.raises(ValueError, match="in a directory that exists"):
        SqliteStore(str(tmp_path / "missing" / "c.db"))


def test_a_damaged_store_is_refused_at_start_saying_what_to_do(dispatcher: str,
                                                               tmp_path: Path) -> None:
    """``load`` raised sqlite3.DatabaseError: a traceback from ``posa channel``."""
    path = tmp_path / "c.db"
    store = SqliteStore(str(path))
    store.load()
    for _ in range(300):
        store.journal([Publication("t", bodies=["x" * 3000])])
    store.close()
    damage(path)
    channel = Proc.posa("channel", "events/damaged", "--dispatcher", dispatcher,
                        "--listen", "tcp://127.0.0.1:0", "--store", str(path))
    try:
        assert channel.popen.wait(30) == 1
        err = channel.stderr_now()
        assert "is damaged" in err and ".recover" in err and "Traceback" not in err, err
    finally:
        channel.close()


def test_a_store_the_process_may_not_write_is_refused_at_start(tmp_path: Path) -> None:
    """A read-only file was opened (its first publication failed to be journaled);
    on a read-only mount the refusal said nothing of writing."""
    path = tmp_path / "c.db"
    SqliteStore(str(path)).close()
    printed = read_only(tmp_path, "from posa.channel.store import SqliteStore\n"
                                  "try:\n"
                                  f"    SqliteStore({str(path)!r}).journal([])\n"
                                  "    print('opened')\n"
                                  "except ValueError as exc:\n"
                                  "    print(exc)\n")
    assert "cannot be written" in printed and "writable" in printed, printed


def _channel_in_a_small_file(name: str, dispatcher: str, store: Path, token: str) -> Proc:
    """``posa channel`` that gets EFBIG (not SIGXFSZ) when a file grows past its limit."""
    proc = Proc.python(f"""
        import runpy, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        sys.argv = ["posa", "channel", {name!r}, "--dispatcher", {dispatcher!r},
                    "--listen", "tcp://127.0.0.1:0", "--store", {str(store)!r},
                    "--credential", {token!r}, "--history", "100000"]
        runpy.run_module("posa", run_name="__main__")
    """)
    proc.expect(f"channel {name} at", timeout=30)
    return proc


def _start(name: str, dispatcher: str, store: Path, token: str) -> Proc:
    proc = Proc.posa("channel", name, "--dispatcher", dispatcher, "--listen",
                     "tcp://127.0.0.1:0", "--store", str(store), "--credential", token,
                     "--history", "100000")
    proc.expect(f"channel {name} at", timeout=30)
    return proc


def _history_holds_each_once(name: str, dispatcher: str, count: int) -> None:
    """The channel's history holds events 0..``count`` - 1, in order, each once."""
    with Subscriber(name, dispatcher=dispatcher, from_seq=1, buffer=1000) as late:
        events = _events(late, count)
    assert [event.body["i"] for event in events] == list(range(count))
    assert [event.seq for event in events] == list(range(1, count + 1))   # none twice


def _publish_past_a_full_file(pub: Publisher, channel: Proc, store: Path, stored: int,
                              total: int) -> None:
    """Publish events 0..``stored`` - 1 (flushed: stored), cap the channel's files a
    little above what they hold (RLIMIT_FSIZE, as a full disk), publish the rest up
    to ``total``: their flush is not acknowledged in time."""
    big = "x" * 20000
    for i in range(stored):
        pub.publish("t", {"i": i, "pad": big})
    pub.flush(30)
    files = [store, Path(f"{store}-wal")]
    limit = max(f.stat().st_size for f in files if f.exists()) + 65536
    resource.prlimit(channel.popen.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    for i in range(stored, total):
        pub.publish("t", {"i": i, "pad": big})
    with pytest.raises(posa.Timeout):
        pub.flush(3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("killed_while_full", [False, True], ids=["room-again", "sigkilled"])
def test_a_channel_whose_file_cannot_grow_acknowledges_only_what_it_stored(
        dispatcher: str, tmp_path: Path, killed_while_full: bool) -> None:
    """A real ``posa channel`` whose store stops growing (RLIMIT_FSIZE: EFBIG,
    as a full disk): publishers get no acknowledgement for what was not stored
    and the channel keeps running; it takes it all once the file may grow (or,
    SIGKILLed while full, once restarted: the publisher sends again what was
    not acknowledged). After a SIGKILL and a restart every event is in the
    history once, in order."""
    name, store, token = "events/small", tmp_path / "c.db", "t0ken"
    channel = _channel_in_a_small_file(name, dispatcher, store, token)
    try:
        with Publisher(name, dispatcher=dispatcher, timeout=60, batch=8) as pub:
            _publish_past_a_full_file(pub, channel, store, 20, 120)
            assert pub.sent < 120 and channel.popen.poll() is None
            if killed_while_full:
                channel.close()
                channel = _start(name, dispatcher, store, token)
            else:
                resource.prlimit(channel.popen.pid, resource.RLIMIT_FSIZE,
                                 (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            pub.flush(60)
            assert pub.sent == 120
        channel.close()                             # SIGKILL
        channel = _start(name, dispatcher, store, token)
        _history_holds_each_once(name, dispatcher, 120)
    finally:
        channel.close()


@pytest.mark.timeout(120)
def test_a_channel_stopped_while_its_file_cannot_grow_acknowledges_nothing_unstored(
        dispatcher: str, tmp_path: Path) -> None:
    """SIGTERM while the store refused a turn: the close ended the turn's wait
    and acknowledged it unstored, so the publisher's flush returned for events
    the restarted channel never had (fails without the turn's refusal)."""
    name, store, token = "events/stopped", tmp_path / "c.db", "t0ken"
    channel = _channel_in_a_small_file(name, dispatcher, store, token)
    try:
        with Publisher(name, dispatcher=dispatcher, timeout=60, batch=8) as pub:
            _publish_past_a_full_file(pub, channel, store, 10, 80)
            channel.popen.send_signal(signal.SIGTERM)
            assert channel.popen.wait(30) == 0
            channel.close()
            channel = _start(name, dispatcher, store, token)
            pub.flush(60)
            assert pub.sent == 80
        _history_holds_each_once(name, dispatcher, 80)
    finally:
        channel.close()


def test_a_subscriber_takes_stored_events_while_the_store_refuses_a_turn(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    """The reactor waited for the store to take the turn: no subscription could
    be made, no delivery acknowledged, no lease renewed meanwhile (fails without
    the turn's refusal)."""
    store = FlakyStore(str(tmp_path / "c.db"))
    with EventChannel("events/refusing", registry=registry, store=store, window=2,
                      max_batch=2) as channel, \
            Publisher("events/refusing", registry=registry) as pub:
        for i in range(10):
            pub.publish("t", i)
        pub.flush(20)
        store.broken = {"journal"}
        for i in range(10, 15):
            pub.publish("t", i)
        with pytest.raises(posa.Timeout):
            pub.flush(1.5)
        assert channel.keeping is not None and channel.keeping.errors
        with Subscriber("events/refusing", registry=registry, from_seq=1,
                        timeout=5) as sub:
            assert _bodies(sub, 10) == list(range(10))      # 5 deliveries acknowledged
        assert pub.sent == 10
        store.broken = set()
        pub.flush(20)
        assert pub.sent == 15
        with Subscriber("events/refusing", registry=registry, from_seq=1) as again:
            assert _bodies(again, 15) == list(range(15))


def test_a_second_posa_channel_on_a_store_exits_saying_why(dispatcher: str,
                                                           tmp_path: Path) -> None:
    err = second_owner_says("channel", dispatcher, tmp_path / "c.db")
    assert "in use by another channel" in err and "Traceback" not in err, err
