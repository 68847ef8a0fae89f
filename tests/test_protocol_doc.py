"""docs/protocol.md is enough to write a client from.

The client below was written from that page alone: plain sockets, ``struct`` and
msgpack, the tcp framing as the page gives it, no posa module. posa is imported
(or run as a command) only to start the real services the client talks to: a
``posa dispatcher`` process, a ``posa channel`` process and a ``posa.Peer``. The
client registers, renews and looks names up at the dispatcher, requests a posa
peer and answers one (the REPLY carries the name the request was sent to),
acknowledges a duplicate (and, to show the trap, a receiver that does not leaves
its sender in ``Timeout``), and subscribes to an event channel, publishing to it
and decoding its deliveries' binary bodies.

The last tests keep the page's tables of kinds, of fields by kind and of error
codes equal to the code.
"""
from __future__ import annotations

import re
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.support import Proc

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------
# The raw client, from docs/protocol.md: "The envelope", "Kinds", "Fields by kind",
# "Streams", "What each side must do", "TCP framing".
# ---------------------------------------------------------------------------------
GREETING = b"POSA" + struct.pack(">HH", 1, 0)        # version 1, flags 0
SEND, REQUEST, REPLY, ERROR, ACK, MOVED, EVENT, NOTIFY, BATCH = range(1, 10)
VERSION, KIND, STREAM, ID, SENDER, RECIPIENT, CORRELATION, HEADERS, BODY = range(9)


def frame(kind: int, stream: int, id: int, sender: str, recipient: str,
          correlation: int = 0, headers: dict[str, Any] | None = None,
          body: Any = None) -> bytes:
    """One envelope as a tcp frame: a u32 big-endian length, then the msgpack array."""
    data = msgpack.packb([1, kind, stream, id, sender, recipient, correlation,
                          headers or {}, body], use_bin_type=True)
    return struct.pack(">I", len(data)) + data


class Frames:
    """The frames of one tcp byte stream, fed as they come."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[list[Any]]:
        self.buffer += data
        envelopes = []
        while len(self.buffer) >= 4:
            (length,) = struct.unpack(">I", self.buffer[:4])
            if len(self.buffer) < 4 + length:
                break
            envelopes.append(msgpack.unpackb(self.buffer[4:4 + length], raw=False))
            self.buffer = self.buffer[4 + length:]
        return envelopes


def host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


class Refused(Exception):
    """An ERROR answer: ``code``, ``type`` and ``text`` as its body gave them."""

    def __init__(self, code: int, kind: str, text: str) -> None:
        super().__init__(f"{code} {kind}: {text}")
        self.code, self.kind, self.text = code, kind, text


class RawClient:
    """The sending side: one connection, one stream per recipient name."""

    def __init__(self, address: str, name: str = "") -> None:
        self.name = name
        self.sock = socket.create_connection(host_port(address), timeout=10)
        self.sock.sendall(GREETING)                 # the connecting side first
        assert self.sock.recv(8, socket.MSG_WAITALL) == GREETING
        self.frames = Frames()
        self.streams: dict[str, list[int]] = {}     # name -> [stream id, next id]
        self.inbox: list[list[Any]] = []
        self.asked = 1000                           # ids of stream-less requests

    def close(self) -> None:
        self.sock.close()

    def _next(self, to: str) -> tuple[int, int]:
        stream = self.streams.setdefault(to, [secrets.randbits(63) + 1, 1])
        seq, stream[1] = stream[1], stream[1] + 1
        return stream[0], seq

    def send(self, to: str, body: Any) -> None:
        stream, seq = self._next(to)
        self.sock.sendall(frame(SEND, stream, seq, self.name, to, body=body))

    def request(self, to: str, body: Any, timeout: float = 10.0, *,
                stream_less: bool = False) -> Any:
        """The body of the answer to a REQUEST: the REPLY or ERROR whose ``sender``
        is ``to`` and ``correlation`` the request's ``id``; ``Refused`` for an ERROR.
        ``stream_less``: stream 0, an id not used before (a read such as lookup)."""
        if stream_less:
            self.asked += 1
            stream, seq = 0, self.asked
        else:
            stream, seq = self._next(to)
        self.sock.sendall(frame(REQUEST, stream, seq, self.name, to,
                                headers={"ttl": int(timeout * 1000)}, body=body))
        deadline = time.monotonic() + timeout
        while True:
            for envelope in self.inbox:
                if (envelope[KIND] in (REPLY, ERROR) and envelope[SENDER] == to
                        and envelope[CORRELATION] == seq):
                    self.inbox.remove(envelope)
                    if envelope[KIND] == ERROR:
                        raise Refused(*envelope[BODY])
                    return envelope[BODY]
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no answer from {to!r} within {timeout} s"
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            assert data, f"{to!r} closed the connection"
            # ACKs, notices and other answers come on the connection too: keep answers
            self.inbox += [e for e in self.frames.feed(data) if e[KIND] in (REPLY, ERROR)]


class RawPeer:
    """The receiving side: a tcp listener that delivers every stream in order and
    once, acknowledges every run that arrives (a duplicate too), and answers each
    request once (a repeat from the cache). ``withhold_acks`` runs go unacknowledged
    first, as if their ACKs were lost. The traps: ``ack_duplicates=False``, and
    ``reply_as`` (a REPLY from another name than the request was sent to)."""

    def __init__(self, handler: Callable[[Any], Any] | None = None, *,
                 withhold_acks: int = 0, ack_duplicates: bool = True) -> None:
        self.handler = handler
        self.reply_as: str | None = None   # the trap: answer as another name
        self.withhold_acks = withhold_acks
        self.ack_duplicates = ack_duplicates
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.expected: dict[tuple[str, int], int] = {}      # (sender, stream) -> next id
        self.held: dict[tuple[str, int, int], list[Any]] = {}
        self.replies: dict[tuple[str, int, int], bytes] = {}
        self.delivered: list[list[Any]] = []
        self.duplicates = 0
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="raw-peer", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(10)
        self.listener.close()

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "the raw peer waited in vain"

    def bodies(self) -> list[Any]:
        with self.cond:
            return [envelope[BODY] for envelope in self.delivered]

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, None)
        conns: dict[socket.socket, Frames | None] = {}      # None: greeting not read yet
        try:
            while not self.stopping:
                for key, _ in selector.select(0.05):
                    if key.data is None and key.fileobj is self.listener:
                        conn, _ = self.listener.accept()
                        conns[conn] = None
                        selector.register(conn, selectors.EVENT_READ, "conn")
                        continue
                    conn = key.fileobj  # type: ignore[assignment]
                    data = conn.recv(65536)
                    if not data:
                        selector.unregister(conn)
                        conn.close()
                        del conns[conn]
                        continue
                    frames = conns[conn]
                    if frames is None:      # the greeting, then our own
                        assert data[:8] == GREETING, data[:8]
                        conn.sendall(GREETING)
                        frames = conns[conn] = Frames()
                        data = data[8:]
                    for envelope in frames.feed(data):
                        conn.sendall(self._receive(envelope))
        finally:
            for conn in conns:
                conn.close()
            selector.close()

    def _receive(self, envelope: list[Any]) -> bytes:
        """What to send back for one envelope: answers, then the stream's ACK."""
        kind, stream, sender, me = (envelope[KIND], envelope[STREAM], envelope[SENDER],
                                    envelope[RECIPIENT])
        if kind == BATCH:
            run = envelope[BODY]            # SEND/REQUEST envelopes of this stream
        elif kind in (SEND, REQUEST) and stream:
            run = [envelope]
        else:
            return b""
        out = b""
        key = (sender, stream)
        duplicate = False
        with self.cond:
            for inner in run:
                seq = inner[ID]
                expected = self.expected.setdefault(key, seq)   # the first seen sets it
                if seq < expected:
                    self.duplicates += 1
                    if inner[KIND] == REQUEST:      # its answer may be what was lost
                        out += self.replies.get((sender, stream, seq), b"")
                    duplicate = True
                    continue
                duplicate = False
                self.held[(sender, stream, seq)] = inner
                while (sender, stream, self.expected[key]) in self.held:
                    out += self._deliver(self.held.pop((sender, stream, self.expected[key])))
                    self.expected[key] += 1
            self.cond.notify_all()
        if self.withhold_acks:
            self.withhold_acks -= 1
            return out
        if duplicate and not self.ack_duplicates:
            return out
        return out + frame(ACK, stream, self.expected[key] - 1, me, sender)

    def _deliver(self, envelope: list[Any]) -> bytes:
        self.delivered.append(envelope)
        if envelope[KIND] != REQUEST:
            return b""
        try:
            kind, body = REPLY, self.handler(envelope[BODY]) if self.handler else None
        except Exception as exc:
            kind, body = ERROR, [7, type(exc).__name__, str(exc)]
        # sender: the name the request was sent to, exactly; stream and id 0
        answer = frame(kind, 0, 0, self.reply_as or envelope[RECIPIENT], envelope[SENDER],
                       envelope[ID], body=body)
        self.replies[(envelope[SENDER], envelope[STREAM], envelope[ID])] = answer
        return answer


# ---------------------------------------------------------------------------------
# The real services under test
# ---------------------------------------------------------------------------------
DISPATCHER = "posa/dispatcher"
READY = re.compile(r"^posa dispatcher (\S+) listening on (\S+(?: \S+)*?)(?: ops on \S+)?$")


@pytest.fixture(scope="module")
def dispatcher() -> Iterator[str]:
    """A ``posa dispatcher`` process; ready when it prints the documented line."""
    proc = Proc.posa("dispatcher", "--listen", "tcp://127.0.0.1:0")
    try:
        line = proc.line(30)
        ready = READY.match(line)
        assert ready, f"not the documented ready line: {line!r}"
        yield ready.group(2).split()[0]
    finally:
        proc.close()


def lookup(client: RawClient, name: str) -> dict[str, Any]:
    reg: dict[str, Any] = client.request(DISPATCHER, {"op": "lookup", "name": name})
    return reg


def register(client: RawClient, name: str, addresses: list[str], credential: str,
             **fields: Any) -> dict[str, Any]:
    reg: dict[str, Any] = client.request(DISPATCHER, {
        "op": "register", "name": name, "addresses": addresses,
        "credential": credential, **fields})
    return reg


def test_a_raw_client_registers_renews_and_looks_up_at_a_dispatcher(dispatcher: str) -> None:
    client = RawClient(dispatcher)      # anonymous: the dispatcher answers any sender
    try:
        name, mine, addresses = f"raw/reg-{secrets.token_hex(3)}", "any non-empty", \
            ["tcp://127.0.0.1:9"]
        first = register(client, name, addresses, mine)         # no epoch: the next one
        assert (first["name"], first["addresses"], first["epoch"]) == (name, addresses, 1)
        assert first["lease"] == 10 and first["meta"] == {}     # the defaults
        again = register(client, name, addresses, mine, epoch=None, lease=30,
                         meta={"role": "test"})
        assert (again["epoch"], again["lease"], again["meta"]) == (2, 30, {"role": "test"})
        assert lookup(client, name)["addresses"] == addresses
        with pytest.raises(Refused) as stale:
            register(client, name, addresses, mine, epoch=1)
        assert (stale.value.code, stale.value.kind) == (4, "StaleEpoch")
        for credential in ("another", ""):  # another owner's, or empty: Unauthorized
            with pytest.raises(Refused) as refused:
                register(client, name, addresses, credential)
            assert refused.value.code == 3
        with pytest.raises(Refused) as missing:
            client.request(DISPATCHER, {"op": "register", "name": name, "credential": mine})
        assert missing.value.code == 5 and "addresses" in missing.value.text
        assert client.request(DISPATCHER, {"op": "renew", "name": name,
                                           "credential": mine})["epoch"] == 2
        assert client.request(DISPATCHER, {"op": "unregister", "name": name,
                                           "credential": mine}) is None
        with pytest.raises(Refused) as gone:    # a renewal refused: register again
            client.request(DISPATCHER, {"op": "renew", "name": name, "credential": mine})
        assert gone.value.code == 2
        assert register(client, name, addresses, mine)["epoch"] == 3   # epochs never go back
        with pytest.raises(Refused) as unknown:
            lookup(client, f"{name}-none")
        assert unknown.value.code == 2
    finally:
        client.close()


def test_a_raw_client_looks_up_stream_less(dispatcher: str) -> None:
    """A lookup outside every stream: one REPLY or ERROR back, with the request's id."""
    client = RawClient(dispatcher)
    try:
        name, addresses = f"raw/less-{secrets.token_hex(3)}", ["tcp://127.0.0.1:9"]
        register(client, name, addresses, "raw-secret")
        for _ in range(3):
            found = client.request(DISPATCHER, {"op": "lookup", "name": name},
                                   stream_less=True)
            assert (found["name"], found["addresses"]) == (name, addresses)
        with pytest.raises(Refused) as unknown:
            client.request(DISPATCHER, {"op": "lookup", "name": f"{name}-none"},
                           stream_less=True)
        assert unknown.value.code == 2
        with pytest.raises(Refused) as malformed:
            client.request(DISPATCHER, {"op": "lookup"}, stream_less=True)
        assert malformed.value.code == 5 and "name" in malformed.value.text
    finally:
        client.close()


def test_a_raw_client_requests_a_posa_peer_and_answers_one(dispatcher: str) -> None:
    import posa  # only to run the real peer under test
    raw = RawPeer(lambda body: {"raw": body})
    client = RawClient(dispatcher, "raw/asker")
    try:
        for name in ("raw/answerer", "raw/alias"):  # one listener, two names
            register(client, name, [raw.address], "raw-secret")
        with posa.RegistryClient(dispatcher) as registry, \
             posa.Peer("demo/echo", registry=registry, listen="tcp://127.0.0.1:0",
                       handler=lambda msg: {"echo": msg.body}) as peer:
            echo = lookup(client, "demo/echo")
            assert echo["addresses"] == [peer.address]
            direct = RawClient(echo["addresses"][0], "raw/asker")
            try:
                assert direct.request("demo/echo", "hi") == {"echo": "hi"}
                assert direct.request("demo/echo", [1, 2]) == {"echo": [1, 2]}
            finally:
                direct.close()
            # the other way: a posa peer requests the raw one, by either name
            assert peer.request("raw/answerer", "q", timeout=20) == {"raw": "q"}
            assert peer.request("raw/alias", "r", timeout=20) == {"raw": "r"}
            raw.reply_as = "raw/answerer"   # the trap: a REPLY from another name
            with pytest.raises(posa.Timeout):
                peer.request("raw/alias", "s", timeout=2)
            assert raw.bodies()[-1] == "s"  # delivered and answered, never matched
    finally:
        client.close()
        raw.close()


@pytest.mark.parametrize("ack_duplicates", [True, False])
def test_a_raw_receiver_must_acknowledge_a_duplicate(dispatcher: str,
                                                      ack_duplicates: bool) -> None:
    import posa  # only to run the real peer under test
    raw = RawPeer(withhold_acks=1, ack_duplicates=ack_duplicates)   # the first ACK is lost
    client = RawClient(dispatcher)
    name = f"raw/dup-{int(ack_duplicates)}"
    try:
        register(client, name, [raw.address], "raw-secret")
        with posa.RegistryClient(dispatcher) as registry, \
             posa.Peer("demo/sender", registry=registry, listen="tcp://127.0.0.1:0",
                       linger=1.0) as peer:
            peer.send(name, "once")
            raw.wait(lambda: raw.delivered != [])
            if ack_duplicates:
                peer.flush(timeout=30)      # the resent copy was acknowledged
            else:                           # never acknowledged: resent until the deadline
                with pytest.raises(posa.Timeout):
                    peer.flush(timeout=3)
        assert raw.bodies() == ["once"] and raw.duplicates >= 1
    finally:
        client.close()
        raw.close()


@pytest.fixture
def channel(dispatcher: str) -> Iterator[tuple[str, str]]:
    """A ``posa channel`` process on tcp; yields its name and address."""
    name = f"events/raw-{secrets.token_hex(3)}"
    proc = Proc.posa("channel", name, "--dispatcher", dispatcher,
                     "--listen", "tcp://127.0.0.1:0")
    try:
        address = proc.expect(f"channel {name} at ", timeout=30)
        yield name, address
    finally:
        proc.terminate()
        proc.close()


def events_of(delivery: dict[str, Any]) -> list[tuple[int, str, Any]]:
    """(seq, topic, body) of every event of a delivery, from its runs."""
    events = []
    for run in delivery["runs"]:
        seqs, topics, blob = run[0], run[1], run[2]
        bodies = msgpack.unpackb(blob)                  # the bin holds one array
        if isinstance(seqs, int):
            seqs = list(range(seqs, seqs + len(bodies)))
        if isinstance(topics, str):
            topics = [topics] * len(bodies)
        events += list(zip(seqs, topics, bodies))
    return events


def test_a_raw_subscriber_gets_events_from_an_event_channel(
        dispatcher: str, channel: tuple[str, str]) -> None:
    name, address = channel
    raw = RawPeer()
    client = RawClient(dispatcher, "raw/sub")
    try:
        register(client, "raw/sub", [raw.address], "raw-secret")
        assert lookup(client, name)["addresses"] == [address]
        to_channel = RawClient(address, "raw/sub")
        anonymous = RawClient(address)
        try:
            with pytest.raises(Refused) as refused:     # deliveries go to a name
                anonymous.request(name, {"op": "subscribe"})
            assert refused.value.code == 5
            subscribed = to_channel.request(name, {"op": "subscribe", "topics": ["alarm/"]})
            assert subscribed["restarted"] is False and subscribed["replay_from"] is None
            bodies = [{"n": 1}, b"\x00raw", {"n": 3}, "four"]
            to_channel.send(name, {"op": "publish", "topics": ["alarm/a", "link/b",
                                                               "alarm/c", "alarm/d"],
                                   "bodies": msgpack.packb(bodies, use_bin_type=True)})
            to_channel.send(name, {"op": "publish", "topics": "alarm/e",
                                   "bodies": msgpack.packb([5], use_bin_type=True)})
            raw.wait(lambda: len([e for d in raw.delivered for e in events_of(d[BODY])]) >= 4)
            delivered = raw.delivered
            assert {(d[SENDER], d[RECIPIENT], d[KIND]) for d in delivered} == {
                (name, "raw/sub", SEND)}
            events = [e for d in delivered for e in events_of(d[BODY])]
            assert [(topic, body) for _, topic, body in events] == [
                ("alarm/a", {"n": 1}), ("alarm/c", {"n": 3}), ("alarm/d", "four"),
                ("alarm/e", 5)]
            seqs = [seq for seq, _, _ in events]
            assert seqs == sorted(seqs) and len(set(seqs)) == 4
            assert to_channel.request(name, {"op": "renew"})["known"] is True
            counters = to_channel.request(name, {"op": "unsubscribe"})
            assert isinstance(counters, dict)
            assert to_channel.request(name, {"op": "renew"})["known"] is False
        finally:
            to_channel.close()
            anonymous.close()
        client.request(DISPATCHER, {"op": "unregister", "name": "raw/sub",
                                    "credential": "raw-secret"})
    finally:
        client.close()
        raw.close()


# ---------------------------------------------------------------------------------
# The page's tables against the code
# ---------------------------------------------------------------------------------
def table_after(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``heading``."""
    page = (ROOT / "docs" / "protocol.md").read_text()
    start = page.index(heading)
    rows = []
    for line in page[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]       # past the header and its rule


def test_the_page_lists_every_kind_and_the_fields_of_each() -> None:
    from posa.wire.codec import Kind
    kinds = {(int(row[0]), row[1]) for row in table_after("### Kinds")}
    assert kinds == {(int(k), k.name) for k in Kind}, "docs/protocol.md, Kinds"
    fields = table_after("### Fields by kind")
    assert {tuple(row[0].split()) for row in fields} == {(str(int(k)), k.name) for k in Kind}, (
        "docs/protocol.md, Fields by kind: add a row for every kind")
    assert all(len(row) == 8 for row in fields), "a kind, then its seven fields"


def test_the_page_lists_every_error_code() -> None:
    from posa.errors import ERROR_CODES
    codes = {(int(row[0]), row[1]) for row in table_after("### Error codes")}
    assert codes == {(code, cls.__name__) for code, cls in ERROR_CODES.items()}
