"""The reactor: one thread, every input, timers and hand-offs from other threads."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from posa import transport
from posa.errors import Timeout
from posa.runtime import leases
from posa.runtime import reactor as reactor_module
from posa.runtime.local import process_local
from posa.runtime.reactor import Reactor


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor("test-reactor")
    r.start()
    try:
        yield r
    finally:
        r.close()


def test_hand_offs_from_many_threads_run_on_the_reactor_thread_in_order(
        reactor: Reactor) -> None:
    seen: list[tuple[int, int]] = []
    threads_seen: set[str] = set()
    done = threading.Event()

    def record(sender: int, i: int) -> None:
        threads_seen.add(threading.current_thread().name)
        seen.append((sender, i))
        if len(seen) == 4000:
            done.set()

    def produce(sender: int) -> None:
        for i in range(1000):
            reactor.call_soon(record, sender, i)
    producers = [threading.Thread(target=produce, args=(s,)) for s in range(4)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(10)
    assert done.wait(10)
    assert threads_seen == {"test-reactor"}
    for sender in range(4):
        assert [i for s, i in seen if s == sender] == list(range(1000))


def test_call_returns_the_result_or_raises_what_the_function_raised(reactor: Reactor) -> None:
    assert reactor.call(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        reactor.call(lambda: 1 / 0)
    with pytest.raises(Timeout, match="did not run"):
        reactor.call(reactor.call_soon, time.sleep, 0.3)   # keep the loop busy
        reactor.call(lambda: None, timeout=0.01)


def test_timers_fire_in_order_and_cancelled_ones_do_not(reactor: Reactor) -> None:
    fired: list[str] = []
    done = threading.Event()
    reactor.call_later(0.06, lambda: (fired.append("late"), done.set()))
    reactor.call_later(0.02, lambda: fired.append("early"))
    reactor.call_later(0.01, lambda: fired.append("cancelled")).cancel()
    ticks: list[float] = []
    every = reactor.call_every(0.01, lambda: ticks.append(time.monotonic()))
    assert done.wait(5)
    every.cancel()
    count = len(ticks)
    assert fired == ["early", "late"]
    assert count >= 3
    stopped = threading.Event()
    reactor.call_later(0.05, stopped.set)
    assert stopped.wait(5) and len(ticks) <= count + 1


def test_a_callback_that_raises_does_not_stop_the_loop(reactor: Reactor) -> None:
    reactor.call_soon(lambda: 1 / 0)
    assert reactor.call(lambda: "still running") == "still running"


def test_sources_are_drained_when_they_have_input(reactor: Reactor) -> None:
    listener = transport.listen("inproc://reactor-test")
    connection = transport.connect("inproc://reactor-test")
    got: list[bytes] = []
    done = threading.Event()

    def drain() -> None:
        while (item := listener.recv_nowait()) is not None:
            got.append(item[1])
        if len(got) == 500:
            done.set()
    try:
        connection.send(b"before the reactor watched")
        reactor.add_source(listener, drain)
        for i in range(499):
            connection.send(b"%d" % i)
        assert done.wait(10)
        assert got[0] == b"before the reactor watched" and got[-1] == b"498"
        reactor.remove_source(listener)
    finally:
        connection.close()
        listener.close()


def test_close_stops_the_thread_and_releases_descriptors() -> None:
    before = len(os.listdir("/proc/self/fd"))
    r = Reactor("short-lived")
    r.start()
    thread = r._thread
    r.close()
    assert thread is not None and not thread.is_alive()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_negative_timeout_polls_without_waiting() -> None:
    r = Reactor("not-started")
    try:
        finished = threading.Event()
        worker = threading.Thread(target=lambda: (r.run_once(-1.0), finished.set()),
                                  daemon=True)
        worker.start()
        assert finished.wait(5), "run_once(-1) must return at once, as run_once(0) does"
    finally:
        r.close()


class _PipeSource:
    """A source on the read end of a pipe; counts its callbacks. Once closed, its
    ``fileno()`` raises, or (``keeps_number``) still answers the old number."""

    def __init__(self, keeps_number: bool = False) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.keeps_number = keeps_number
        self.calls = 0
        self.called = threading.Event()
        self.closed = False

    def fileno(self) -> int:
        if self.closed and not self.keeps_number:
            raise OSError("closed")
        return self.read_fd

    def pending(self) -> bool:
        return False

    def drain(self) -> None:
        self.calls += 1
        self.called.set()
        if not self.closed:
            os.set_blocking(self.read_fd, False)
            try:
                os.read(self.read_fd, 4096)
            except BlockingIOError:
                pass

    def close(self) -> None:
        self.closed = True
        os.close(self.read_fd)
        os.close(self.write_fd)


def _watch(reactor: Reactor, source: _PipeSource) -> None:
    reactor.add_source(source, source.drain)
    reactor.call(lambda: None)                # hand-offs run in order: it is watched


@pytest.mark.parametrize("keeps_number", [False, True])
def test_a_source_closed_before_its_removal_is_forgotten(reactor: Reactor,
                                                         keeps_number: bool) -> None:
    source = _PipeSource(keeps_number)
    _watch(reactor, source)
    number = source.read_fd
    source.close()
    reactor.remove_source(source)
    assert source not in reactor._sources
    assert number not in reactor._callbacks, "its callback (and its owner) stays alive"


@pytest.mark.parametrize("keeps_number", [False, True])
def test_removing_a_closed_source_leaves_a_newer_one_on_its_number_watched(
        reactor: Reactor, keeps_number: bool) -> None:
    old = _PipeSource(keeps_number)
    _watch(reactor, old)
    number = old.read_fd
    old.close()                               # closed before it was removed
    new = None
    spare = []
    try:
        for _ in range(64):                   # get a pipe on the same number
            candidate = _PipeSource()
            if candidate.read_fd == number:
                new = candidate
                break
            spare.append(candidate)
        assert new is not None, "the closed number was not handed out again"
        _watch(reactor, new)
        reactor.remove_source(old)            # must not take the new one's watch
        new.called.clear()                    # (add_source drained it once)
        os.write(new.write_fd, b"x")
        assert new.called.wait(2), "the newer source on the reused number went unwatched"
        reactor.remove_source(new)
        assert number not in reactor._callbacks
    finally:
        for source in [*spare, *([new] if new is not None else [])]:
            source.close()


# -- per-process singletons ----------------------------------------------------------
def test_process_local_makes_one_object_and_a_new_one_when_it_is_gone() -> None:
    made: list[list[bool]] = []

    def make() -> list[bool]:
        made.append([True])
        return made[-1]
    get = process_local(make, alive=lambda obj: obj[0])
    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(made) == 1 and get() is made[0]
    made[0][0] = False                        # "closed": the next call makes another
    assert get() is made[1] and len(made) == 2


def in_forked_child(check: Callable[[], bool | str]) -> bool | str:
    """What ``check`` returns in a child forked now (True, False, or why not)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the child: report, and leave at once
        try:
            os.write(write_fd, repr(check()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            reported = pipe.read().decode()
    finally:
        os.waitpid(pid, 0)
    return True if reported == "True" else reported


def test_a_forked_child_gets_its_own_reactor_and_lease_keeper() -> None:
    parent_reactor, parent_keeper = reactor_module.default(), leases.keeper()

    def check() -> bool:
        child = reactor_module.default()
        fresh = child is not parent_reactor and leases.keeper() is not parent_keeper
        ran: bool = child.call(lambda: True, timeout=5)   # its loop thread runs here
        return fresh and ran

    assert in_forked_child(check) is True
    assert reactor_module.default() is parent_reactor


def test_in_a_forked_child_no_thread_is_taken_for_the_parents_loop_thread() -> None:
    """The parent's loop thread does not exist in a forked child, though the
    child's threads may be given its number (the thread library hands the child
    the dead threads' stacks first): none of them is its reactor's thread, so
    ``call`` from them hands off instead of running inline."""
    parent = reactor_module.default()
    assert parent.call(parent.in_reactor_thread, timeout=5)

    def check() -> bool | str:
        claims: list[bool] = []
        for _ in range(8):                    # threads made one after another
            thread = threading.Thread(target=lambda: claims.append(parent.in_reactor_thread()))
            thread.start()
            thread.join(5)
        return claims == [False] * 8 or repr(claims)

    assert in_forked_child(check) is True
