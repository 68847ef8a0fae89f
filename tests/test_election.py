"""Leader election with fencing tokens (``posa.Election``, ``posa.Fence``).

On every registry that keeps epochs (embedded, a dispatcher's, NATS): one
leader at a time, a token that grows with every new leader, ``lost`` told to a
leader whose lease ran out; and, with real processes on a 3-node NATS cluster, a
leader paused by SIGSTOP past its lease is replaced by one with a bigger token,
learns it lost when resumed, and its write is refused by the fence.
"""
from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import posa
from posa.naming.registration import Registry
from tests.natsserver import NatsCluster
from tests.support import Proc, sigstop, wait_until
from tests.test_registry_contract import make_registry, nats_url  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["local", "dispatcher", "nats", "dispatcher-on-nats"])
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    yield from make_registry(request.param, request)


def test_one_leader_then_the_next_with_a_bigger_token(registry: Registry) -> None:
    fence = posa.Fence()
    first = posa.Election("jobs/scheduler", registry=registry, lease=2.0)
    term = first.campaign()
    assert term.valid() and term.token >= 1
    fence.check(term.token)
    with pytest.raises(posa.Timeout, match="another candidate holds it"):
        posa.Election("jobs/scheduler", registry=registry, lease=2.0, timeout=0.3).campaign()
    first.resign()
    assert term.lost.is_set() and not term.valid()
    with posa.Election("jobs/scheduler", registry=registry, lease=2.0, timeout=30) as second:
        assert second.token > term.token
        fence.check(second.token)
        with pytest.raises(posa.StaleEpoch, match="fenced"):
            fence.check(term.token)


def test_a_leader_whose_renewal_is_refused_is_told_it_lost() -> None:
    now = [0.0]
    registry = posa.LocalRegistry(clock=lambda: now[0])
    told = threading.Event()
    leader = posa.Election("jobs/x", registry=registry, lease=0.3,
                           on_lost=lambda term: told.set())
    term = leader.campaign()
    now[0] += 10.0          # the registry's clock passes the lease: the name is free
    with posa.Election("jobs/x", registry=registry, lease=30, timeout=10) as usurper:
        assert told.wait(10.0) and term.lost.is_set()
        assert usurper.token == term.token + 1
    leader.resign()
    registry.close()


def test_the_zeroconf_registry_cannot_hold_an_election() -> None:
    from posa.naming.zeroconf.registry import ZeroconfRegistry
    zeroconf = object.__new__(ZeroconfRegistry)     # never started: only its type counts
    with pytest.raises(posa.Rejected, match="cannot promise a single leader"):
        posa.Election("jobs/x", registry=zeroconf)


def test_a_fence_takes_only_int_tokens() -> None:
    with pytest.raises(posa.Rejected, match="term.token"):
        posa.Fence().check("3")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomized_terms_never_share_a_token_and_never_overlap(seed: int) -> None:
    """Candidates on threads lead, resign or crash (stop renewing) at random:
    tokens only grow, none repeats, and when a term begins no other is valid."""
    rng = random.Random(seed)
    registry = posa.LocalRegistry()
    lock = threading.Lock()
    terms: list[posa.Term] = []
    overlaps: list[str] = []
    plans = [[rng.choice(["resign", "crash"]) for _ in range(4)] for _ in range(4)]

    def candidate(plan: list[str]) -> None:
        for action in plan:
            election = posa.Election("jobs/random", registry=registry, lease=0.3, timeout=60)
            term = election.campaign()
            with lock:
                valid_others = [t for t in terms if t.valid()]
                if term.valid():            # still leads after them: none may be valid,
                    overlaps.extend(repr(t) for t in valid_others)     # none newer
                    overlaps.extend(repr(t) for t in terms if t.token >= term.token)
                terms.append(term)
            term.lost.wait(rng.random() * 0.3)
            if action == "crash":
                election._stop.set()        # stops renewing, keeps the name
                wait_until(lambda t=term: not t.valid(), 10.0, "its own clock runs out")
                election.term = None        # and does not resign
            election.resign()
    threads = [threading.Thread(target=candidate, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    tokens = [t.token for t in terms]
    assert len(tokens) == 16 == len(set(tokens)), tokens
    assert not overlaps, overlaps
    registry.close()


ELECTOR = """
import sys, posa
registry = posa.NatsRegistry(sys.argv[1], bucket="elections")
while True:
    with posa.Election("jobs/scheduler", registry=registry, lease=1.0) as term:
        print("LEADER", term.token, flush=True)
        term.lost.wait()
        print("LOST", term.token, flush=True)
"""


def _leader(procs: list[Proc], timeout: float = 30.0) -> tuple[Proc, int]:
    """The process that announces it leads next, and its token."""
    import selectors
    with selectors.DefaultSelector() as sel:
        for proc in procs:
            assert proc.popen.stdout is not None
            sel.register(proc.popen.stdout, selectors.EVENT_READ, proc)
        for _ in range(100):
            for proc in procs:
                if b"\n" in proc._buffer:       # a line read already
                    line = proc.line(1.0)
                    if line.startswith("LEADER"):
                        return proc, int(line.split()[1])
            ready = sel.select(timeout)
            assert ready, f"no leader within {timeout} s"
            for key, _ in ready:
                proc = key.data
                line = proc.line(timeout)
                if line.startswith("LEADER"):
                    return proc, int(line.split()[1])
    raise AssertionError("no LEADER line among 100")


def test_sigstop_the_leader_past_its_lease_a_new_leader_fences_it(tmp_path: Path) -> None:
    with NatsCluster(tmp_path, size=3) as nats:
        procs = [Proc.python(ELECTOR, nats.urls) for _ in range(3)]
        fence = posa.Fence()
        tokens: list[int] = []
        try:
            leader, token = _leader(procs)
            for _ in range(4):              # hammer: pause the leader, again and again
                tokens.append(token)
                fence.check(token)
                sigstop(leader.popen.pid)
                others = [p for p in procs if p is not leader]
                successor, new_token = _leader(others)
                assert new_token > token
                fence.check(new_token)
                with pytest.raises(posa.StaleEpoch):
                    fence.check(token)      # the paused leader's write, refused
                leader.popen.send_signal(signal.SIGCONT)
                assert leader.expect("LOST") == str(token)
                leader, token = successor, new_token
            leader.kill()                   # and SIGKILL: another leads within the lease
            _, after_kill = _leader([p for p in procs if p is not leader])
            tokens += [token, after_kill]
            assert tokens == sorted(set(tokens)), tokens
        finally:
            for proc in procs:
                proc.popen.send_signal(signal.SIGCONT) if proc.popen.poll() is None else None
                proc.close()
