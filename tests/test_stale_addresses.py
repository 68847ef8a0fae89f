"""A sender whose idea of where a name lives is out of date: the name moved (several
times, while the sender was idle), its peer crashed and restarted, or closed. Every
wait ends by the caller's deadline, and what a Timeout gave up is never sent again.

Receivers run in child processes (a crash needs one); the sender is this process.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest

import posa
from tests.support import Proc, free_port

pytestmark = pytest.mark.timeout(120)

MOVER = """
import socket, sys, time, posa
from urllib.parse import urlparse
dispatcher, listen = sys.argv[1], sys.argv[2]

def refused(address):
    url = urlparse(address.replace("zmq+", ""))
    try:
        if url.scheme == "ipc":
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(url.path)
        else:
            socket.create_connection((url.hostname, url.port), timeout=1.0).close()
        return False
    except OSError:
        return True

reg = posa.RegistryClient(dispatcher)
peer = posa.Peer("stale/mover", registry=reg, listen=listen, handler=lambda m: m.body)
print("READY", peer.address, flush=True)
for line in sys.stdin:
    old = peer.address
    peer.migrate(line.strip(), grace=0.0)  # MOVED goes to every sender seen, then old closes
    deadline = time.monotonic() + 10
    delay = 0.005
    while not refused(old):                # wait until the old address is dead
        assert time.monotonic() < deadline, f"{old} still answers"
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    print("MOVED", peer.address, peer.epoch, flush=True)
"""


@pytest.mark.parametrize(("chain", "timeout"), [
    (["tcp", "zmq+tcp", "zmq+ipc", "tcp"], 30.0),
    (["zmq+tcp", "tcp", "zmq+ipc", "zmq+tcp"], 4.5),
], ids=["from-tcp", "from-zmq"])
def test_a_request_after_a_chain_of_moves_while_the_sender_was_idle_arrives(
        dispatcher: str, tmp_path: Path, chain: list[str], timeout: float) -> None:
    """The sender's cached address and the MOVED notice waiting in its socket are
    both several moves old and dead: it re-resolves within its deadline (on main: a
    zmq send blocked 5 s past it, or a dead tcp hop raised TransportError at once)."""
    where = {"tcp": "tcp://127.0.0.1:0", "zmq+tcp": "zmq+tcp://127.0.0.1:0",
             "zmq+ipc": f"zmq+ipc://{tmp_path}/mover.sock"}
    mover = Proc.python(MOVER, dispatcher, where[chain[0]])
    reg = posa.RegistryClient(dispatcher)
    try:
        mover.expect("READY")
        with posa.Peer("stale/idle", registry=reg, listen="tcp://127.0.0.1:0") as sender:
            assert sender.request("stale/mover", "warm", timeout=20) == "warm"
            for hop in chain[1:]:
                mover.tell(where[hop])
                mover.expect("MOVED")
            assert sender.request("stale/mover", "after", timeout=timeout) == "after"
            for i in range(100):
                sender.send("stale/mover", i, timeout=timeout)
            sender.flush(timeout)
    finally:
        reg.close()
        mover.close()


HOLDER = """
import sys, posa
dispatcher, listen, credential = sys.argv[1], sys.argv[2], sys.argv[3]
reg = posa.RegistryClient(dispatcher)

def handle(msg):
    print("GOT", msg.body, flush=True)
    return msg.body

peer = posa.Peer("stale/holder", registry=reg, listen=listen, credential=credential,
                 lease=60.0, handler=handle)
print("READY", peer.epoch, flush=True)
sys.stdin.readline()
"""


class CountingRegistry:
    """A registry that counts the lookups of one name and says when a second
    one (a retry) happened."""

    def __init__(self, inner: posa.RegistryClient, name: str) -> None:
        self._inner, self._name = inner, name
        self.lookups = 0
        self.retried = threading.Event()

    def lookup(self, name: str) -> Any:
        if name == self._name:
            self.lookups += 1
            if self.lookups >= 2:
                self.retried.set()
        return self._inner.lookup(name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


def test_first_contact_with_a_crashed_peer_retries_until_it_restarts(dispatcher: str) -> None:
    """The peer was SIGKILLed and its lease still runs: first contact retries,
    re-resolving, and reaches it once it restarts (on main: TransportError at once)."""
    listen = f"tcp://127.0.0.1:{free_port()}"
    holder = Proc.python(HOLDER, dispatcher, listen, "secret-1")
    holder.expect("READY")
    holder.kill()
    inner = posa.RegistryClient(dispatcher)
    registry = CountingRegistry(inner, "stale/holder")
    outcome: list[Any] = []
    restarted = None
    try:
        with posa.Peer("stale/first", registry=cast(posa.RegistryClient, registry),
                       listen="tcp://127.0.0.1:0") as sender:
            def ask() -> None:
                try:
                    outcome.append(sender.request("stale/holder", "hello", timeout=30))
                except posa.PosaError as exc:
                    outcome.append(exc)
            thread = threading.Thread(target=ask)
            thread.start()
            try:
                retried = registry.retried.wait(20)
                assert retried, f"the sender did not retry: {outcome}"
                restarted = Proc.python(HOLDER, dispatcher, listen, "secret-1")
                restarted.expect("READY")
            finally:
                thread.join(60)
            assert outcome == ["hello"]
    finally:
        inner.close()
        holder.close()
        if restarted is not None:
            restarted.close()


def test_what_a_timeout_gave_up_never_reaches_the_next_owner_of_the_name(
        dispatcher: str) -> None:
    """After Timeout the message is not resent, not even to a new process that took
    the name; the next send starts a new stream there (on main: the new owner got
    the given-up message first)."""
    first = Proc.python(HOLDER, dispatcher, "tcp://127.0.0.1:0", "secret-2")
    second = None
    reg = posa.RegistryClient(dispatcher)
    try:
        first.expect("READY")
        with posa.Peer("stale/timeouts", registry=reg, listen="tcp://127.0.0.1:0") as sender:
            sender.send("stale/holder", "warm")
            sender.flush(20)
            assert first.expect("GOT") == "warm"
            first.kill()
            with pytest.raises(posa.Timeout) as info:
                sender.send("stale/holder", "given up", timeout=1.0)
                sender.flush(1.0)
            second = Proc.python(HOLDER, dispatcher, "tcp://127.0.0.1:0", "secret-2")
            second.expect("READY")
            for body in ("fresh", "end"):
                sender.send("stale/holder", body, timeout=20)
            sender.flush(20)
            assert [second.expect("GOT") for _ in range(2)] == ["fresh", "end"]
            assert "gave up 1 unacknowledged message" in str(info.value)
    finally:
        reg.close()
        first.close()
        if second is not None:
            second.close()


CLOSER = """
import sys, posa
dispatcher = sys.argv[1]
reg = posa.RegistryClient(dispatcher)
for line in sys.stdin:
    peer = posa.Peer("stale/closer", registry=reg, listen=line.strip())
    print("READY", flush=True)
    print("GOT", peer.receive(timeout=30).body, flush=True)
    peer.close()
    print("CLOSED", flush=True)
"""


@pytest.mark.parametrize("listen", ["zmq+tcp://127.0.0.1:0", "tcp://127.0.0.1:0"])
def test_an_acknowledgement_sent_before_the_receiver_closed_is_read_after(
        dispatcher: str, listen: str) -> None:
    """The receiver acknowledged, then closed: the sender still reads that ACK
    and flushes at once (on main, over zmq, the ACK was lost in most rounds and
    the flush waited out its deadline for a message that was delivered)."""
    closer = Proc.python(CLOSER, dispatcher)
    reg = posa.RegistryClient(dispatcher)
    try:
        for round_ in range(5):
            closer.tell(listen)
            closer.expect("READY")
            with posa.Peer(f"stale/sender{round_}", registry=reg,
                           listen="tcp://127.0.0.1:0", linger=0.0) as sender:
                sender.send("stale/closer", round_)
                assert closer.expect("GOT") == str(round_)
                closer.expect("CLOSED")
                sender.flush(10)            # the ACK is there to read
    finally:
        reg.close()
        closer.close()


LISTENER = """
import sys, posa
reg = posa.RegistryClient(sys.argv[1])
with posa.Peer("stale/listener", registry=reg, listen="tcp://127.0.0.1:0", lease=60.0) as p:
    print("READY", flush=True)
    print("GOT", p.receive(timeout=60).body, flush=True)
    p.flush(10)
"""


def test_a_first_send_while_the_dispatcher_restarts_waits_for_it(tmp_path: Path) -> None:
    from tests.support import start_dispatcher
    port, state = free_port(), str(tmp_path / "names.state")
    dispatcher, address = start_dispatcher("--state", state, port=port)
    listener = Proc.python(LISTENER, address)
    try:
        listener.expect("READY")
        with posa.RegistryClient(address) as reg, \
                posa.Peer("stale/first", registry=reg, listen="tcp://127.0.0.1:0",
                          lease=60.0) as sender:
            dispatcher.close()                # SIGKILL: its registrations are in the file
            done: list[BaseException | int] = []
            thread = threading.Thread(target=lambda: done.append(
                _attempt(sender, "stale/listener", "hello")))
            thread.start()
            dispatcher, _ = start_dispatcher("--state", state, port=port)
            thread.join(30)
            assert done == [1], done
            assert listener.expect("GOT") == "hello"
    finally:
        listener.close()
        dispatcher.close()


def _attempt(peer: posa.Peer, name: str, body: str) -> BaseException | int:
    try:
        return peer.send(name, body, timeout=20)
    except posa.PosaError as exc:
        return exc
