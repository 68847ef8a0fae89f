"""A channel's history on disk: it survives SIGKILL and SIGTERM of a real
``posa channel`` process, seqs continue, retention by count, bytes and age."""
from __future__ import annotations

import random
import secrets
import signal
import threading
import urllib.request
from pathlib import Path

import pytest

import posa
from posa.channel.core import ChannelCore
from posa.channel.protocol import Publication
from posa.channel.publisher import Publisher
from posa.channel.service import EventChannel
from posa.channel.subscriber import Subscriber
from tests.support import Proc, wait_until


def start_channel(dispatcher: str, name: str, store: Path, token: str, *args: str) -> Proc:
    proc = Proc.posa("channel", name, "--dispatcher", dispatcher, "--listen",
                     "tcp://127.0.0.1:0", "--store", str(store), "--credential", token,
                     "--history", "1000000", *args)
    try:
        ANNOUNCED[name] = proc.expect(f"channel {name} at", timeout=30)
    except BaseException:
        proc.close()
        raise
    return proc


ANNOUNCED: dict[str, str] = {}      # channel name -> the rest of its "channel NAME at" line


def replay_all(name: str, dispatcher: str, n: int, from_seq: int = 1) -> list[posa.Event]:
    """``n`` events from ``from_seq``, by a subscriber that starts after the fact."""
    events: list[posa.Event] = []
    with Subscriber(name, dispatcher=dispatcher, from_seq=from_seq, buffer=100000) as late:
        while len(events) < n:
            events += late.receive_many(n - len(events), timeout=30)
    return events


@pytest.mark.timeout(180)
def test_sigkill_and_restart_lose_no_acknowledged_event_and_keep_the_history(
        dispatcher: str, tmp_path: Path) -> None:
    seed = secrets.randbits(32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    name, token, store = "events/durable", secrets.token_hex(8), tmp_path / "ch.db"
    channel = start_channel(dispatcher, name, store, token)
    published = 0
    try:
        with Publisher(name, dispatcher=dispatcher, timeout=60, batch=64) as pub, \
                Subscriber(name, dispatcher=dispatcher, lease=1.5, buffer=100000) as live:
            for round_ in range(4):
                burst = rng.randrange(200, 2000)
                for _ in range(burst):
                    pub.publish("t", {"i": published})
                    published += 1
                if rng.random() < 0.5:      # sometimes kill with events in flight
                    target = published - rng.randrange(0, burst)
                    wait_until(lambda t=target: pub.sent >= t, timeout=60, what="acks")
                acked = pub.sent
                channel.kill()
                channel.close()
                print(f"round {round_}: killed with {published} published, {acked} acked")
                channel = start_channel(dispatcher, name, store, token)
            pub.flush(60)
            assert pub.sent == published
            got: list[posa.Event] = []
            while len(got) < published:
                got += live.receive_many(published - len(got), timeout=60)
        assert [e.body["i"] for e in got] == list(range(published))     # once, in order
        events = replay_all(name, dispatcher, published)
        assert [e.body["i"] for e in events] == list(range(published))
        assert [e.seq for e in events] == list(range(1, published + 1))
        assert all(e.gap is None for e in events)
        middle = rng.randrange(1, published + 1)
        tail = replay_all(name, dispatcher, published - middle + 1, from_seq=middle)
        assert [e.body["i"] for e in tail] == list(range(middle - 1, published))
    finally:
        channel.close()


@pytest.mark.timeout(120)
def test_sigterm_keeps_what_was_accepted_and_the_restart_takes_its_name_at_once(
        dispatcher: str, tmp_path: Path) -> None:
    name, token, store = "events/drained", secrets.token_hex(8), tmp_path / "ch.db"
    channel = start_channel(dispatcher, name, store, token, "--ops-port", "0")
    try:
        with Publisher(name, dispatcher=dispatcher, timeout=30) as pub:
            for i in range(500):
                pub.publish("t", i)
            pub.flush(30)
        channel.popen.send_signal(signal.SIGTERM)
        assert channel.popen.wait(30) == 0
        channel.close()
        channel = start_channel(dispatcher, name, store, token)
        with Publisher(name, dispatcher=dispatcher, timeout=30) as pub:
            pub.publish("t", 500)
        events = replay_all(name, dispatcher, 501)
        assert [e.body for e in events] == list(range(501))
        assert events[-1].seq == 501                   # the seqs continued
    finally:
        channel.close()


def test_posa_channel_serves_its_numbers_on_the_ops_port(dispatcher: str,
                                                         tmp_path: Path) -> None:
    name = "events/numbers"
    channel = start_channel(dispatcher, name, tmp_path / "n.db", "t0k3n", "--ops-port", "0")
    try:
        with Subscriber(name, dispatcher=dispatcher), \
                Publisher(name, dispatcher=dispatcher) as pub:
            pub.publish("t", 1)
            pub.flush(10)
            url = _ops_url(name)
            text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        assert 'queue="channel_subscribers"} 1' in text
        assert 'queue="channel_store_bytes"' in text
        assert 'queue="channel_dropped_drop_oldest"' in text
    finally:
        channel.close()


def _ops_url(name: str) -> str:
    announced = ANNOUNCED[name]
    assert " ops on " in announced, announced
    return announced.split(" ops on ", 1)[1].strip()


# -- in one process: retention, and the store itself -------------------------------------
def test_a_stored_channel_continues_its_seqs_and_retention_by_count(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    store = str(tmp_path / "c.db")
    with EventChannel("events/kept", registry=registry, store=store, history=50), \
            Publisher("events/kept", registry=registry) as pub:
        for i in range(80):
            pub.publish("t", i)
        pub.flush(10)
    with EventChannel("events/kept", registry=registry, store=store, history=50) as again:
        assert again.seq == 80 and again.core.first_seq() == 31
        with Publisher("events/kept", registry=registry) as pub:
            pub.publish("t", 80)
            pub.flush(10)
        wait_until(lambda: again.seq == 81, what="seq 81")
        with Subscriber("events/kept", registry=registry, from_seq=1) as late:
            first = late.receive(timeout=10)
            assert (first.seq, first.body, first.gap) == (32, 31, posa.Gap("history", 0, None))


def test_retention_by_bytes_and_by_age_in_memory_and_in_the_store(tmp_path: Path) -> None:
    from posa.channel.store import SqliteStore
    core = ChannelCore("events/r", 7, history=1000, history_bytes=300, history_age=10.0)
    for t in range(10):
        core.publish(Publication("t", bodies=[b"x" * 50]), now=float(t))
    assert core.history_size < 10 and core.kept.bytes <= 300          # by bytes
    held = core.history_size
    core.kept.expire(now=9.0 + 10.0 - 0.5)                             # by age
    assert 0 < core.history_size < held
    core.kept.expire(now=100.0)
    assert core.history_size == 0 and core.first_seq() == 11
    store = SqliteStore(str(tmp_path / "r.db"))
    try:
        stored = store.load()
        runs = [(Publication("t", bodies=[i]), i) for i in range(5)]
        c2 = ChannelCore("events/r", stored.incarnation)
        for pub, i in runs:
            result = c2.publish(pub, now=float(i))
            assert result.run is not None
            store.record([(result.run, float(i), None, None)], [], c2.seq)
        before = store.size()
        store.trim(4)
        assert 0 < store.size() < before
        again = store.load()
        assert again.incarnation == stored.incarnation and again.seq == 5
        assert [run.first for run, *_ in again.runs] == [4, 5]
    finally:
        store.close()


def test_a_peer_shows_each_turns_deliveries_before_acknowledging_them(
        registry: posa.LocalRegistry) -> None:
    seen: list[tuple[int, int]] = []       # (messages shown, acknowledgements still due)

    def on_run(run: list[posa.Message]) -> None:
        seen.append((len(run), len(peer._intake.receiver.pending)))

    with posa.Peer("test/journaled", registry=registry, on_run=on_run) as peer, \
            posa.Peer("test/sender", registry=registry) as sender:
        for i in range(20):
            sender.send("test/journaled", i)
        sender.flush(10)                   # acknowledged: so every turn was shown first
        assert sum(n for n, _ in seen) == 20
        assert all(due >= 1 for _, due in seen)   # none of them acknowledged yet
        assert [peer.receive(timeout=5).body for _ in range(20)] == list(range(20))


def test_a_turn_on_run_refuses_is_neither_delivered_nor_acknowledged_until_taken(
        registry: posa.LocalRegistry) -> None:
    """``on_run`` could not refuse: what it was shown was delivered and then
    acknowledged, stored or not."""
    refusing = threading.Event()
    refusing.set()
    shown: list[int] = []

    def on_run(run: list[posa.Message]) -> list[posa.Message] | None:
        shown.extend(msg.body for msg in run)
        return [msg for msg in run if msg.body != "other"] if refusing.is_set() else None

    with posa.Peer("test/refusing", registry=registry, on_run=on_run) as peer, \
            posa.Peer("test/sender", registry=registry) as sender, \
            posa.Peer("test/other", registry=registry) as other:
        for i in range(10):
            sender.send("test/refusing", i)
        wait_until(lambda: 0 in shown, what="the first turn shown")   # the rest held early
        other.send("test/refusing", "other")
        other.flush(10)                         # another stream's turn is taken
        assert peer.receive(timeout=5).body == "other"
        assert peer.stats["received"] == 1      # none of the refused delivered
        refusing.clear()
        sender.flush(20)                        # resent, taken, acknowledged
        assert [peer.receive(timeout=5).body for _ in range(10)] == list(range(10))
        with pytest.raises(posa.Timeout):
            peer.receive(timeout=0)             # each once
        assert peer.stats["received"] == 11


def test_on_run_is_shown_no_message_that_repeats_an_idempotency_key(
        registry: posa.LocalRegistry) -> None:
    shown: list[str] = []

    def on_run(run: list[posa.Message]) -> None:
        shown.extend(msg.body for msg in run)

    with posa.Peer("test/keyed", registry=registry, on_run=on_run) as peer, \
            posa.Peer("test/sender", registry=registry) as sender:
        for body, key in (("a", "k1"), ("b", "k1"), ("c", "k2")):
            sender.send("test/keyed", body, headers={"key": key})
        sender.flush(10)
        assert [peer.receive(timeout=5).body for _ in range(2)] == ["a", "c"]
        assert shown == ["a", "c"]          # what is shown is what is delivered


def test_what_was_journaled_is_numbered_at_the_restart_and_a_resent_copy_is_dropped(
        registry: posa.LocalRegistry, tmp_path: Path) -> None:
    from posa.channel.store import SqliteStore
    path = str(tmp_path / "j.db")
    store = SqliteStore(path)
    store.load()
    # received and acknowledged, then the process died before numbering them
    store.journal([Publication("t", bodies=["a", "b"], pid=5, pseq=1),
                   Publication("t", bodies=["c"], pid=5, pseq=2)])
    store.close()
    with EventChannel("events/j", registry=registry, store=path) as channel:
        assert channel.seq == 3
        copy = Publication("t", bodies=["c"], pid=5, pseq=2)     # the publisher resends
        assert channel.core.publish(copy).duplicate == 1 and channel.seq == 3
        with Subscriber("events/j", registry=registry, from_seq=1) as sub:
            assert [sub.receive(timeout=10).body for _ in range(3)] == ["a", "b", "c"]
    with EventChannel("events/j", registry=registry, store=path) as again:
        assert again.seq == 3 and again.core.publishers.seen(5, 2)
