"""Uncached lookups as stream-less requests: the client's line (posa.naming.lookups)
and the dispatcher's lean lane for them (posa.delivery.quick)."""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import posa
from posa import transport
from posa.delivery.requests import Requests
from posa.delivery.sender import Sender
from posa.errors import NameNotFound, ProtocolError, Rejected, Timeout, Unauthorized
from posa.naming.lookups import LookupLine
from posa.naming.protocol import DISPATCHER, OPS, registration_to_wire
from posa.naming.registration import Registration, resolver
from posa.security import HmacAuthenticator, Keyring
from posa.transport.base import Options
from posa.wire.codec import Codec, Kind, error_body
from tests.support import sigstop, start_dispatcher

pytestmark = pytest.mark.timeout(60)

NAME = "lab/lookup-line"
ADDRESS = "tcp://127.0.0.1:9"


@pytest.fixture
def dispatcher() -> Iterator[posa.Dispatcher]:
    with posa.Dispatcher("tcp://127.0.0.1:0") as d:
        d.registry.register(NAME, [ADDRESS], credential="c" * 16, lease=60.0)
        yield d


def line_to(address: str, **kwargs: Any) -> LookupLine:
    return LookupLine(address, codec=Codec(), options=Options(), **kwargs)


def raw_request(codec: Codec, id: int, body: Any, stream: int = 0) -> bytes:
    return codec.pack(Kind.REQUEST, stream, id, "", DISPATCHER, 0, {"ttl": 5000}, body)


def answer_to(conn: Any, id: int, codec: Codec) -> Any:
    while True:
        msg = codec.decode(conn.recv(timeout=10))
        if msg.correlation == id:
            return msg


def test_a_lookup_takes_the_line_and_the_lane(dispatcher: posa.Dispatcher) -> None:
    received = dispatcher.peer.stats["received"]
    with posa.RegistryClient(dispatcher.address, cache=False) as reg:
        found = reg.lookup(NAME)
        assert (found.name, found.addresses) == (NAME, (ADDRESS,))
        with pytest.raises(NameNotFound):
            reg.lookup("lab/absent")
    assert dispatcher.peer.stats["received"] == received + 2
    # no stream was opened for them: nothing waits to be acknowledged or kept
    receiver = dispatcher.peer._receiver
    assert not receiver.requests.replies and not receiver.pending


def test_a_lookup_is_answered_with_the_registration_in_force(dispatcher: posa.Dispatcher
                                                            ) -> None:
    """The lane answers with bytes packed once per registration: a new one (other
    addresses, meta, the next epoch) is answered at once, a gone one never."""
    registry = dispatcher.registry
    with posa.RegistryClient(dispatcher.address, cache=False) as reg:
        first = reg.lookup(NAME)
        assert registration_to_wire(first) == {
            **registration_to_wire(registry.lookup(NAME)), "expires_in": first.expires_in}
        registry.register(NAME, ["tcp://127.0.0.1:10"], credential="c" * 16, lease=60.0,
                          meta={"service": "lab/s"})
        found = reg.lookup(NAME)
        assert (found.addresses, found.epoch, found.meta) == (
            ("tcp://127.0.0.1:10",), first.epoch + 1, {"service": "lab/s"})
        registry.unregister(NAME, credential="c" * 16)
        with pytest.raises(NameNotFound):
            reg.lookup(NAME)
        registry.register(NAME, [ADDRESS], credential="c" * 16, lease=60.0)
        assert reg.lookup(NAME).epoch == first.epoch + 2
    codec = Codec()     # with the federation's fields too (parsed in full)
    with transport.connect(dispatcher.address) as conn:
        conn.send(raw_request(codec, 8, {"op": "lookup", "name": NAME, "via": [],
                                         "hops": 0}))
        assert answer_to(conn, 8, codec).body["addresses"] == [ADDRESS]


@pytest.mark.parametrize("id", [0, 1, 127, 128, 255, 65536, 1 << 31, 1 << 32, (1 << 64) - 1])
@pytest.mark.parametrize("sender, recipient", [("", DISPATCHER), ("lab/a" * 50, "posa/x"),
                                               ("é", "posa/dispatcher/n")])
def test_a_packed_reply_is_the_frame_the_codec_packs(id: int, sender: str,
                                                     recipient: str) -> None:
    codec = Codec()
    requests = Requests("posa/dispatcher/n", frozenset({"posa/dispatcher/n", DISPATCHER}),
                        pack=codec.packer(), seal=bytes)
    body = registration_to_wire(Registration(NAME, (ADDRESS,), 3, 5.0, 4.5, {"a": [1]}))
    for _ in range(2):      # the envelope's head made, then kept
        msg = codec.decode(codec.pack(Kind.REQUEST, 0, id, sender, recipient, 0, {}, None))
        assert requests.packed_reply(msg, msgpack.packb(body)) == requests.frame(
            msg, Kind.REPLY, body)[1]


@pytest.mark.parametrize("id", [1, 65535, 65536, (1 << 31) + 5, (1 << 32) - 1, 1 << 32])
@pytest.mark.parametrize("name", [NAME, "é/" + "n" * 200, "n" * 300, "\ud800", 7])
@pytest.mark.parametrize("timeout", [5.0, 0.0001])
def test_a_lookup_request_is_the_frame_the_codec_packs(id: int, name: Any,
                                                       timeout: float) -> None:
    """The request joined from the bytes of the last one is what ``Pack`` makes of
    its fields, byte for byte; a name msgpack refuses is refused as ``Pack`` does."""
    codec, line = Codec(), line_to("tcp://127.0.0.1:9")
    fields = (Kind.REQUEST, 0, id, "", DISPATCHER, 0, {"ttl": max(1, int(timeout * 1000))},
              {"op": "lookup", "name": name})
    for asked in (timeout, timeout, 7.0, timeout):  # made, kept, made anew for a new ttl
        if asked != timeout:
            line._frame(id, NAME, asked)
            continue
        if name == "\ud800":
            with pytest.raises(ProtocolError, match="cannot encode"):
                line._frame(id, name, timeout)
        else:
            assert line._frame(id, name, timeout) == codec.pack(*fields)


def test_a_lookup_over_a_stream_is_still_answered(dispatcher: posa.Dispatcher) -> None:
    """What earlier clients send: the lookup as a REQUEST of a reliable stream."""
    sender = Sender("", resolve=resolver(None, pins={DISPATCHER: dispatcher.address}))
    try:
        reply = sender.request(DISPATCHER, OPS.request("lookup", name=NAME), timeout=10)
        assert reply.body["addresses"] == [ADDRESS]
    finally:
        sender.close()


@pytest.mark.parametrize("body, error", [
    ({"op": "lookup"}, "needs the field 'name'"),
    ({"op": "lookup", "name": 7}, "must be a string"),
    ({"op": "lookup", "name": "bad name!"}, ""),
    ({"op": "nope"}, "unknown dispatcher operation"),
    ([1, 2], "is a map with an 'op' field"),
])
def test_a_malformed_lookup_is_answered_with_an_error(dispatcher: posa.Dispatcher,
                                                      body: Any, error: str) -> None:
    codec = Codec()
    with transport.connect(dispatcher.address) as conn:
        conn.send(raw_request(codec, 5, body))
        msg = answer_to(conn, 5, codec)
        assert msg.kind == Kind.ERROR and error in msg.body[2]
        conn.send(raw_request(codec, 6, {"op": "lookup", "name": NAME}))
        assert answer_to(conn, 6, codec).body["name"] == NAME     # the line goes on


def test_garbage_on_the_lane_is_dropped_and_loses_nothing(dispatcher: posa.Dispatcher
                                                          ) -> None:
    codec = Codec()
    with transport.connect(dispatcher.address) as conn:
        conn.send(b"\xc1 not msgpack")
        conn.send(codec.pack(Kind.REQUEST, 0, 1, "", DISPATCHER, 0, {}, None)[:-3])
        conn.send(raw_request(codec, 7, {"op": "lookup", "name": NAME}))
        assert answer_to(conn, 7, codec).body["name"] == NAME
    assert dispatcher.peer.gatekeeper.rejections["malformed"] == 2


def test_a_draining_dispatcher_refuses_lookups(dispatcher: posa.Dispatcher) -> None:
    dispatcher.stop_accepting()
    with posa.RegistryClient(dispatcher.address, cache=False, timeout=5) as reg, \
            pytest.raises(Rejected, match="shutting down"):
        reg.lookup(NAME)


class FakeDispatcher:
    """A listener that answers each lookup with ``script(request)``: frames to send."""

    def __init__(self, script: Any) -> None:
        self.codec = Codec()
        self.listener = transport.listen("tcp://127.0.0.1:0")
        self.address = self.listener.address
        self.script = script
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                route, frame = self.listener.recv(timeout=0.05)
            except Timeout:
                continue
            except posa.PosaError:
                return
            request = self.codec.decode(frame)
            for out in self.script(request):
                self.listener.send(route, out)

    def reply(self, request: Any, kind: int, body: Any, correlation: int | None = None
              ) -> bytes:
        return self.codec.pack(kind, 0, 0, DISPATCHER, "", request.id if correlation is None
                               else correlation, {}, body)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=5)


def registration(name: str = NAME) -> dict[str, Any]:
    return registration_to_wire(Registration(name, (ADDRESS,), 3, 10.0, 9.0, {}))


def test_bad_answers_are_skipped_until_the_right_one() -> None:
    def script(request: Any) -> list[bytes]:
        return [b"\x00garbage", fake.reply(request, Kind.REPLY, registration("lab/stale"),
                                           correlation=request.id - 1),
                fake.codec.pack(Kind.ACK, 1, 1, DISPATCHER, "", 0, {}, None),
                fake.reply(request, Kind.REPLY, registration())]
    fake = FakeDispatcher(script)
    line = line_to(fake.address)
    try:
        assert line.lookup(NAME, 5.0).epoch == 3
        assert line.lookup(NAME, 5.0).name == NAME      # and again on the same line
    finally:
        line.close()
        fake.close()


def test_an_error_answer_raises_its_error_and_a_malformed_reply_says_so() -> None:
    answers = iter([(Kind.ERROR, error_body(NameNotFound("gone"))),
                    (Kind.REPLY, {"name": NAME})])
    fake = FakeDispatcher(lambda request: [fake.reply(request, *next(answers))])
    line = line_to(fake.address)
    try:
        with pytest.raises(NameNotFound, match="gone"):
            line.lookup(NAME, 5.0)
        with pytest.raises(posa.ProtocolError, match="malformed registration"):
            line.lookup(NAME, 5.0)
    finally:
        line.close()
        fake.close()


def test_a_silent_dispatcher_times_out_and_the_line_goes_on() -> None:
    silent = iter([True])
    fake = FakeDispatcher(lambda request: [] if next(silent, False)
                          else [fake.reply(request, Kind.REPLY, registration())])
    line = line_to(fake.address)
    try:
        with pytest.raises(Timeout):
            line.lookup(NAME, 0.2)
        assert line.lookup(NAME, 5.0).name == NAME
    finally:
        line.close()
        fake.close()


def test_a_lost_connection_is_made_again(dispatcher: posa.Dispatcher) -> None:
    line = line_to(dispatcher.address)
    try:
        assert line.lookup(NAME, 5.0).name == NAME
        assert line._conn is not None
        line._conn.close()                      # broken under the line
        assert line.lookup(NAME, 5.0).name == NAME
    finally:
        line.close()


def test_lookups_from_many_threads_each_on_a_line(dispatcher: posa.Dispatcher) -> None:
    errors: list[BaseException] = []
    with posa.RegistryClient(dispatcher.address, cache=False) as reg:
        def caller() -> None:
            try:
                for _ in range(50):
                    assert reg.lookup(NAME).name == NAME
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=caller) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(reg._lines._all) == 8
    assert not errors
    assert all(line.closed for line in reg._lines._all) or not reg._lines._all


def keys() -> Keyring:
    return Keyring({"posa": os.urandom(32), "lab": os.urandom(32)})


def test_sealed_lookups_and_refusals() -> None:
    ring = keys()
    with posa.Dispatcher("tcp://127.0.0.1:0",
                         authenticator=HmacAuthenticator(ring, key_id="posa")) as d:
        d.registry.register(NAME, [ADDRESS], credential="c" * 16, lease=60.0)
        with posa.RegistryClient(d.address, cache=False, authenticator=HmacAuthenticator(
                ring, key_id="lab")) as reg:
            assert reg.lookup(NAME).name == NAME
        with posa.RegistryClient(d.address, cache=False, timeout=5) as reg, \
                pytest.raises(Unauthorized, match="refused"):
            reg.lookup(NAME)        # unsealed: refused at once, not timed out
        stranger = Keyring({"stranger": os.urandom(32)})
        with posa.RegistryClient(d.address, cache=False, timeout=5,
                                 authenticator=HmacAuthenticator(stranger)) as reg, \
                pytest.raises(Unauthorized):
            reg.lookup(NAME)        # a key the dispatcher does not hold


def test_a_dispatcher_without_the_lane_answers_the_line(dispatcher: posa.Dispatcher) -> None:
    """As a dispatcher from before the lane does: a stream-less request taken by the
    general path (delivered as it comes, answered, nothing kept)."""
    dispatcher.peer.serve(dispatcher._handle)      # no quick lane
    line = line_to(dispatcher.address)
    try:
        assert line.lookup(NAME, 5.0).name == NAME
        with pytest.raises(NameNotFound):
            line.lookup("lab/absent", 5.0)
    finally:
        line.close()
    assert not dispatcher.peer._receiver.requests.replies


def test_a_lookup_inside_a_trace_carries_it() -> None:
    from posa.runtime import trace
    seen: list[dict[str, Any]] = []

    def script(request: Any) -> list[bytes]:
        seen.append(request.headers)
        return [fake.reply(request, Kind.REPLY, registration())]
    fake = FakeDispatcher(script)
    line = line_to(fake.address)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        line.lookup(NAME, 5.0)
        with trace.context({"traceparent": parent}):
            line.lookup(NAME, 5.0)
    finally:
        line.close()
        fake.close()
    assert "traceparent" not in seen[0] and seen[0]["ttl"] > 0
    assert seen[1]["traceparent"].split("-")[1] == parent.split("-")[1]


def test_a_forked_child_looks_up_on_a_line_of_its_own(dispatcher: posa.Dispatcher) -> None:
    from tests.test_reactor import in_forked_child
    with posa.RegistryClient(dispatcher.address, cache=False) as reg:
        assert reg.lookup(NAME).name == NAME
        parent_line = reg._lines._local.line

        def check() -> bool:
            found = reg.lookup(NAME).name == NAME
            return found and reg._lines._local.line is not parent_line

        assert in_forked_child(check) is True
        assert reg.lookup(NAME).name == NAME and reg._lines._local.line is parent_line


def test_a_sealed_lookup_asked_again_on_a_new_connection_is_no_replay() -> None:
    ring = keys()
    with posa.Dispatcher("tcp://127.0.0.1:0",
                         authenticator=HmacAuthenticator(ring, key_id="posa")) as d:
        d.registry.register(NAME, [ADDRESS], credential="c" * 16, lease=60.0)
        line = line_to(d.address, authenticator=HmacAuthenticator(ring, key_id="lab"))
        sent: list[bytes] = []
        try:
            assert line.lookup(NAME, 5.0).name == NAME
            assert line._conn is not None
            conn = line._conn
            real_send = conn.send

            def send_then_break(frame: bytes) -> None:
                sent.append(frame)
                real_send(frame)
                if len(sent) == 1:
                    conn.close()            # the answer is lost with the connection
            conn.send = send_then_break     # type: ignore[method-assign]
            assert line.lookup(NAME, 5.0).name == NAME
        finally:
            line.close()
        assert d.peer.gatekeeper.rejections["replay"] == 0


def test_a_dispatcher_that_is_not_there_gives_a_timeout_naming_it() -> None:
    listener = transport.listen("tcp://127.0.0.1:0")
    address = listener.address
    listener.close()                            # nothing listens there now
    line = line_to(address)
    try:
        with pytest.raises(Timeout, match="could not be reached"):
            line.lookup(NAME, 0.3)
    finally:
        line.close()


def test_a_lookup_of_a_stopped_dispatcher_times_out_and_goes_on_after() -> None:
    """A dispatcher process stopped by SIGSTOP: the lookup's wait gives up at the
    deadline and says Timeout; once the dispatcher resumes, the same line is
    answered again."""
    proc, address = start_dispatcher()
    try:
        with posa.RegistryClient(address, cache=False) as reg:
            reg.register(NAME, [ADDRESS], credential="c" * 16, lease=60.0)
            line = reg._lines.line(address)
            assert line.lookup(NAME, 10.0).name == NAME
            sigstop(proc.popen.pid)
            with pytest.raises(Timeout, match="did not answer a lookup in time"):
                line.lookup(NAME, 0.3)
            os.kill(proc.popen.pid, signal.SIGCONT)
            assert line.lookup(NAME, 10.0).name == NAME
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)
        proc.close()
