"""The nats:// transport (posa.transport.nats) on real nats-server processes:
the conformance suite, addresses, cutting frames to max_payload, and how loss
inside NATS (a slow consumer, a server gone) surfaces as an ended connection."""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posa import transport
from posa.errors import TransportError
from posa.transport import Options
from posa.transport import testing as conformance
from posa.transport.nats.listener import SLOW_FACTOR
from posa.transport.nats.wire import (
    DATA,
    MORE,
    RESET,
    Gap,
    Oversize,
    Reassembly,
    chunks,
    pack,
    unpack,
)
from posa.transport.testing.support import DEADLINE, Endpoints, seq
from tests.natsserver import NatsCluster
from tests.support import Proc, free_port, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats"), size=1) as running:
        yield running


@pytest.mark.timeout(120)
@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: conformance.Check, cluster: NatsCluster) -> None:
    check(lambda: cluster.urls)


# -- addresses, and loading only when used ------------------------------------------------

@pytest.mark.parametrize(("address", "says"), [
    ("nats://127.0.0.1", "HOST:PORT"),
    ("nats://127.0.0.1:4222,:5", "HOST:PORT"),
    ("nats://127.0.0.1:99999", "HOST:PORT"),
    ("nats://127.0.0.1:4222/posa.*", "no wildcards"),
    ("nats://127.0.0.1:4222/a..b", "dot-separated"),
])
def test_a_malformed_address_is_refused_saying_how_to_write_it(address: str,
                                                               says: str) -> None:
    with pytest.raises(TransportError, match=re.escape(says)):
        transport.listen(address)


def test_connecting_needs_the_listeners_subject() -> None:
    with pytest.raises(TransportError, match="names no listener"):
        transport.connect("nats://127.0.0.1:4222")


LAZY = """
import sys
from posa import transport
transport.listen("tcp://127.0.0.1:0").close()
transport.get("zmq+tcp")
print("after-tcp", "posa.transport.nats" in sys.modules, flush=True)
nats = transport.get("nats")
print("after-get", type(nats).__name__, "nats" in sys.modules, flush=True)
"""

MISSING = """
import sys
sys.modules["nats"] = None      # as if nats-py were not installed
from posa import transport
listener = transport.listen(sys.argv[1])
connection = transport.connect(listener.address)
connection.send(b"without nats-py")
route, frame = listener.recv(10.0)
listener.send(route, frame[::-1])
print("answered", connection.recv(10.0).decode(), "nats" in sys.modules and
      sys.modules["nats"] is not None, flush=True)
connection.close()
listener.close()
"""


def test_the_plugin_loads_when_its_scheme_is_used_and_never_loads_nats_py(
        ) -> None:
    proc = Proc.python(LAZY)
    try:
        assert proc.expect("after-tcp") == "False"
        assert proc.expect("after-get") == "NatsTransport False"
        assert proc.popen.wait(20) == 0
    finally:
        proc.close()


def test_the_transport_needs_no_nats_py(cluster: NatsCluster) -> None:
    """The transport speaks the NATS protocol itself (posa.transport.nats.client):
    with nats-py not importable, a listener and a connection still round-trip a
    frame, and nothing imports nats-py on the way."""
    proc = Proc.python(MISSING, cluster.urls)
    try:
        assert proc.expect("answered") == "yp-stan tuohtiw False"
        assert proc.popen.wait(20) == 0
    finally:
        proc.close()


# -- what NATS adds: other listeners' absence, max_payload, servers down ----------------

def test_connecting_to_a_subject_nobody_listens_on_is_refused(cluster: NatsCluster) -> None:
    with pytest.raises(TransportError, match="no nats listener"):
        transport.connect(cluster.urls + "/posa.nobody", Options(send_timeout=3.0))


def test_no_server_answering_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="no NATS server"):
        transport.connect(f"nats://127.0.0.1:{free_port()}/posa.x",
                          Options(send_timeout=1.0))


def test_frames_over_the_servers_max_payload_are_cut_and_put_back(
        cluster: NatsCluster) -> None:
    options = Options(max_frame_size=4 << 20)
    big = bytes(range(256)) * ((3 << 20) // 256) + b"tail"   # 3 MiB: > max_payload (1 MiB)
    with Endpoints() as ends:
        listener = ends.listen(cluster.urls, options)
        connection = ends.connect(listener.address, options)
        for frame in (big, b"small", big[:1 << 20]):
            connection.send(frame)
            route, got = listener.recv(DEADLINE)
            assert got == frame
            listener.send(route, frame[::-1])
            assert connection.recv(DEADLINE) == frame[::-1]


def test_threads_sending_small_and_cut_frames_on_one_client_keep_each_connection_in_order(
        cluster: NatsCluster) -> None:
    """Small frames a sending thread writes to the socket itself and frames over
    max_payload that the pump cuts, from four threads on connections that share one
    NATS client (one socket): every frame arrives whole, in its connection's order."""
    options = Options(max_frame_size=2 << 20)
    big = b"b" * ((1 << 20) + 4096)                  # over max_payload: cut by the pump
    frames = 300

    def frame(thread: int, i: int) -> bytes:
        head = b"%d:%d:" % (thread, i)
        return head + (big if i % 25 == 24 else b"s" * (i % 200))

    def sender(connection: transport.Connection, thread: int) -> None:
        for i in range(frames):
            connection.send(frame(thread, i))

    with Endpoints() as ends:
        listener = ends.listen(cluster.urls, options)
        connections = [ends.connect(listener.address, options) for _ in range(4)]
        threads = [threading.Thread(target=sender, args=(connection, k))
                   for k, connection in enumerate(connections)]
        for thread in threads:
            thread.start()
        got: dict[int, list[bytes]] = {k: [] for k in range(4)}
        for _ in range(4 * frames):
            _, data = listener.recv(DEADLINE)
            got[int(data.split(b":", 1)[0])].append(data)
        for thread in threads:
            thread.join(DEADLINE)
        for k in range(4):
            assert got[k] == [frame(k, i) for i in range(frames)], f"thread {k}'s frames"


def test_a_slow_consumer_ends_the_connection_instead_of_losing_frames_silently(
        cluster: NatsCluster) -> None:
    """Frames beyond what the listener holds unread are not dropped quietly: the
    connection ends (TransportError both ways), and what was delivered is a prefix."""
    options = Options(high_water_mark=4)        # the listener holds 16 x 4 frames
    with Endpoints() as ends:
        listener = ends.listen(cluster.urls, options)
        connection = ends.connect(listener.address, options)
        sent = 0
        with pytest.raises(TransportError, match="slow consumer"):
            for sent in range(100_000):             # bounded; ends long before
                connection.send(seq(sent))
                if sent % 64 == 63:
                    connection.recv_nowait()         # meets the RESET once it came
        got = []
        while (item := listener.recv_nowait()) is not None and len(got) <= sent:
            got.append(item[1])
        assert got == [seq(i) for i in range(len(got))], "not a prefix of what was sent"
        assert 0 < len(got) <= SLOW_FACTOR * 4 < sent
        assert listener.rejections["slow-consumer"] == 1
        again = ends.connect(listener.address, options)     # the listener goes on
        again.send(b"after")
        assert listener.recv(DEADLINE)[1] == b"after"


def test_a_connection_that_does_not_read_ends_instead_of_holding_frames_without_bound(
        cluster: NatsCluster) -> None:
    """The connection holds what arrives unread up to the listener's limit (16 x
    high_water_mark frames); the next frame ends it, and what it holds is a prefix."""
    options = Options(high_water_mark=4)
    limit = SLOW_FACTOR * 4
    with Endpoints() as ends:
        listener = ends.listen(cluster.urls, options)
        connection = ends.connect(listener.address, options)
        connection.send(b"hello")
        route, _ = listener.recv(DEADLINE)
        for i in range(limit + 1):
            listener.send(route, seq(i))

        def ended() -> bool:
            try:
                connection.send(b"probe")
            except TransportError:
                return True
            return False

        wait_until(ended, DEADLINE, "the connection ending")
        got = []
        with pytest.raises(TransportError, match="slow consumer"):
            while len(got) <= limit:
                got.append(connection.recv(DEADLINE))
        assert got == [seq(i) for i in range(limit)]


def test_a_listener_refuses_connections_past_max_connections_and_drops_idle_ones(
        cluster: NatsCluster) -> None:
    with Endpoints() as ends:
        listener = ends.listen(cluster.urls, Options(max_connections=1, idle_timeout=0.5))
        first = ends.connect(listener.address, Options())
        with pytest.raises(TransportError, match="max_connections"):
            ends.connect(listener.address, Options())
        assert listener.rejections["too-many-connections"] == 1
        with pytest.raises(TransportError, match="no frame for 0.5 s"):
            first.recv(DEADLINE)                    # silent: dropped at idle_timeout
        assert listener.rejections["idle-timeout"] == 1
        second = ends.connect(listener.address, Options())     # room again
        second.send(b"hello")
        assert listener.recv(DEADLINE)[1] == b"hello"


def test_a_restarted_server_ends_connections_and_serves_new_ones(tmp_path: Path) -> None:
    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        listener = ends.listen(lone.urls, Options())
        connection = ends.connect(listener.address, Options())
        connection.send(b"before")
        assert listener.recv(DEADLINE)[1] == b"before"
        lone.servers[0].kill()
        with pytest.raises(TransportError, match="went away"):
            connection.recv(DEADLINE)
        with pytest.raises(TransportError):
            connection.send(b"lost?")
        lone.servers[0].start()
        round_trip(ends, listener)


def test_a_forked_child_sending_on_an_inherited_connection_leaves_the_parents_alone(
        cluster: NatsCluster) -> None:
    """A child forked with a connection open shares the parent's socket to the
    server. Were it to write its frame there itself, the listener would take it as
    the parent's next frame (the child numbers as the parent does), then drop the
    parent's connection at the parent's own frame of that number. The child's send
    goes nowhere (no loop runs in it for that client); the parent's frames arrive
    as sent."""
    import os

    with Endpoints() as ends:
        listener = ends.listen(cluster.urls, Options())
        connection = ends.connect(listener.address, Options())
        for i in range(10):
            connection.send(seq(i))
        assert [listener.recv(DEADLINE)[1] for _ in range(10)] == [seq(i) for i in range(10)]
        pid = os.fork()
        if pid == 0:                                # the child: send, and leave at once
            try:
                connection.send(b"from the child")
            finally:
                os._exit(0)
        try:
            wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, DEADLINE,
                       "the child's exit")
        except AssertionError:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise
        for i in range(10, 20):
            connection.send(seq(i))
        got = [listener.recv(DEADLINE)[1] for _ in range(10)]
        assert got == [seq(i) for i in range(10, 20)]
        assert not listener.rejections, listener.rejections


# -- the wire, without a server ----------------------------------------------------------

def test_reassembly_refuses_gaps_repeats_and_oversize_frames() -> None:
    whole = bytes(range(200))
    parts = list(chunks(whole, 64))
    assert [kind for kind, _ in parts] == [MORE, MORE, MORE, DATA]
    inbound = Reassembly(limit=200)
    out = [inbound.feed(kind, n, body) for n, (kind, body) in enumerate(parts)]
    assert out == [None, None, None, whole]
    with pytest.raises(Gap, match="dropped 1"):
        inbound.feed(DATA, 5, b"x")
    repeated = Reassembly(10)
    assert repeated.feed(DATA, 0, b"") == b""
    with pytest.raises(Gap, match="again"):
        repeated.feed(DATA, 0, b"")
    small = Reassembly(limit=100)
    with pytest.raises(Oversize, match="max_frame_size 100"):
        for n, (kind, body) in enumerate(parts):
            small.feed(kind, n, body)
    assert unpack(pack(RESET, 0, b"why")) == (RESET, 0, b"why")
    with pytest.raises(ValueError, match="shorter"):
        unpack(b"D")


def test_the_fast_path_takes_only_a_whole_frame_due_next() -> None:
    """``Reassembly.whole`` takes a DATA message due next with no chunk before it
    and within the limit; anything else it leaves to ``feed``, untouched, so a
    gap, a repeat, a chunk or an oversize frame is refused as before."""
    inbound = Reassembly(limit=10)
    assert inbound.whole(pack(DATA, 0, b"first")) == b"first"
    assert inbound.whole(pack(DATA, 1, b"")) == b""
    assert inbound.whole(pack(DATA, 3, b"skipped 2")) is None
    assert inbound.whole(pack(DATA, 1, b"again")) is None
    assert inbound.whole(pack(DATA, 2, b"x" * 11)) is None
    assert inbound.whole(b"D") is None and inbound.whole(b"") is None
    assert inbound.whole(pack(MORE, 2, b"part")) is None
    assert inbound.feed(MORE, 2, b"part") is None
    assert inbound.whole(pack(DATA, 3, b"rest")) is None      # a chunk waits
    assert inbound.feed(DATA, 3, b"rest") == b"partrest"
    with pytest.raises(Gap, match="dropped 1"):
        inbound.feed(DATA, 5, b"x")


def round_trip(ends: Endpoints, listener: Any) -> None:
    """A new connection to ``listener`` gets a frame there and its answer back."""
    again = ends.connect(listener.address, Options(send_timeout=20.0))
    again.send(b"after")
    route, frame = listener.recv(DEADLINE)
    assert frame == b"after"
    listener.send(route, b"answer")
    assert again.recv(DEADLINE) == b"answer"
