"""Group sends under faults: a dead member (a SIGKILLed process whose lease has not
run out) costs the live members nothing, and the sender learns which failed."""
from __future__ import annotations

import signal
import threading

import pytest

import posa
from tests.support import Proc

pytestmark = pytest.mark.timeout(120)

MEMBER = """
import sys, posa
reg = posa.RegistryClient(sys.argv[1])
peer = posa.Peer(sys.argv[2], registry=reg, listen="tcp://127.0.0.1:0", lease=60.0)
print("READY", flush=True)
while True:
    print("GOT", peer.receive().body, flush=True)
"""


def test_a_dead_member_costs_the_live_ones_nothing_and_is_reported(dispatcher: str) -> None:
    names = [f"grp/site/m{i}" for i in range(4)]
    members = {name: Proc.python(MEMBER, dispatcher, name) for name in names}
    try:
        for proc in members.values():
            proc.expect("READY")
        first_dead = members[names[0]]          # killed before anyone sent to it
        first_dead.kill()
        with posa.RegistryClient(dispatcher) as reg, \
             posa.Peer("grp/sender", registry=reg, listen="tcp://127.0.0.1:0") as sender:
            # a dead member holds a send to its deadline: 2 s, past the first rounds
            # of slices (0.05 + 0.1 + ... s), in which the live members are reached
            with pytest.raises(posa.PartialDelivery) as caught:
                sender.send("grp/site/*", "one", timeout=2.0)
            assert set(caught.value.failed) == {names[0]}
            assert caught.value.delivered == names[1:]
            assert all(isinstance(e, posa.PosaError) for e in caught.value.failed.values())
            assert names[0] in str(caught.value)
            for name in names[1:]:
                assert members[name].expect("GOT") == "one"

            connected_dead = members[names[1]]  # killed while the sender is connected
            connected_dead.kill()
            with pytest.raises(posa.PartialDelivery) as caught:
                sender.send("grp/site/*", "two", timeout=2.0)
            assert set(caught.value.failed) == {names[0], names[1]}
            assert caught.value.delivered == names[2:]
            for name in names[2:]:
                assert members[name].expect("GOT") == "two"
    finally:
        for proc in members.values():
            proc.close()


def test_a_group_of_live_members_is_reached_once_in_order(dispatcher: str) -> None:
    names = [f"grp/live/m{i}" for i in range(3)]
    members = {name: Proc.python(MEMBER, dispatcher, name) for name in names}
    try:
        for proc in members.values():
            proc.expect("READY")
        with posa.RegistryClient(dispatcher) as reg, \
             posa.Peer("grp/sender2", registry=reg, listen="tcp://127.0.0.1:0") as sender:
            for i in range(20):
                assert sender.send("grp/live/*", i, timeout=5.0) == 3
                sender.send(names[1], f"alone-{i}")
            for name, proc in members.items():
                got = [proc.expect("GOT") for _ in range(40 if name == names[1] else 20)]
                expected = ([item for i in range(20) for item in (str(i), f"alone-{i}")]
                            if name == names[1] else [str(i) for i in range(20)])
                assert got == expected
    finally:
        for proc in members.values():
            proc.close()


def test_a_handler_relays_to_a_group_in_its_own_process() -> None:
    """On the reactor thread a group send cannot wait for acknowledgements (members
    in this process are served by that thread): it reaches them all the same."""
    registry = posa.LocalRegistry()
    members = [posa.Peer(f"grp/local/m{i}", registry=registry) for i in range(3)]
    relay = posa.Peer("grp/relay", registry=registry)
    counts: list[int] = []
    relay.serve(lambda msg: counts.append(relay.send("grp/local/*", msg.body, timeout=5.0)))
    try:
        with posa.Peer("grp/origin", registry=registry) as origin:
            origin.send("grp/relay", "news")
            for member in members:
                assert member.receive(timeout=10).body == "news"
        assert counts == [3]
    finally:
        for peer in members + [relay]:
            peer.close()


def test_a_member_paused_for_less_than_the_deadline_is_reached_once(dispatcher: str) -> None:
    """A member that holds the message unacknowledged past a slice (stopped for a
    moment: SIGSTOP, a pause of its machine) keeps it in its stream for the next
    round: it is reached once it goes on, before the deadline. (Its first slice's
    flush gave the message up, for good: PartialDelivery after 0.05 s of 10.)"""
    names = ["grp/pause/m0", "grp/pause/m1"]
    members = {name: Proc.python(MEMBER, dispatcher, name) for name in names}
    try:
        for proc in members.values():
            proc.expect("READY")
        with posa.RegistryClient(dispatcher) as reg, \
             posa.Peer("grp/pauser", registry=reg, listen="tcp://127.0.0.1:0") as sender:
            assert sender.send("grp/pause/*", "warm", timeout=10.0) == 2
            for proc in members.values():
                assert proc.expect("GOT") == "warm"
            paused = members[names[0]].popen
            paused.send_signal(signal.SIGSTOP)
            resume = threading.Timer(0.5, paused.send_signal, (signal.SIGCONT,))
            resume.start()          # (the fault: a pause, shorter than the deadline)
            try:
                assert sender.send("grp/pause/*", "during", timeout=10.0) == 2
            finally:
                resume.join()
                paused.send_signal(signal.SIGCONT)
            assert sender.send("grp/pause/*", "after", timeout=10.0) == 2
            for proc in members.values():
                assert [proc.expect("GOT"), proc.expect("GOT")] == ["during", "after"]
    finally:
        for proc in members.values():
            proc.close()
