"""Fixtures every test gets: a test must stop the threads it starts."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    import posa

# hypothesis's clock-based checks (an example's deadline, the speed of input
# generation) fail on a loaded machine though nothing is wrong: they time, they
# do not test. Every property below still runs all its examples.
settings.register_profile("posa", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("posa")

THREAD_GRACE = 5.0   # seconds the threads a test started have to finish after it
# process-wide service threads that posa starts once and keeps for the process's life
PROCESS_THREADS = {"posa-reactor", "posa-leases", "posa-zap", "posa-nats",
                   "posa-nats-registry"}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves running a thread it started (waiting up to
    ``THREAD_GRACE`` seconds, in all, for them to finish)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    leaked = []
    for thread in set(threading.enumerate()) - before:
        if thread.name in PROCESS_THREADS:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            leaked.append(thread.name)
    if leaked:
        pytest.fail(f"the test left {len(leaked)} thread(s) running: {', '.join(sorted(leaked))}; "
                    "close whatever started them before the test ends", pytrace=False)


@pytest.fixture
def registry() -> Iterator[posa.LocalRegistry]:
    """A ``posa.LocalRegistry`` (in-process names), closed after the test."""
    import posa
    with posa.LocalRegistry() as reg:
        yield reg


@pytest.fixture
def dispatcher() -> Iterator[str]:
    """A real ``posa dispatcher`` process on loopback; yields its address."""
    from tests.support import start_dispatcher
    proc, address = start_dispatcher()
    try:
        yield address
    finally:
        proc.close()
