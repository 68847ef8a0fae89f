"""``tls://``: the conformance suite over TLS, mutual TLS refusing bad client
certificates, hostname checks, no plaintext on the wire, garbage and stalled
handshakes dropped and counted while good clients go on, session reuse,
certificate identities in the ACL, and a ``posa dispatcher`` process on tls://.

Certificates are made with ``trustme``; every handshake is real, on loopback.
Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

trustme = pytest.importorskip("trustme")

import posa  # noqa: E402
from posa import transport  # noqa: E402
from posa.errors import Timeout, TransportError, Unauthorized  # noqa: E402
from posa.security import Acl  # noqa: E402
from posa.transport import Options  # noqa: E402
from posa.transport import testing as conformance  # noqa: E402
from posa.transport.tls import TlsSettings, TlsTransport  # noqa: E402
from tests.support import Proc, free_port  # noqa: E402

WAIT = 10.0
NOW = datetime.datetime.now(datetime.timezone.utc)


class Pki:
    """A CA, a listener certificate for 127.0.0.1/localhost, client certificates."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem)
        self.server = self.leaf("server", "localhost", "127.0.0.1")
        self.other_ca = trustme.CA()

    def _write(self, name: str, blob: object) -> str:
        path = self.where / name
        blob.write_to_path(str(path))
        return str(path)

    def leaf(self, name: str, *identities: str, ca: object = None, **dates: object) -> str:
        issuer = ca or self.ca
        cert = issuer.issue_cert(*(identities or (f"{name}.example.org",)),
                                 common_name=name, **dates)
        return self._write(f"{name}.pem", cert.private_key_and_cert_chain_pem)

    def listening(self, **more: object) -> TlsSettings:
        return TlsSettings(cert=self.server, ca=self.ca_file, **more)

    def client(self, cert: str | None = None, **more: object) -> TlsSettings:
        return TlsSettings(cert=cert, ca=self.ca_file, **more)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def opened() -> Iterator[Callable[..., object]]:
    with contextlib.ExitStack() as stack:
        def keep(endpoint: object) -> object:
            stack.callback(endpoint.close)
            return endpoint
        yield keep


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    """``tls://`` served with the test PKI (undone after the test)."""
    monkeypatch.setattr(transport, "_loaded", dict(transport._loaded))
    transport.register(TlsTransport(pki.listening()))


class Serving:
    """Polls a listener on a thread (as the reactor would), echoing every frame."""

    def __init__(self, listener: transport.Listener) -> None:
        self.listener = listener
        self.frames: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                route, frame = self.listener.recv(0.05)
            except Timeout:
                continue
            except TransportError:
                return
            self.frames.append(frame)
            with contextlib.suppress(TransportError):
                self.listener.send(route, b"echo:" + frame)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)


def serving(opened: Callable[..., object], settings: TlsSettings) -> Serving:
    listener = opened(transport.listen("tls://127.0.0.1:0", Options(tls=settings)))
    return opened(Serving(listener))


def ask(opened: Callable[..., object], address: str, settings: TlsSettings,
        frame: bytes = b"hi") -> bytes:
    connection = opened(transport.connect(address, Options(tls=settings)))
    connection.send(frame)
    return connection.recv(WAIT)


def pump(listener: transport.Listener, what: str, done: Callable[[], bool],
         frames: list[bytes] | None = None) -> list[bytes]:
    """Poll ``listener`` as the reactor does until ``done()``; the frames it gave
    are added to ``frames``, which is returned."""
    frames = [] if frames is None else frames
    deadline = time.monotonic() + WAIT
    for _ in range(100_000):
        while (item := listener.recv_nowait()) is not None:
            frames.append(item[1])
        if done():
            return frames
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{what}: not within {WAIT} s ({dict(listener.rejections)})"
        select.select([listener.fileno()], [], [], remaining)
    raise AssertionError(f"{what}: 100000 wake-ups")


def closed_by_listener(sock: socket.socket) -> bool:
    sock.settimeout(WAIT)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# --------------------------------------------------------------------------- conformance

@pytest.mark.timeout(90)
@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda check: check.__name__)
def test_conformance_on_tls(check: conformance.Check, registered: None) -> None:
    check(lambda: "tls://127.0.0.1:0")


def test_tls_is_a_builtin_scheme() -> None:
    assert "tls" in transport.schemes()
    with pytest.raises(TransportError, match="tls://HOST:PORT"):
        transport.listen("tls://nowhere", Options(tls=TlsSettings()))
    with pytest.raises(TransportError, match="needs a certificate and its key"):
        transport.listen("tls://127.0.0.1:0", Options(tls=TlsSettings()))
    with pytest.raises(TransportError, match="cannot load the CA file"):
        transport.connect("tls://127.0.0.1:1", Options(tls=TlsSettings(ca="/no/such.pem")))


# --------------------------------------------------------------------------- mutual TLS

def _bad_client(pki: Pki, case: str) -> str | None:
    day = datetime.timedelta(days=1)
    if case == "missing":
        return None
    if case == "unknown-ca":
        return pki.leaf("mallory", ca=pki.other_ca)
    if case == "expired":
        return pki.leaf("old-alice", not_before=NOW - 3 * day, not_after=NOW - day)
    return pki.leaf("future-alice", not_before=NOW + day, not_after=NOW + 3 * day)


@pytest.mark.parametrize("case", ["missing", "unknown-ca", "expired", "not-yet-valid"])
def test_mutual_tls_refuses_a_bad_client_certificate(
        pki: Pki, opened: Callable[..., object], case: str) -> None:
    listener = opened(transport.listen("tls://127.0.0.1:0", Options(
        tls=pki.listening(require_client_cert=True))))
    good = opened(transport.connect(listener.address, Options(
        tls=pki.client(pki.leaf("alice")))))
    bad = opened(transport.connect(listener.address, Options(
        tls=pki.client(_bad_client(pki, case)))))
    with contextlib.suppress(TransportError):
        bad.send(b"let me in")
    good.send(b"member")
    frames = pump(listener, "the bad certificate refused",
                  lambda: listener.rejections["certificate"] == 1)
    pump(listener, "the good client's frame", lambda: b"member" in frames, frames)
    assert frames == [b"member"]
    assert dict(listener.rejections) == {"certificate": 1}
    with pytest.raises(TransportError):
        for _ in range(1000):        # the refusal reaches the client on its next use
            bad.send(b"again")
            bad.recv(WAIT)


def test_mutual_tls_knows_who_is_connected(pki: Pki, opened: Callable[..., object]) -> None:
    listener = opened(transport.listen("tls://127.0.0.1:0", Options(
        tls=pki.listening(require_client_cert=True))))
    connection = opened(transport.connect(listener.address, Options(
        tls=pki.client(pki.leaf("alice")))))
    connection.send(b"who am I")
    route, _ = listener.recv(WAIT)
    assert listener.identity(route) == "alice"
    listener.send(route, b"alice")
    assert connection.recv(WAIT) == b"alice"
    assert connection.identity == "server"


# --------------------------------------------------------------------------- the server's side

def test_client_refuses_a_certificate_for_another_host(
        pki: Pki, opened: Callable[..., object]) -> None:
    elsewhere = TlsSettings(cert=pki.leaf("elsewhere", "elsewhere.example.org"), ca=pki.ca_file)
    served = serving(opened, elsewhere)
    with pytest.raises(TransportError, match="not valid for '127.0.0.1'.*server_hostname="):
        ask(opened, served.listener.address, pki.client())
    assert served.frames == []
    named = pki.client(server_hostname="elsewhere.example.org")   # the name it holds
    assert ask(opened, served.listener.address, named) == b"echo:hi"


def test_client_refuses_a_listener_of_an_unknown_ca(
        pki: Pki, opened: Callable[..., object]) -> None:
    served = serving(opened, pki.listening())
    stranger = TlsSettings(ca=pki.where.joinpath("other-ca.pem").as_posix())
    pki.other_ca.cert_pem.write_to_path(stranger.ca)
    with pytest.raises(TransportError, match="certificate.*give it with --tls-ca"):
        ask(opened, served.listener.address, stranger)
    assert served.frames == []


def test_a_reconnect_resumes_the_tls_session(pki: Pki, opened: Callable[..., object]) -> None:
    served = serving(opened, pki.listening())
    settings = pki.client()
    first = transport.connect(served.listener.address, Options(tls=settings))
    first.send(b"1")
    assert first.recv(WAIT) == b"echo:1"
    assert first.session_reused is False
    first.close()
    again = opened(transport.connect(served.listener.address, Options(tls=settings)))
    again.send(b"2")
    assert again.recv(WAIT) == b"echo:2"
    assert again.session_reused is True


def test_a_session_is_offered_only_under_the_context_it_was_made_in(
        pki: Pki, opened: Callable[..., object]) -> None:
    """The context cache may build a new client context for the same settings (an
    eviction, or two threads racing to build the first): a session kept from the
    old one is not offered to it (OpenSSL refused it with "Session refers to a
    different SSLContext" and the connect failed)."""
    from posa.transport.tls import settings as tls_settings
    served = serving(opened, pki.listening())
    settings = pki.client()
    first = transport.connect(served.listener.address, Options(tls=settings))
    first.send(b"1")
    assert first.recv(WAIT) == b"echo:1"
    first.close()
    tls_settings._client_context.cache_clear()      # the next connect: a new context
    again = opened(transport.connect(served.listener.address, Options(tls=settings)))
    again.send(b"2")
    assert again.recv(WAIT) == b"echo:2"
    assert again.session_reused is False


# --------------------------------------------------------------------------- on the wire

class Relay:
    """A TCP relay between one client and a listener that records every byte."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()[:2]
        self.target = target
        self.seen = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.server.settimeout(WAIT)
        inside, _ = self.server.accept()
        outside = socket.create_connection(self.target, timeout=WAIT)
        ends = {inside: outside, outside: inside}
        deadline = time.monotonic() + 30
        with inside, outside:
            while ends and time.monotonic() < deadline:
                for sock in select.select(list(ends), [], [], 0.5)[0]:
                    data = sock.recv(65536)
                    self.seen += data
                    if not data:
                        return
                    ends[sock].sendall(data)

    def close(self) -> None:
        self.server.close()
        self.thread.join(WAIT)


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_tls_traffic_shows_no_plaintext(pki: Pki, opened: Callable[..., object],
                                        scheme: str) -> None:
    """The same frames through a recording relay: over tcp the body is on the
    wire (the capture works), over tls it is not."""
    options = Options(tls=pki.listening())
    listener = opened(transport.listen(f"{scheme}://127.0.0.1:0", options))
    port = int(listener.address.rsplit(":", 1)[1])
    relay = opened(Relay(("127.0.0.1", port)))
    client = pki.client(server_hostname="127.0.0.1")
    connection = opened(transport.connect(f"{scheme}://127.0.0.1:{relay.address[1]}",
                                          Options(tls=client)))
    body = b"the launch code is 0000 " * 40
    connection.send(body)
    route, frame = listener.recv(WAIT)
    listener.send(route, body)
    assert frame == body and connection.recv(WAIT) == body
    connection.close()
    listener.close()
    relay.thread.join(WAIT)
    assert len(relay.seen) > 2 * len(body)
    assert (b"launch code" in relay.seen) == (scheme == "tcp")


# --------------------------------------------------------------------------- bad peers

def _client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello), to cut short."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_garbage_on_a_tls_listener_harms_no_one(pki: Pki, opened: Callable[..., object]) -> None:
    """Random bytes, HTTP, a plain posa tcp greeting, a ClientHello cut short and
    a ClientHello followed by garbage: each dropped and counted, while a good
    client keeps being served between them."""
    rng = __import__("random").Random(16)
    hello = _client_hello()
    blobs = [(bytes(rng.randbytes(rng.randint(1, 2048))), "garbage") for _ in range(20)]
    blobs += [(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "garbage"),
              (b"POSA\x00\x01\x00\x00" + b"\x00\x00\x00\x01x", "garbage"),
              (hello[: len(hello) // 2], "truncated"),
              (hello + os.urandom(300), "garbage")]
    listener = opened(transport.listen("tls://127.0.0.1:0", Options(tls=pki.listening())))
    port = int(listener.address.rsplit(":", 1)[1])
    good = opened(transport.connect(listener.address, Options(tls=pki.client())))
    frames: list[bytes] = []
    expected: dict[str, int] = {}
    for n, (blob, cause) in enumerate(blobs):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as rogue:
            rogue.sendall(blob)
            if cause == "truncated":
                rogue.shutdown(socket.SHUT_WR)
            expected[cause] = expected.get(cause, 0) + 1
            pump(listener, f"blob {n} ({cause}) dropped",
                 lambda: dict(listener.rejections) == expected, frames)
            assert closed_by_listener(rogue)
        good.send(b"%d" % n)
        pump(listener, f"frame {n}", lambda: frames[-1:] == [b"%d" % n], frames)  # noqa: B023
    assert frames == [b"%d" % n for n in range(len(blobs))]


def test_a_stalled_handshake_is_dropped_at_its_deadline(
        pki: Pki, opened: Callable[..., object]) -> None:
    """A connection that never completes its handshake holds nothing: the
    listener's descriptor wakes at the deadline by itself and drops it."""
    listener = opened(transport.listen("tls://127.0.0.1:0", Options(
        tls=pki.listening(handshake_timeout=0.2))))
    port = int(listener.address.rsplit(":", 1)[1])
    silent = opened(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
    halfway = opened(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
    halfway.sendall(_client_hello()[:10])
    pump(listener, "both dropped",
         lambda: listener.rejections["handshake-timeout"] == 2)
    assert closed_by_listener(silent) and closed_by_listener(halfway)
    good = opened(transport.connect(listener.address, Options(tls=pki.client())))
    good.send(b"still served")
    frames: list[bytes] = []
    pump(listener, "a good client served", lambda: frames == [b"still served"],
         frames)


# --------------------------------------------------------------------------- identities

ACL = """
register-identity  alice          alice/**
register-identity  *.ops.example  ops/**
"""


def test_acl_parses_identity_rules() -> None:
    acl = Acl.parse(ACL)
    acl.check_register("alice/svc", None, "alice")
    acl.check_register("ops/probe", None, "node-1.ops.example")
    with pytest.raises(Unauthorized, match="certificate 'alice' may not register 'bob/svc'"):
        acl.check_register("bob/svc", None, "alice")
    with pytest.raises(Unauthorized, match="a client without a key may not register"):
        acl.check_register("alice/svc", None)            # no certificate: no identity
    with pytest.raises(posa.PosaError, match="register-identity IDENTITY NAME"):
        Acl.parse("register-identity alice")


def test_a_certificate_registers_only_its_names(pki: Pki) -> None:
    """A dispatcher on tls:// with mutual TLS: the certificate of the
    connection a registration came on decides which names it may take."""
    acl = Acl.parse(ACL)
    with posa.Dispatcher("tls://127.0.0.1:0", acl=acl, options=Options(
            tls=pki.listening(require_client_cert=True))) as dispatcher:
        alice = Options(tls=pki.client(pki.leaf("alice")), send_timeout=5.0)
        with posa.RegistryClient(dispatcher.addresses[0], options=alice, cache=False) as reg:
            with posa.Peer("alice/svc", registry=reg, listen="tcp://127.0.0.1:0"):
                assert reg.lookup("alice/svc").epoch >= 1
            with pytest.raises(Unauthorized, match="certificate 'alice' may not register "
                                                   "'bob/svc'"):
                posa.Peer("bob/svc", registry=reg, listen="tcp://127.0.0.1:0")
            assert [r.name for r in reg.names("bob/**")] == []


# --------------------------------------------------------------------------- processes

def test_posa_dispatcher_on_tls_serves_clients(pki: Pki) -> None:
    """``posa dispatcher --listen tls://...`` with mutual TLS, from the command
    line: a peer registers through it and ``posa names`` lists the name."""
    address = f"tls://127.0.0.1:{free_port()}"
    alice = pki.leaf("alice")
    dispatcher = Proc.posa("dispatcher", "--listen", address, "--tls-cert", pki.server,
                           "--tls-ca", pki.ca_file, "--tls-client-cert", "required")
    try:
        assert address in dispatcher.expect("posa dispatcher")
        options = Options(tls=pki.client(alice))
        with posa.RegistryClient(address, options=options, cache=False) as reg, \
                posa.Peer("alice/svc", registry=reg, listen="tcp://127.0.0.1:0"):
            names = Proc.posa("names", "--dispatcher", address, "--json",
                              env={"POSA_TLS_CA": pki.ca_file, "POSA_TLS_CERT": alice})
            try:
                listed = names.json("")
                assert names.popen.wait(WAIT) == 0, names.stderr_now()
            finally:
                names.close()
            assert "alice/svc" in [entry["name"] for entry in listed]
        anonymous = Proc.posa("names", "--dispatcher", address, "--timeout", "2",
                              "--tls-ca", pki.ca_file)            # no client certificate
        try:
            assert anonymous.popen.wait(WAIT) != 0
        finally:
            anonymous.close()
    finally:
        dispatcher.close()


def test_a_child_closing_an_inherited_tls_connection_or_listener_leaves_the_parents(
        pki: Pki, opened: Callable[..., object]) -> None:
    """Closed in a forked child, neither ends the parent's session (no close_notify,
    no shutdown of the shared socket): the parent's frames go on both ways."""
    from tests.test_fork_inherited import closed_in_a_child
    listener = opened(transport.listen("tls://127.0.0.1:0", Options(tls=pki.listening())))
    connection = opened(transport.connect(listener.address, Options(tls=pki.client())))
    connection.send(b"one")
    route, frame = listener.recv(WAIT)
    assert frame == b"one"
    assert closed_in_a_child(connection) is True
    assert closed_in_a_child(listener) is True
    connection.send(b"two")
    assert listener.recv(WAIT) == (route, b"two")
    listener.send(route, b"three")
    assert connection.recv(WAIT) == b"three"
