"""A RegistryClient's watch follows a restarted dispatcher without its pings.

Cache freshness comes from the dispatcher's notices: a dispatcher that stops
closes the watch connection, and the client makes the watch again at once
(backing off while the dispatcher is away), not at its next liveness ping, which
now comes every 10 s by default (issue 21: no per-second ping from every
idle client)."""
from __future__ import annotations

import inspect
import threading

import posa
from posa.naming.registry import Registration
from tests.support import free_port, start_dispatcher


def test_a_restarted_dispatcher_is_watched_again_without_waiting_for_a_ping() -> None:
    port = free_port()
    first, address = start_dispatcher(port=port)
    second = None
    seen: list[str] = []
    arrived = threading.Event()

    def noticed(name: str, registration: Registration | None) -> None:
        seen.append(name)
        if name.startswith("after/"):
            arrived.set()

    try:
        # pings an hour apart: only the closed connection can tell of the restart
        with posa.RegistryClient(address, ping_interval=3600.0) as reg:
            reg.watch(noticed)
            first.kill()
            second, _ = start_dispatcher(port=port)
            with posa.RegistryClient(address, cache=False) as other:
                # a change made before the watch is made again is not reported:
                # change a name each second until one is (on main: none is, as the
                # watch waits for the next ping, an hour away)
                for i in range(20):
                    other.register(f"after/{i}", ["tcp://127.0.0.1:9"], credential="c")
                    if arrived.wait(1.0):
                        break
                assert arrived.is_set(), f"no notice after the restart (saw {seen})"
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.close()


def test_an_idle_client_pings_its_dispatcher_every_10_s_at_most() -> None:
    default = inspect.signature(posa.RegistryClient).parameters["ping_interval"].default
    assert default >= 10.0
