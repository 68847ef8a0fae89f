"""One process's lease keeper renews every lease, whatever the others ask for.

The keeper is one thread for the whole process.  A lease longer than a thread
can wait (``threading.TIMEOUT_MAX``, about 292 years on Linux; a ``Peer`` with
``lease=1e300`` renews every 3.3e299 s) made that wait raise ``OverflowError``
and the thread die: every other peer of the process stopped renewing and its
name expired at the dispatcher.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from posa.naming.client import RegistryClient
from tests.support import Proc, start_dispatcher

pytestmark = pytest.mark.timeout(60)

PEERS = """
import sys, posa
from posa.naming.client import RegistryClient
registry = RegistryClient(sys.argv[1], timeout=5.0)
with posa.Peer("lease/huge", registry=registry, lease=1e300), \\
        posa.Peer("lease/short", registry=registry, lease=0.3):
    print("ready", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def dispatcher() -> Iterator[str]:
    proc, address = start_dispatcher()
    try:
        yield address
    finally:
        proc.close()


def test_a_peer_with_a_huge_lease_leaves_its_neighbours_names_alive(dispatcher: str) -> None:
    peers = Proc.python(PEERS, dispatcher)
    try:
        peers.expect("ready")
        registry = RegistryClient(dispatcher, timeout=5.0, cache=False)
        # over ten of its leases, the short one's name is never gone
        end = time.monotonic() + 3.0
        lookups = 0
        while time.monotonic() < end and lookups < 100_000:
            assert registry.lookup("lease/short"), peers.stderr_now()
            lookups += 1
        assert registry.lookup("lease/huge")
        peers.tell("")
        assert peers.popen.wait(20) == 0, peers.stderr_now()
    finally:
        peers.close()
