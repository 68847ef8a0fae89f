"""NatsRegistry on a real 3-node nats-server cluster (R3 bucket), and dispatchers
sharing it: losing a NATS node or a dispatcher loses no registration.

The registry contract itself (owners, epochs, leases, patterns, watches) is
tests/test_registry_contract.py, which NatsRegistry passes with the others.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import posa
from posa.naming.nats import loop as nats_loop
from posa.naming.nats.registry import NatsRegistry
from tests.natsserver import NatsCluster, NatsServer
from tests.support import ROOT, start_dispatcher

pytestmark = pytest.mark.timeout(180)

ADDR = ["tcp://127.0.0.1:7001"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(Path(tmp_path_factory.mktemp("nats3")), size=3) as nats:
        yield nats


def leader_of(registry: NatsRegistry, cluster: NatsCluster) -> NatsServer:
    """The server leading the bucket's stream (its replicas elect one)."""
    async def ask() -> str:
        info = await registry._nc.jetstream().stream_info(f"KV_{registry.bucket}")
        assert info.cluster is not None and info.cluster.leader is not None
        return info.cluster.leader
    name = nats_loop.call(ask(), 10.0)
    return next(s for s in cluster.servers if s.name == name)


def test_the_bucket_is_replicated_on_three_servers(cluster: NatsCluster) -> None:
    with NatsRegistry(cluster.urls, bucket="r3") as reg:
        async def replicas() -> int:
            info = await reg._nc.jetstream().stream_info("KV_r3")
            return info.config.num_replicas or 0
        assert nats_loop.call(replicas(), 10.0) == 3


def test_six_concurrent_compare_and_sets_on_three_nodes_have_one_winner(
        cluster: NatsCluster) -> None:
    """Six clients, two on each node, claim the same names at once: for each
    name exactly one credential wins (Debian's nats-server 2.9.10 let two win)."""
    urls = [s.url for s in cluster.servers]
    registries = [NatsRegistry(urls[i % 3], bucket="cas6", cache=False) for i in range(6)]
    try:
        for round_ in range(15):
            barrier = threading.Barrier(6)
            won: list[int] = []
            refused: list[int] = []

            def claim(i: int, name: str = f"cas/{round_}",
                      barrier: threading.Barrier = barrier, won: list[int] = won,
                      refused: list[int] = refused) -> None:
                barrier.wait(20)
                try:
                    registries[i].register(name, ADDR, credential=f"c{i}", lease=30)
                    won.append(i)
                except posa.Unauthorized:
                    refused.append(i)
            threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert (len(won), len(refused)) == (1, 5), f"round {round_}: winners {won}"
    finally:
        for reg in registries:
            reg.close()


def test_another_process_sees_a_registration_through_its_watch(cluster: NatsCluster) -> None:
    with NatsRegistry(cluster.urls, bucket="watched") as a, \
            NatsRegistry(cluster.urls, bucket="watched") as b:
        seen = threading.Event()
        stop = b.watch(lambda name, r: seen.set() if name == "w/x" and r else None)
        a.register("w/x", ADDR, credential="k", lease=30)
        assert seen.wait(15.0)
        assert b.lookup("w/x").addresses == tuple(ADDR)
        assert [r.name for r in b.names("w/**")] == ["w/x"]
        stop()


def test_registrations_go_on_when_the_bucket_leader_is_killed(
        tmp_path: Path) -> None:
    with NatsCluster(tmp_path, size=3) as nats, \
            NatsRegistry(nats.urls, bucket="ha", cache=False) as reg:
        reg.register("ha/before", ADDR, credential="k", lease=60)
        leader = leader_of(reg, nats)
        leader.kill()
        for i in range(20):             # each retried until a new leader answers
            reg.register(f"ha/after-{i}", ADDR, credential="k", lease=60)
            assert reg.lookup(f"ha/after-{i}").epoch == 1
        assert reg.renew("ha/before", credential="k").epoch == 1
        with pytest.raises(posa.Unauthorized):
            reg.register("ha/before", ADDR, credential="thief")
        leader.start()                  # it rejoins and catches up
        assert reg.lookup("ha/before").addresses == tuple(ADDR)


def test_two_dispatchers_on_one_store_clients_go_on_when_one_is_killed(
        tmp_path: Path) -> None:
    """Two dispatchers on one 3-node store: SIGKILL one, then the NATS server
    leading the bucket; a client given both dispatchers goes on, nothing lost."""
    with NatsCluster(tmp_path, size=3) as nats:
        first, a1 = start_dispatcher("--store", nats.urls, "--bucket", "dispatchers")
        second, a2 = start_dispatcher("--store", nats.urls, "--bucket", "dispatchers")
        try:
            with posa.RegistryClient(f"{a1},{a2}", timeout=30.0) as client, \
                    posa.RegistryClient(a2, timeout=30.0) as other, \
                    NatsRegistry(nats.urls, bucket="dispatchers") as store:
                client.register("svc/one", ADDR, credential="k", lease=60)
                assert other.lookup("svc/one").addresses == tuple(ADDR)   # one registry
                first.kill()
                for i in range(5):
                    client.register(f"svc/after-{i}", ADDR, credential="k", lease=60)
                assert client.address == a2
                leader_of(store, nats).kill()
                for i in range(5, 10):
                    client.register(f"svc/after-{i}", ADDR, credential="k", lease=60)
                assert client.lookup("svc/one").epoch == 1
                assert client.renew("svc/one", credential="k").epoch == 1
                listed = {r.name for r in other.names("svc/*")}
                assert listed == {"svc/one", *(f"svc/after-{i}" for i in range(10))}
        finally:
            first.close()
            second.close()


def test_a_dispatcher_store_and_a_state_file_are_exclusive(tmp_path: Path) -> None:
    from posa.dispatch.dispatcher import Dispatcher
    with posa.LocalRegistry() as store, pytest.raises(posa.PosaError, match="not both"):
        Dispatcher("tcp://127.0.0.1:0", state=str(tmp_path / "s"), registry=store)


def test_without_nats_py_the_error_says_what_to_install() -> None:
    code = ("import sys; sys.modules['nats'] = None\n"
            "try:\n    import posa; posa.NatsRegistry\n"
            "except ImportError as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60).stdout
    assert "pip install 'posa-messaging[nats]'" in out


def test_a_server_that_is_not_there_is_unreachable() -> None:
    from tests.support import free_port
    with pytest.raises(posa.Unreachable, match="start nats-server"):
        NatsRegistry(f"nats://127.0.0.1:{free_port()}", timeout=3.0)
    with pytest.raises(posa.PosaError, match="not a NATS address"):
        NatsRegistry("tcp://127.0.0.1:4222")



@pytest.mark.parametrize("args, says", [
    (["--store", "tcp://127.0.0.1:4222"], "is not a NATS address"),
    (["--store", "nats://127.0.0.1:4222", "--state", "s.db"], "exclude each other"),
])
def test_the_dispatcher_command_says_what_is_wrong_with_a_store(args: list[str],
                                                                 says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "posa", "dispatcher", "--listen",
                           "tcp://127.0.0.1:0", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode != 0 and says in done.stderr
