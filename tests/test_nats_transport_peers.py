"""Peers over nats:// on a real 3-node NATS cluster: talking by name, migrating
between tcp:// and nats:// under load, a slow consumer, and SIGKILL of the node
either side is connected to, mid-stream: nothing lost, nothing twice, in order."""
from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import posa
from posa.transport import Options
from tests.natsserver import NatsCluster, NatsServer
from tests.support import Proc, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats3"), size=3) as running:
        yield running


def test_a_peer_pair_sends_and_requests_over_a_three_node_cluster(
        cluster: NatsCluster, registry: posa.LocalRegistry) -> None:
    with posa.Peer("nx/a", registry=registry, listen=cluster.urls) as a, \
         posa.Peer("nx/b", registry=registry, listen=cluster.urls) as b:
        assert b.address.startswith(cluster.urls + "/posa.")
        received: list[int] = []
        b.serve(lambda m: received.append(m.body) if m.kind == posa.Kind.SEND
                else {"echo": m.body})
        for i in range(3000):
            a.send("nx/b", i)
        assert a.request("nx/b", "ping", timeout=10) == {"echo": "ping"}
        a.flush(20)
        assert received == list(range(3000))


@pytest.mark.parametrize("first", ["tcp", "nats", "nodes"])
def test_a_receiver_migrates_between_tcp_and_nats_while_a_sender_streams(
        first: str, cluster: NatsCluster, registry: posa.LocalRegistry) -> None:
    """tcp->nats->tcp->nats, nats->tcp->nats->tcp, and from node to node of the
    cluster (an address naming one server: its own client, on that server)."""
    tcp, nats = "tcp://127.0.0.1:0", cluster.urls
    node = [server.url for server in cluster.servers]
    hops = {"tcp": [tcp, nats, tcp, nats], "nats": [nats, tcp, nats, tcp],
            "nodes": [node[0], node[1], tcp, node[2]]}[first]
    start = hops.pop(0)
    with posa.Peer("nx/tx", registry=registry, listen=tcp) as a, \
         posa.Peer("nx/rx", registry=registry, listen=start) as b:
        received: list[int] = []
        b.serve(lambda m: received.append(m.body))
        total, per_hop = 6000, 6000 // (len(hops) + 1)
        for i in range(total):
            a.send("nx/rx", i, timeout=30)
            if i % per_hop == per_hop - 1 and hops:
                b.migrate(hops.pop(0), grace=0.5)
        a.flush(30)
        assert received == list(range(total)), "lost, repeated or reordered"
        assert b.epoch >= 4
        assert registry.lookup("nx/rx").addresses == (b.address,)


def test_a_slow_consumer_over_nats_is_resent_not_lost(
        cluster: NatsCluster, registry: posa.LocalRegistry) -> None:
    """The receiver's inbox is full and it stops reading its listener; NATS gives
    no backpressure, so the listener drops the connection past its limit (counted
    as a slow consumer) and the sender resends once the receiver reads again."""
    total = 400
    with posa.Peer("nx/fast", registry=registry, listen="tcp://127.0.0.1:0") as a, \
         posa.Peer("nx/slow", registry=registry, listen=cluster.urls, inbox_size=10,
                   options=Options(high_water_mark=4)) as b:
        pad = b"x" * 8000          # 4 to a BATCH frame: 100 frames, over the limit of 64
        for i in range(total):
            a.send("nx/slow", (i, pad), timeout=30)
        wait_until(lambda: b.transport_rejections().get("slow-consumer", 0) >= 1, 30.0,
                   "the unread listener dropping the connection")
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.extend(
            b.receive(timeout=30).body[0] for _ in range(total)))
        reader.start()         # the sender resends while it flushes, so both at once
        a.flush(30)
        reader.join(30)
        assert got == list(range(total)), "lost, repeated or reordered"
        assert b.transport_rejections().get("slow-consumer", 0) >= 1
        with pytest.raises(posa.Timeout):
            b.receive(timeout=0.2)


RECEIVER = """
import json, sys, posa
dispatcher, servers, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
reg = posa.RegistryClient(dispatcher)
with posa.Peer("nx/receiver", registry=reg, listen=servers) as peer:
    print("READY", flush=True)
    got = []
    while len(got) < total:
        got.append(peer.receive(timeout=60).body)
        if len(got) % (total // 3) == 0:
            print("GOT", len(got), flush=True)
    extra = []
    try:
        extra.append(peer.receive(timeout=0.5).body)
    except posa.Timeout:
        pass
    print("RESULT", json.dumps({"exact": got == list(range(total)), "extra": extra}),
          flush=True)
    sys.stdin.readline()
reg.close()
"""

SENDER = """
import sys, posa
dispatcher, servers, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
reg = posa.RegistryClient(dispatcher)
with posa.Peer("nx/sender", registry=reg, listen=servers) as peer:
    for part in range(3):
        sys.stdin.readline()                       # go
        for i in range(part * total // 3, (part + 1) * total // 3):
            peer.send("nx/receiver", i, timeout=60)
        peer.flush(60)          # an idle thread resends nothing: it waits for acks here
        print("PART", part, flush=True)
    peer.flush(60)
    print("SENT", flush=True)
    sys.stdin.readline()
reg.close()
"""


def _order(cluster: NatsCluster, first: int) -> str:
    """The cluster's servers, ``first`` first: a process dials the first listed."""
    ports = [s.port for s in cluster.servers]
    ports = ports[first:] + ports[:first]
    return "nats://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def _clients(server: NatsServer) -> set[str]:
    """The names of the clients ``server`` serves (its monitoring /connz)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz",
                                timeout=5.0) as answer:
        return {c.get("name", "") for c in json.load(answer)["connections"]}


def test_peers_on_different_nodes_survive_sigkill_of_either_node_mid_stream(
        tmp_path: Path, dispatcher: str) -> None:
    total = 3000
    with NatsCluster(tmp_path, size=3) as own:
        receiver = Proc.python(RECEIVER, dispatcher, _order(own, 0), str(total))
        sender = Proc.python(SENDER, dispatcher, _order(own, 1), str(total))
        try:
            receiver.expect("READY")
            sender.tell("go")
            sender.expect("PART 0")
            rx, tx = f"posa-{receiver.popen.pid}", f"posa-{sender.popen.pid}"
            assert rx in _clients(own.servers[0]) and tx in _clients(own.servers[1])
            assert receiver.expect("GOT", 60) == str(total // 3)
            sender.tell("go")
            own.servers[0].kill()                  # the receiver's node, mid-stream
            assert receiver.expect("GOT", 90) == str(2 * total // 3)
            own.servers[0].start()                 # back, empty
            sender.tell("go")
            own.servers[1].kill()                  # the sender's node, mid-stream
            result = receiver.json("RESULT", 90)
            sender.expect("SENT", 60)
            assert result == {"exact": True, "extra": []}
            sender.tell("done")
            receiver.tell("done")
            assert sender.popen.wait(30) == 0 and receiver.popen.wait(30) == 0
        finally:
            receiver.close()
            sender.close()
