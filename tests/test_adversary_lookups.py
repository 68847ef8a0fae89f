"""The adversary of uncached lookups answered from bytes packed once per
registration (and reply heads packed once per recipient and requester): a real
dispatcher, writers changing registrations on a seeded random schedule while
16 threads of 4 uncached clients look the names up. A history check: no lookup
answers a state older than a change that returned before the lookup began, or
newer than the last change begun before it ended; a lookup that answers a
change's state is never followed, in its thread, by an older one."""
from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest

import posa
from posa.errors import NameNotFound, PosaError

pytestmark = pytest.mark.timeout(120)

NAMES = 3
READERS = 16        # threads, over 4 clients
CHANGES = 150       # per name
DEADLINE = 60.0
GONE = ("gone",)


class History:
    """One name's states in order: ``states[k]`` is what a lookup answers after
    change k returned (``GONE`` while unregistered); ``begun``/``done`` count
    the changes begun and returned."""

    def __init__(self) -> None:
        self.states: list[Any] = [GONE]
        self.begun = 0
        self.done = 0

    def allowed(self, since: int, until: int) -> list[Any]:
        return self.states[since:until + 1]


def _state(reg: posa.Registration) -> tuple[Any, ...]:
    return (reg.epoch, reg.addresses, reg.meta.get("v"))


def _writer(client: posa.RegistryClient, name: str, history: History,
            rng: random.Random, failures: list[str]) -> None:
    port = 20_000
    try:
        for k in range(1, CHANGES + 1):
            op = rng.choice(("move", "meta", "renew", "gone")
                            if history.states[-1] != GONE else ("move",))
            history.begun = k
            if op == "gone":
                client.unregister(name, credential="c")
                state: Any = GONE
            else:
                if op == "move":
                    port += 1
                addresses = [f"tcp://127.0.0.1:{port}"]
                if op == "renew":
                    reg = client.renew(name, credential="c")
                else:
                    reg = client.register(name, addresses, credential="c", meta={"v": k})
                state = _state(reg)
            history.states.append(state)
            history.done = k
    except PosaError as exc:
        failures.append(f"writer {name}: {exc!r}")


def _reader(client: posa.RegistryClient, histories: dict[str, History],
            stop: threading.Event, failures: list[str], rng: random.Random,
            seen: list[tuple[str, int, int, Any]]) -> None:
    """Look names up until told; ``seen`` gets (name, changes returned before,
    changes begun after, answer) of each lookup, checked once the states are all
    known (a change's state is known when it returns)."""
    for _ in range(1_000_000):              # bounded; ends when told
        if stop.is_set() or failures:
            return
        name = rng.choice(list(histories))
        history = histories[name]
        since = history.done
        try:
            answer: Any = _state(client.lookup(name))
        except NameNotFound:
            answer = GONE
        except PosaError as exc:
            failures.append(f"lookup {name}: {exc!r}")
            return
        seen.append((name, since, history.begun, answer))


def _check(histories: dict[str, History], seen: list[tuple[str, int, int, Any]]) -> None:
    """Each lookup answered a state between the changes around it, and no older
    state than one its thread saw answered before (``GONE`` repeats: not ordered)."""
    latest: dict[str, int] = {}
    for name, since, until, answer in seen:
        allowed = histories[name].allowed(since, until)
        assert answer in allowed, (
            f"lookup {name} begun after change {since} returned, ended before change "
            f"{until + 1} began, answered {answer!r}; the states then: {allowed!r}")
        if answer == GONE:
            continue
        at = since + allowed.index(answer)
        assert at >= latest.get(name, 0), (
            f"lookup {name} answered state {at} after this thread saw state {latest[name]}")
        latest[name] = max(at, latest.get(name, 0))


def test_lookups_from_many_threads_never_answer_older_than_a_change_before_them(
        dispatcher: str) -> None:
    seed = int(os.environ.get("POSA_ADVERSARY_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (POSA_ADVERSARY_SEED={seed} repeats it)")
    rng = random.Random(seed)
    histories = {f"adv/look/{n}": History() for n in range(NAMES)}
    failures: list[str] = []
    stop = threading.Event()
    clients = [posa.RegistryClient(dispatcher, cache=False) for _ in range(4 + NAMES)]
    try:
        seen: list[list[tuple[str, int, int, Any]]] = [[] for _ in range(READERS)]
        readers = [threading.Thread(target=_reader, daemon=True, args=(
            clients[k % 4], histories, stop, failures, random.Random(rng.random()), seen[k]))
            for k in range(READERS)]
        writers = [threading.Thread(target=_writer, daemon=True, args=(
            clients[4 + n], name, history, random.Random(rng.random()), failures))
            for n, (name, history) in enumerate(histories.items())]
        for thread in readers + writers:
            thread.start()
        deadline = time.monotonic() + DEADLINE
        for thread in writers:
            thread.join(max(0.0, deadline - time.monotonic()))
        stop.set()
        for thread in readers:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in readers + writers), (
            f"seed {seed}: not done within {DEADLINE} s")
        assert not failures, f"seed {seed}: {failures[:5]}"
        assert all(history.done == CHANGES for history in histories.values())
        for lookups in seen:
            try:
                _check(histories, lookups)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}: {exc}") from None
        assert sum(map(len, seen)) > READERS * 10, "too few lookups to say anything"
    finally:
        stop.set()
        for client in clients:
            client.close()
