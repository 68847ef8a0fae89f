"""Peers in separate processes, finding each other through a real `posa dispatcher`."""
from __future__ import annotations

import threading

import pytest

import posa
from tests.support import Proc

pytestmark = pytest.mark.timeout(120)


EXCHANGE = """
import json, sys, posa
me, other, n, dispatcher = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
reg = posa.RegistryClient(dispatcher)
with posa.Peer(me, registry=reg, listen="tcp://127.0.0.1:0") as peer:
    print("READY", flush=True)
    sys.stdin.readline()                       # go
    for i in range(n):
        peer.send(other, {"seq": i, "body": b"x" * 83})
    got = [peer.receive(timeout=30).body["seq"] for _ in range(n)]
    peer.flush(30)
    print("RESULT", json.dumps({"in_order": got == list(range(n)), "count": len(got)}),
          flush=True)
    sys.stdin.readline()                       # both are done: close
reg.close()
"""


def test_two_processes_exchange_ten_thousand_messages_by_name(dispatcher: str) -> None:
    a = Proc.python(EXCHANGE, "net/a", "net/b", "10000", dispatcher)
    b = Proc.python(EXCHANGE, "net/b", "net/a", "10000", dispatcher)
    try:
        a.expect("READY")
        b.expect("READY")
        a.tell("go")
        b.tell("go")
        for proc in (a, b):
            assert proc.json("RESULT", timeout=90) == {"in_order": True, "count": 10000}
        a.tell("done")
        b.tell("done")
        assert a.popen.wait(20) == 0 and b.popen.wait(20) == 0
    finally:
        a.close()
        b.close()


RECEIVER = """
import json, sys, time, tempfile, posa
dispatcher, total = sys.argv[1], int(sys.argv[2])
hops = ["zmq+tcp://127.0.0.1:0", "zmq+ipc://" + tempfile.mkdtemp() + "/r.sock",
        "tcp://127.0.0.1:0"]
reg = posa.RegistryClient(dispatcher)
with posa.Peer("net/receiver", registry=reg, listen="tcp://127.0.0.1:0") as peer:
    print("READY", flush=True)
    got, stamps, moves = [], [], []
    while len(got) < total:
        got.append(peer.receive(timeout=30).body)
        stamps.append(time.perf_counter())
        if hops and len(got) % (total // 4) == 0:
            moves.append(len(got))
            peer.migrate(hops.pop(0), grace=1.0)
    # blackout: the longest gap between deliveries in the 200 after each move
    blackout = max(b - a for m in moves for a, b in zip(stamps[m - 1:m + 200],
                                                          stamps[m:m + 200]))
    print("RESULT", json.dumps({"exact": got == list(range(total)), "epoch": peer.epoch,
                                "address": peer.address,
                                "blackout_ms": round(blackout * 1000, 2)}), flush=True)
reg.close()
"""

SENDER = """
import sys, posa
dispatcher, total = sys.argv[1], int(sys.argv[2])
reg = posa.RegistryClient(dispatcher)
with posa.Peer("net/sender", registry=reg, listen="tcp://127.0.0.1:0") as peer:
    for i in range(total):
        peer.send("net/receiver", i, timeout=20)
    peer.flush(30)
    print("SENT", flush=True)
reg.close()
"""


def test_receiver_migrates_three_times_across_transports_while_a_sender_streams(
        dispatcher: str) -> None:
    receiver = Proc.python(RECEIVER, dispatcher, "5000")
    sender = None
    try:
        receiver.expect("READY")
        sender = Proc.python(SENDER, dispatcher, "5000")
        sender.expect("SENT", timeout=90)
        result = receiver.json("RESULT", timeout=90)
        assert result["exact"], "the receiver did not see exactly 0..4999 in order"
        assert result["epoch"] == 4 and result["address"].startswith("tcp://")
        print(f"migration blackout: {result['blackout_ms']} ms")
    finally:
        receiver.close()
        if sender is not None:
            sender.close()


HOLDER = """
import sys, posa
dispatcher, name, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
reg = posa.RegistryClient(dispatcher)
peer = posa.Peer(name, registry=reg, listen="tcp://127.0.0.1:0", lease=lease)
print("READY", flush=True)
while True:
    print("GOT", peer.receive().body, flush=True)
"""


def test_a_dead_peers_name_disappears_after_its_lease(dispatcher: str) -> None:
    holder = Proc.python(HOLDER, dispatcher, "net/mortal", "1.0")
    gone = threading.Event()
    with posa.RegistryClient(dispatcher) as reg:
        stop = reg.watch(lambda name, r: gone.set() if name == "net/mortal" and r is None
                         else None)
        try:
            holder.expect("READY")
            assert reg.lookup("net/mortal").lease == 1.0
            holder.kill()
            assert gone.wait(10), "the dead peer's name was still registered after 10 s"
            with pytest.raises(posa.NameNotFound, match="net/mortal"):
                reg.lookup("net/mortal")
        finally:
            stop()
            holder.close()


HIJACKER = """
import sys, posa
reg = posa.RegistryClient(sys.argv[1])
try:
    posa.Peer("net/owned", registry=reg, listen="tcp://127.0.0.1:0")
except posa.Unauthorized as exc:
    print("REFUSED", exc, flush=True)
else:
    print("HIJACKED", flush=True)
reg.close()
"""


def test_a_second_registrant_in_another_process_is_refused(dispatcher: str) -> None:
    owner = Proc.python(HOLDER, dispatcher, "net/owned", "10")
    hijacker = None
    try:
        owner.expect("READY")
        hijacker = Proc.python(HIJACKER, dispatcher)
        assert "net/owned" in hijacker.expect("REFUSED")
        with posa.RegistryClient(dispatcher) as reg:
            with posa.Peer("net/client", registry=reg, listen="tcp://127.0.0.1:0") as client:
                client.send("net/owned", "still yours")
                assert owner.expect("GOT") == "still yours"
    finally:
        owner.close()
        if hijacker is not None:
            hijacker.close()
