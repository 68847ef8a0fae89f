"""The lookups a channel's delivery thread hands to helpers: ``resolve`` never waits
(``Unanswered`` until the answer is in, then the answer, once), a name is looked up
once however often it is asked about meanwhile, the helpers are at most
``THREADS`` however many names hang, and the forwarder's first contact counts an
unanswered resolve as no try (an unknown name still fails at once)."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from posa.channel.lookups import THREADS, Lookups
from posa.delivery.links import Links, Unanswered
from posa.errors import NameNotFound
from posa.naming.registration import Registration
from posa.transport.base import Options

DEADLINE = 30.0


class GatedRegistry:
    """Lookups that wait until their name's gate opens; counts them per name."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.gates: dict[str, threading.Event] = {}
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def gate(self, name: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(name, threading.Event())

    def lookup(self, name: str) -> Registration:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        assert self.gate(name).wait(DEADLINE)
        if name not in self.known:
            raise NameNotFound(f"{name!r} is not registered")
        return Registration(name, (f"tcp://127.0.0.1:1/{name}",), 7, 10.0, 10.0, {})


class Helpers:
    """The ``start`` a ``Lookups`` gets: real threads, counted and joined."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __call__(self, target: Callable[[], None], role: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"test-{role}", daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread


@pytest.fixture
def made() -> Iterator[tuple[Lookups, GatedRegistry, Helpers, threading.Semaphore]]:
    registry, helpers, woken = GatedRegistry({"a", "b", "c", "d", "e"}), Helpers(), \
        threading.Semaphore(0)
    lookups = Lookups(registry, wake=woken.release, start=helpers)  # type: ignore[arg-type]
    try:
        yield lookups, registry, helpers, woken
    finally:
        lookups.close()
        for gate in list(registry.gates.values()):
            gate.set()
        for thread in helpers.threads:
            thread.join(DEADLINE)
            assert not thread.is_alive()


def test_resolve_never_waits_and_uses_an_answer_once(made: tuple) -> None:
    lookups, registry, _, woken = made
    with pytest.raises(Unanswered):
        lookups.resolve("a", False)
    with pytest.raises(Unanswered):         # asked again meanwhile: one lookup
        lookups.resolve("a", True)
    registry.gate("a").set()
    assert woken.acquire(timeout=DEADLINE)
    assert lookups.answered() == {"a"} and lookups.answered() == set()
    assert lookups.resolve("a", True) == (("tcp://127.0.0.1:1/a",), 7)
    assert registry.calls == {"a": 1}
    with pytest.raises(Unanswered):         # the answer was used: asked again
        lookups.resolve("a", False)
    assert woken.acquire(timeout=DEADLINE)
    assert registry.calls == {"a": 2}


def test_an_unknown_name_is_answered_with_the_error(made: tuple) -> None:
    lookups, registry, _, woken = made
    registry.gate("zz").set()
    lookups.ask("zz", True)
    assert woken.acquire(timeout=DEADLINE)
    with pytest.raises(NameNotFound):
        lookups.resolve("zz", False)


def test_hanging_lookups_use_at_most_the_bounded_helpers(made: tuple) -> None:
    lookups, registry, helpers, woken = made
    names = ["a", "b", "c", "d", "e"]
    for name in names:
        lookups.ask(name, False)
    assert len(helpers.threads) == THREADS
    for name in names:
        registry.gate(name).set()
    for _ in names:
        assert woken.acquire(timeout=DEADLINE)
    assert len(helpers.threads) == THREADS
    assert all(isinstance(lookups.answer(name), Registration) for name in names)


def test_first_contact_counts_an_unanswered_resolve_as_no_try() -> None:
    answers: list[BaseException] = [Unanswered("asking"), NameNotFound("gone")]

    def resolve(name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
        raise answers.pop(0)
    steps = Links(resolve, Options(), 1.0).open_steps("x", float("inf"))
    conn, seconds = next(steps)             # backs off while the registry is asked
    assert conn is None and seconds > 0
    with pytest.raises(NameNotFound):       # then unknown: at once, not at the deadline
        steps.send(False)
