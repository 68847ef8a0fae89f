"""RegistryClient.watch: once it returns, every change at the dispatcher is reported,
with or without the client's cache (a real ``posa dispatcher`` process)."""
from __future__ import annotations

import threading

import pytest

import posa
from posa.naming.registration import Registration

pytestmark = pytest.mark.timeout(120)

ROUNDS = 5
DEADLINE = 10.0     # s for a notice that comes in milliseconds


@pytest.mark.parametrize("cache", [True, False])
def test_a_registration_made_right_after_watch_returns_is_reported(
        dispatcher: str, cache: bool) -> None:
    missed = []
    with posa.RegistryClient(dispatcher) as owner:
        for i in range(ROUNDS):
            name = f"watched/{'cached' if cache else 'plain'}-{i}"
            seen = threading.Event()

            def on_change(changed: str, registration: Registration | None,
                          name: str = name, seen: threading.Event = seen) -> None:
                if changed == name and registration is not None:
                    seen.set()
            with posa.RegistryClient(dispatcher, cache=cache) as watcher:
                stop = watcher.watch(on_change)
                owner.register(name, ["tcp://127.0.0.1:9"], credential="owner", lease=30)
                if not seen.wait(DEADLINE):
                    missed.append(name)
                stop()
            owner.unregister(name, credential="owner")
    assert not missed, f"registrations made right after watch() returned were not " \
                       f"reported: {missed}"


def test_watch_says_when_the_dispatcher_is_not_there() -> None:
    from tests.support import free_port
    with posa.RegistryClient(f"tcp://127.0.0.1:{free_port()}", timeout=0.5,
                             cache=False) as reg, \
         pytest.raises(posa.Timeout, match="did not take a watch"):
        reg.watch(lambda name, registration: None)
