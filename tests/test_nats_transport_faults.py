"""The nats:// transport's direct paths (posa.transport.nats.client) under the faults
the world brings, on real nats-server processes: threads writing to one shared
socket while the server is SIGKILLed or SIGSTOPped, and a socket whose kernel
buffer is so small that writes land in pieces. Each connection's frames arrive
whole and in order or the connection ends; nothing is silently lost while the
connection goes on."""
from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from posa.errors import PosaError, Timeout, TransportError
from posa.transport import Options
from posa.transport.nats.client import Client
from posa.transport.nats.loop import event_loop
from posa.transport.testing.support import DEADLINE, Endpoints
from tests.natsserver import NatsCluster
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)

BIG = b"B" * ((1 << 20) + 100)          # over max_payload: the pump cuts it in two


def tagged(k: int, i: int, body: bytes) -> bytes:
    return b"%d:%d:" % (k, i) + body


def untag(frame: bytes) -> tuple[int, int]:
    k, i, _ = frame.split(b":", 2)
    return int(k), int(i)


def senders(connections: list[Any], frames: int, body: Callable[[int], bytes],
            outcome: Counter[str], progress: threading.Condition | None = None,
            sent: list[int] | None = None) -> list[threading.Thread]:
    """A started thread per connection sending ``frames`` tagged frames; ``outcome``
    counts how each ended: "sent", a posa error's name, or "raw ..." (a leak).
    Given ``sent``, ``sent[0]`` counts the frames sent in all; ``progress`` is
    notified of every change to either."""
    lock = progress or threading.Condition()

    def run(k: int, connection: Any) -> None:
        ended = "sent"
        try:
            for i in range(frames):
                connection.send(tagged(k, i, body(i)))
                if sent is not None:
                    with lock:
                        sent[0] += 1
                        lock.notify_all()
        except PosaError as exc:
            ended = type(exc).__name__
        except Exception as exc:       # what leaks is what is counted
            ended = f"raw {type(exc).__name__}: {exc}"
        with lock:
            outcome[ended] += 1
            lock.notify_all()

    threads = [threading.Thread(target=run, args=(k, c)) for k, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    return threads


def assert_prefixes(got: list[bytes], connections: int, body: Callable[[int], bytes]) -> None:
    """What each connection delivered is frames 0, 1, 2 ... of it, whole."""
    expected = Counter[int]()
    for frame in got:
        k, i = untag(frame)
        assert i == expected[k], f"connection {k}: frame {i} after {expected[k] - 1}"
        assert frame == tagged(k, i, body(i)), f"connection {k}: frame {i} altered"
        expected[k] += 1
    assert set(expected) <= set(range(connections))


def test_a_server_killed_while_threads_keep_the_pump_busy_ends_every_connection(
        tmp_path: Path) -> None:
    """Four threads send frames over max_payload (the pump cuts and writes them)
    on connections sharing one client, and the server is SIGKILLed mid-stream.
    A socket lost under the pump's write takes every later write and
    holds none; were the pump to go on while the senders keep its queue full, the
    loop would never hear the socket is gone and every send would succeed into the
    void. Each of five rounds: every sender meets TransportError, the loop stays
    responsive, and what arrived is a prefix of each connection's frames."""
    options = Options(max_frame_size=4 << 20, high_water_mark=8, send_timeout=10.0)

    def body(i: int) -> bytes:
        return BIG if i % 4 else b"s" * i

    with NatsCluster(tmp_path, size=1) as lone:
        server = lone.servers[0]
        for round_ in range(5):
            outcome: Counter[str] = Counter()
            with Endpoints() as ends:
                listener = ends.listen(lone.urls, options)
                connections = [ends.connect(listener.address, options) for _ in range(4)]
                threads = senders(connections, 1000, body, outcome)
                got = [listener.recv(DEADLINE)[1] for _ in range(8)]
                server.kill()
                for _ in range(1000):           # bounded: the loop answers a no-op
                    event_loop().call(lambda: None, DEADLINE, "a no-op on the nats loop")
                    if not any(thread.is_alive() for thread in threads):
                        break
                for thread in threads:
                    thread.join(DEADLINE)
                assert outcome == {"TransportError": 4}, f"round {round_}: {outcome}"
                while (item := listener.recv_nowait()) is not None:
                    got.append(item[1])
                assert_prefixes(got, 4, body)
            server.start()


def test_a_tiny_socket_buffer_and_a_stopped_server_cut_writes_but_no_frame(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared client's socket gets a kernel send buffer of 4 KiB and the server
    is SIGSTOPped while four threads send small frames (written from the sending
    thread), 20 KiB ones and frames the pump cuts: writes land in pieces (the test
    waits until a sending thread's write did) and the pump waits on the full
    socket. After SIGCONT every frame of every connection arrives, whole, once,
    in order."""
    import signal

    options = Options(max_frame_size=4 << 20)
    frames = 300
    cut = threading.Event()
    send_locked = Client.send_locked

    def watched(self: Client, data: bytes) -> bool:
        queued = self.backlog
        wrote = send_locked(self, data)
        if wrote and not queued and self.backlog:      # the socket took part of it
            cut.set()
        return wrote

    monkeypatch.setattr(Client, "send_locked", watched)

    def body(i: int) -> bytes:
        return BIG if i % 100 == 99 else (b"m" * 20_000 if i % 10 == 9 else b"s" * (i % 300))

    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        server = lone.servers[0]
        listener = ends.listen(lone.urls, options)
        connections = [ends.connect(listener.address, options) for _ in range(4)]
        link = connections[0]._link             # type: ignore[attr-defined]
        tcp = link.client.sock
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        outcome: Counter[str] = Counter()
        got: list[bytes] = []
        server.signal(signal.SIGSTOP)
        # the loop idle (no HELLO or WELCOME of the connects still queued): a frame a
        # sender queues behind one is the pump's to write, and on a loaded machine
        # the pump wrote what filled the socket, cutting no sending thread's write
        wait_until(lambda: not link.queue and not link._scheduled and not link.client.backlog,
                   DEADLINE, "the link idle")
        try:
            threads = senders(connections, frames, body, outcome)
            assert cut.wait(DEADLINE), "no write from a sending thread landed in pieces"
        finally:
            server.signal(signal.SIGCONT)
        while len(got) < 4 * frames:
            got.append(listener.recv(DEADLINE)[1])
        for thread in threads:
            thread.join(DEADLINE)
        assert outcome == {"sent": 4}, outcome
        assert_prefixes(got, 4, body)
        assert Counter(untag(f)[0] for f in got) == {k: frames for k in range(4)}
        assert listener.recv_nowait() is None


def test_connections_failing_over_to_another_node_mid_send_deliver_prefixes(
        tmp_path: Path) -> None:
    """A listener on one node of a 3-node cluster; four connections on a client of
    their own (an address naming the two other nodes) send small and cut frames
    from four threads, and the node that client is on is SIGKILLed mid-stream. The
    client fails over to the third node while the threads' own writes race it:
    each connection ends (TransportError), what the listener got of each is a
    prefix, and new connections on the same client, now on the third node,
    deliver in order."""
    options = Options(max_frame_size=4 << 20, high_water_mark=64, send_timeout=20.0)

    def body(i: int) -> bytes:
        return BIG if i % 50 == 49 else b"s" * (i % 500)

    with NatsCluster(tmp_path, size=3) as cluster, Endpoints() as ends:
        first, second, third = cluster.servers
        listener = ends.listen(first.url, Options(max_frame_size=4 << 20))
        subject = listener.address.rsplit("/", 1)[1]
        elsewhere = f"nats://127.0.0.1:{second.port},127.0.0.1:{third.port}/{subject}"
        connections = [ends.connect(elsewhere, options) for _ in range(4)]
        got: list[bytes] = []
        reading = threading.Event()
        reading.set()

        def read() -> None:
            for _ in range(1_000_000):      # bounded; ends when told and drained
                try:
                    got.append(listener.recv(0.2)[1])
                except PosaError:
                    if not reading.is_set():
                        return

        reader = threading.Thread(target=read)
        reader.start()
        try:
            outcome: Counter[str] = Counter()
            threads = senders(connections, 3000, body, outcome)
            wait_until(lambda: len(got) >= 300, DEADLINE, "300 frames at the listener")
            second.kill()
            for thread in threads:
                thread.join(2 * DEADLINE)
            assert outcome == {"TransportError": 4}, outcome
        finally:
            reading.clear()
            reader.join(2 * DEADLINE)
        assert_prefixes(got, 4, body)
        again = [ends.connect(elsewhere, options) for _ in range(2)]
        for k, connection in enumerate(again):
            for i in range(100):
                connection.send(tagged(k, i, body(i)))
        after = [listener.recv(DEADLINE)[1] for _ in range(200)]
        assert_prefixes(after, 2, body)
        assert listener.recv_nowait() is None


def test_closing_connections_while_threads_send_on_them_ends_each_cleanly(
        tmp_path: Path) -> None:
    """Four threads send small and cut frames; each connection is closed from
    another thread mid-send, in turn, while the others go on. Each sender ends
    with Closed (nothing else leaks), what the listener got of each connection is
    a prefix, and a new connection's frame, on the same client's socket, comes
    after all of theirs."""
    options = Options(max_frame_size=4 << 20, high_water_mark=32)

    def body(i: int) -> bytes:
        return BIG if i % 40 == 39 else b"s" * (i % 700)

    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        listener = ends.listen(lone.urls, options)
        connections = [ends.connect(listener.address, options) for _ in range(4)]
        outcome: Counter[str] = Counter()
        threads = senders(connections, 100_000, body, outcome)
        got: list[bytes] = []
        for connection in connections:
            got += [listener.recv(DEADLINE)[1] for _ in range(50)]
            connection.close()
        for thread in threads:
            thread.join(DEADLINE)
        assert outcome == {"Closed": 4}, outcome
        again = ends.connect(listener.address, options)
        again.send(b"after")            # on the same socket: after all of theirs
        for _ in range(100_000):        # bounded: what the closed ones sent, then it
            frame = listener.recv(DEADLINE)[1]
            if frame == b"after":
                break
            got.append(frame)
        assert_prefixes(got, 4, body)
        assert listener.recv_nowait() is None


SENDING = """
import sys, threading
from posa import transport
from posa.transport import Options
options = Options(max_frame_size=4 << 20)
big = b"B" * ((1 << 20) + 100)
connections = [transport.connect(sys.argv[1], options) for _ in range(4)]

def send(k, connection):
    for i in range(1_000_000):
        connection.send(b"%d:%d:" % (k, i) + (big if i % 40 == 39 else b"s" * (i % 700)))

for k, connection in enumerate(connections):
    threading.Thread(target=send, args=(k, connection), daemon=True).start()
print("SENDING", flush=True)
sys.stdin.readline()
"""


def _probed(ends: Endpoints, listener: Any, got: list[bytes]) -> bool:
    """Send b"after" on a new connection and read the listener up to it (what
    comes before goes to ``got``); False if the probe ended first. A reader slower
    than the child's flood (a loaded machine) makes the server drop this process's
    client as a slow consumer: the listener survives it, the probe open then ends."""
    try:
        ends.connect(listener.address, Options()).send(b"after")
        for _ in range(1_000_000):      # bounded
            frame = listener.recv(DEADLINE)[1]
            if frame == b"after":
                return True
            got.append(frame)
    except (TransportError, Timeout):
        return False
    return False


def test_a_process_killed_mid_send_leaves_prefixes_and_no_garbage(tmp_path: Path) -> None:
    """Another process's four threads send small and cut frames, written to its
    socket from those threads and by its pump, and it is SIGKILLed mid-send, its
    last write likely cut mid-command: the server drops what was cut, the listener
    got a prefix of each connection with nothing it could not parse, and goes on."""
    from tests.support import Proc

    def body(i: int) -> bytes:
        return BIG if i % 40 == 39 else b"s" * (i % 700)

    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        listener = ends.listen(lone.urls, Options(max_frame_size=4 << 20))
        child = Proc.python(SENDING, listener.address)
        try:
            child.expect("SENDING")
            got = [listener.recv(DEADLINE)[1] for _ in range(2000)]
        finally:
            child.kill()
            child.close()
        for _ in range(5):      # the child's last frames may still be on the way
            if _probed(ends, listener, got):
                break
        else:
            raise AssertionError("5 probes of the listener after the kill went unheard")
        assert_prefixes(got, 4, body)
        assert not listener.rejections, listener.rejections


def test_after_failover_to_a_node_with_a_smaller_max_payload_frames_are_cut_to_it(
        tmp_path: Path) -> None:
    """A client on a node taking messages of 1 MiB fails over (SIGKILL) to one
    taking 64 KiB. The transport must cut frames to
    the server it is on now, not the one it first met: a frame of 512 KiB sent
    whole would be a protocol violation the server answers by closing the
    connection, again and again on every reconnection."""
    options = Options(max_frame_size=4 << 20, send_timeout=10.0)
    frame = bytes(range(256)) * 2048                   # 512 KiB

    cluster = NatsCluster(tmp_path, size=3)
    cluster.servers[1].max_payload = 65536
    with cluster, Endpoints() as ends:
        first, small, third = cluster.servers
        listener = ends.listen(third.url, options)
        subject = listener.address.rsplit("/", 1)[1]
        both = f"nats://127.0.0.1:{first.port},127.0.0.1:{small.port}/{subject}"
        before = ends.connect(both, options)
        before.send(frame)
        assert listener.recv(DEADLINE)[1] == frame
        first.kill()
        with pytest.raises(TransportError):
            before.recv(DEADLINE)                      # the client lost its server
        after = ends.connect(both, Options(max_frame_size=4 << 20, send_timeout=20.0))
        assert after._link.client.max_payload == 65536    # type: ignore[attr-defined]
        for i in range(3):
            after.send(frame[i:])
            route, got = listener.recv(DEADLINE)
            assert got == frame[i:]
        listener.send(route, b"answer")
        assert after.recv(DEADLINE) == b"answer"


def test_a_stopped_node_with_writes_waiting_for_it_is_left_for_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node a client is on is SIGSTOPped (a paused VM, a hung host: no RST,
    no FIN) while four threads send, so writes wait for it in the socket's buffer.
    The client finds it silent (its pings go unanswered: 1 s apart here) and must
    leave it for another node of the cluster: closing gracefully would wait for
    that buffer to drain, i.e. for as long as the node is stopped, and the
    connections would neither end nor fail over (their sends time out instead).
    Each connection ends with TransportError, and a new one on the same client
    reaches the listener through another node while the first is still stopped."""
    import signal

    from posa.transport.nats import link

    monkeypatch.setattr(link, "PING_INTERVAL", 1)
    options = Options(high_water_mark=64, send_timeout=30.0)

    with NatsCluster(tmp_path, size=3) as cluster, Endpoints() as ends:
        stopped, other, third = cluster.servers
        listener = ends.listen(third.url, options)
        subject = listener.address.rsplit("/", 1)[1]
        both = f"nats://127.0.0.1:{stopped.port},127.0.0.1:{other.port}/{subject}"
        connections = [ends.connect(both, options) for _ in range(4)]
        stopped.signal(signal.SIGSTOP)
        try:
            outcome: Counter[str] = Counter()
            threads = senders(connections, 5000, lambda i: b"w" * 10_000, outcome)
            for thread in threads:
                thread.join(3 * DEADLINE)
            assert outcome == {"TransportError": 4}, outcome
            again = ends.connect(both, Options(send_timeout=20.0))
            again.send(b"through another node")
            got = []                 # what was queued for them may follow them there
            for _ in range(100_000):
                frame = listener.recv(DEADLINE)[1]
                if frame == b"through another node":
                    break
                got.append(frame)
            assert_prefixes(got, 4, lambda i: b"w" * 10_000)
        finally:
            stopped.signal(signal.SIGCONT)


def test_a_link_closed_while_its_server_is_stopped_lets_its_socket_go(
        tmp_path: Path) -> None:
    """The last connection of a link closes while its server is SIGSTOPped with
    writes waiting in the socket: a graceful close would wait for the server to
    take them, for as long as it is stopped. The link gives it ``CLOSE_GRACE``
    seconds past its linger, then drops the socket, while the server is still
    stopped."""
    import signal

    options = Options(linger=0.2, send_timeout=5.0)
    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        server = lone.servers[0]
        listener = ends.listen(lone.urls, options)
        connection = ends.connect(listener.address, options)
        connection.send(b"first")
        assert listener.recv(DEADLINE)[1] == b"first"
        link = connection._link                 # type: ignore[attr-defined]
        tcp = link.client.sock
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server.signal(signal.SIGSTOP)
        try:
            for _ in range(40):
                connection.send(b"w" * 20_000)  # more than the socket can hold
            listener.close()                    # the link's last users let go
            connection.close()
            wait_until(lambda: tcp.fileno() == -1, DEADLINE,
                       "the link's socket was let go while its server was stopped")
        finally:
            server.signal(signal.SIGCONT)
