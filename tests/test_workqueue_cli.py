"""``posa queue`` and ``posa worker`` as real processes: draining on SIGTERM,
restarting in place with a credential, any program as a worker, timeouts."""
from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import posa
from posa.errors import Rejected
from posa.work.queue import WorkQueue
from posa.work.worker import Item, Worker
from tests.support import Proc
from tests.test_workqueue import Collector

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def registry(dispatcher: str) -> Iterator[posa.RegistryClient]:
    with posa.RegistryClient(dispatcher) as reg:
        yield reg


def _queue(name: str, dispatcher: str, *args: str) -> Proc:
    proc = Proc.posa("queue", name, "--dispatcher", dispatcher, *args)
    proc.expect(f"queue {name} at ")
    return proc


def test_a_queue_drains_on_sigterm_taking_the_ack_of_the_item_in_flight(
        dispatcher: str, registry: posa.RegistryClient, tmp_path: Path) -> None:
    store = tmp_path / "q.db"
    queue = _queue("jobs/drain", dispatcher, "--store", str(store), "--results",
                   "--grace", "60")
    started, release = threading.Event(), threading.Event()

    def slow(item: Item) -> Any:
        started.set()
        assert release.wait(60)
        return item.data + 1

    try:
        with posa.Peer("jobs/drain/p", registry=registry, listen="tcp://127.0.0.1:0") as p, \
                Worker("jobs/drain/w", "jobs/drain", slow, registry=registry,
                       listen="tcp://127.0.0.1:0") as worker:
            posa.submit(p, "jobs/drain", {"a": 1})
            worker.start()
            assert started.wait(30)
            queue.popen.terminate()                     # SIGTERM while "a" is in flight
            refusal = _submit_until_refused(p)
            release.set()                               # the worker finishes "a" ...
            assert queue.popen.wait(60) == 0            # ... the queue waited for its ack
            assert json.loads(queue.line()) == {"done": "a", "result": 2}
    finally:
        queue.close()
    assert "draining" in str(refusal)
    from posa.work.sqlitestore import SqliteStore  # not on main: tests fail there first
    opened = SqliteStore(store)
    snapshot = opened.load()
    opened.close()
    assert ("a", "done") in snapshot.finished                 # recorded before it exited
    accepted = [item.key for item in snapshot.items]           # submitted before the drain
    assert all(key.startswith("late") for key in accepted)     # ... kept, not lost


def _submit_until_refused(peer: posa.Peer) -> Rejected:
    """Submit new keys until the draining queue refuses one (the signal may
    take a moment to arrive: items accepted before are stored, not lost)."""
    for i in range(10_000):
        try:
            posa.submit(peer, "jobs/drain", {f"late{i}": i}, timeout=5)
        except Rejected as exc:
            return exc
    raise AssertionError("the queue never refused a submit after SIGTERM")


def test_a_worker_drains_on_sigterm_and_its_ack_reaches_the_queue(
        dispatcher: str, registry: posa.RegistryClient, tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    done = Collector()
    with WorkQueue("jobs/wd", registry=registry, listen="tcp://127.0.0.1:0",
                   on_done=done) as queue:
        queue.put({"a": "x"})
        worker = Proc.posa("worker", "--queue", "jobs/wd", "--dispatcher", dispatcher,
                           "--", "sh", "-c", f'cat >/dev/null; read go < "{fifo}"; echo "$go"')
        try:
            worker.expect("worker ")
            with open(fifo, "w") as go:             # opens once the program waits on it
                worker.popen.terminate()            # SIGTERM while "a" runs
                go.write("finished\n")
            assert worker.popen.wait(60) == 0
            assert done.calls == [("a", "finished\n")]    # acknowledged before it exited
            assert queue.metrics()["in_flight"] == 0
        finally:
            worker.close()


def test_a_restarted_queue_and_worker_take_their_names_at_once_with_a_credential(
        dispatcher: str, registry: posa.RegistryClient, tmp_path: Path) -> None:
    args = ("--store", str(tmp_path / "q.db"), "--credential", "q-secret", "--results")
    first = _queue("jobs/again", dispatcher, *args)
    worker_args = ("worker", "--queue", "jobs/again", "--name", "jobs/again/w",
                   "--credential", "w-secret", "--dispatcher", dispatcher, "--", "cat")
    worker = Proc.posa(*worker_args)
    worker.expect("worker ")
    with posa.Peer("jobs/again/p", registry=registry, listen="tcp://127.0.0.1:0") as p:
        posa.submit(p, "jobs/again", {"a": "one"})
        assert json.loads(first.line()) == {"done": "a", "result": '"one"'}
        first.kill()
        worker.kill()
        second = _queue("jobs/again", dispatcher, *args)       # not Unauthorized
        worker = Proc.posa(*worker_args)
        try:
            worker.expect("worker ")
            posa.submit(p, "jobs/again", {"a": "one", "b": "two"}, timeout=20)
            assert json.loads(second.line()) == {"done": "b", "result": '"two"'}
        finally:
            second.close()
            worker.close()
            first.close()


RETRYING = r'''
x=$(cat)
case "$x" in
  *fail-once*) if [ "$WORK_ITEM_ATTEMPT" = 1 ]; then echo boom >&2; exit 3; fi ;;
  *always*) echo "no way" >&2; exit 1 ;;
esac
printf '%s|%s' "$WORK_ITEM_KEY" "$x"
'''


def test_posa_worker_runs_a_program_per_item_and_retries_on_failure(
        dispatcher: str, registry: posa.RegistryClient) -> None:
    done, dead = Collector(), Collector()
    with WorkQueue("jobs/sh", registry=registry, listen="tcp://127.0.0.1:0",
                   max_attempts=2, on_done=done, on_dead=dead) as queue:
        worker = Proc.posa("worker", "--queue", "jobs/sh", "--dispatcher", dispatcher,
                           "--concurrency", "2", "--", "sh", "-c", RETRYING)
        try:
            worker.expect("worker ")
            queue.put({"s": "hello", "m": {"n": [1, 2]}, "b": b"\xff\xferaw",
                       "f": "fail-once", "d": "always"})
            metrics = queue.join(60)
        finally:
            worker.close()
    assert dict(done.calls) == {"s": 's|"hello"', "m": 'm|{"n": [1, 2]}',
                                "b": b"b|\xff\xferaw", "f": 'f|"fail-once"'}
    assert [key for key, _ in dead.calls] == ["d"]
    assert re.search(r"exited with status 1; stderr: no way", dead.calls[0][1])
    assert (metrics["failed"], metrics["workers"]) == (3, 2)   # f once, d twice; 2 workers


def test_posa_worker_hands_the_item_over_as_a_file(dispatcher: str,
                                                   registry: posa.RegistryClient) -> None:
    done = Collector()
    with WorkQueue("jobs/file", registry=registry, listen="tcp://127.0.0.1:0",
                   on_done=done) as queue:
        worker = Proc.posa("worker", "--queue", "jobs/file", "--dispatcher", dispatcher,
                           "--", "sh", "-c", 'wc -c < "$1"; test "$1" = "$WORK_ITEM_FILE"',
                           "sh", "{}")
        try:
            worker.expect("worker ")
            queue.put({"a": b"12345", "b": [1]})
            queue.join(60)
        finally:
            worker.close()
    assert {key: result.strip() for key, result in done.calls} == {"a": "5", "b": "3"}


def test_a_stalled_program_is_killed_with_its_process_group_at_its_timeout(
        dispatcher: str, registry: posa.RegistryClient, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    dead = Collector()
    with WorkQueue("jobs/stall", registry=registry, listen="tcp://127.0.0.1:0",
                   max_attempts=1, on_dead=dead) as queue:
        worker = Proc.posa("worker", "--queue", "jobs/stall", "--dispatcher", dispatcher,
                           "--timeout", "3", "--", "sh", "-c",
                           f'sleep 600 & echo $$ $! > "{pids}"; wait')
        try:
            worker.expect("worker ")
            queue.put({"stuck": None})
            dead.wait(1, timeout=60)
        finally:
            worker.close()
    assert "still ran after 3 s: its process group was killed" in dead.calls[0][1]
    for pid in map(int, pids.read_text().split()):         # the shell and its child
        assert _gone(pid), f"process {pid} of the stalled program survived"


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie its new parent has not reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return bool(re.search(r"^State:\s+Z", status, re.M))


def test_posa_worker_needs_a_program(dispatcher: str) -> None:
    proc = Proc.posa("worker", "--queue", "jobs/none", "--dispatcher", dispatcher)
    try:
        assert proc.popen.wait(30) != 0
        assert "give the program to run after --" in proc.stderr_now()
    finally:
        proc.close()


def test_a_draining_queue_refuses_items_hands_out_none_and_takes_acks() -> None:
    done = Collector()
    with posa.LocalRegistry() as reg, \
            WorkQueue("jobs/stop", registry=reg, on_done=done) as queue, \
            posa.Peer("jobs/stop/w", registry=reg) as worker:
        queue.put({"a": 1, "b": 2})
        (key, token, _, _), = worker.request("jobs/stop", {"op": "next", "max": 1})["items"]
        queue.stop_accepting()
        assert queue.in_flight() == 1
        with pytest.raises(Rejected, match="draining"):
            queue.put({"c": 3})
        reply = worker.request("jobs/stop", {"op": "next", "max": 1,
                                             "done": [[key, "ok", 0.1]]})
        assert reply["items"] == [] and queue.in_flight() == 0
        assert done.calls == [(key, "ok")] and queue.metrics()["pending"] == 1
