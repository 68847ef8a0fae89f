"""Hostile input at a peer's listener, on every transport, while real traffic flows.

For a bounded time an attacker throws random bytes, truncated and oversized
frames, sealed garbage, wrong keys, stale and replayed frames, impersonation,
forbidden and misdirected messages and a flood at a peer; meanwhile a legitimate
peer on another connection sends a numbered stream. The process stays up, the
stream arrives complete and in order, and every rejection reason is counted.
"""
from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import posa
from posa import Kind, transport
from posa.admission.gatekeeper import Gatekeeper, Rejection
from posa.admission.quotas import Rate, RateLimiter
from posa.security import Acl, HmacAuthenticator, Keyring
from posa.transport.framing import GREETING
from posa.wire.codec import Codec

pytestmark = pytest.mark.timeout(180)

ATTACK_SECONDS = 1.5
LEGIT_MESSAGES = 1500
CODEC = Codec()
KEYS = {"fuzz": os.urandom(32), "other": os.urandom(32)}
REASONS = {"unauthenticated", "malformed", "stale", "replay", "impersonation", "forbidden",
           "rate-limited", "misdirected"}


class Shifted:
    """A clock ``offset`` seconds off the real one."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def gatekeeper() -> Gatekeeper:
    return Gatekeeper(Codec(),
                      authenticator=HmacAuthenticator(Keyring(KEYS), key_id="fuzz"),
                      authorizer=Acl([("fuzz/**", "fuzz/**")]),
                      limiter=RateLimiter(per_source=Rate(50_000, 50_000),
                                          per_sender=Rate(500, 2_000)))


# ----------------------------------------------------------- raw byte attacks
def raw_socket(address: str) -> socket.socket:
    """A plain socket to the listener behind ``address`` (tcp or zmq's tcp/ipc)."""
    scheme, _, where = address.partition("://")
    if scheme == "zmq+ipc":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(where)
    else:
        host, _, port = where.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
    sock.settimeout(5)
    return sock


def send_raw(address: str, data: bytes) -> None:
    try:
        with raw_socket(address) as sock:
            sock.sendall(data)
    except OSError:
        pass  # the listener may drop us mid-write: that is what it should do


ZMTP_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)
ZMTP_READY = b"\x04\x1c\x05READY\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
FOUR_GIB = 1 << 32


def raw_attacks(address: str, rng: random.Random) -> None:
    """Bytes no well-behaved client sends, written straight to the socket."""
    scheme = address.partition("://")[0]
    if scheme == "tcp":
        send_raw(address, rng.randbytes(rng.randint(1, 300)))              # no greeting
        send_raw(address, GREETING + (FOUR_GIB - 1).to_bytes(4, "big"))    # 4 GiB prefix
        send_raw(address, GREETING + (1000).to_bytes(4, "big") + b"cut")   # truncated
    elif scheme.startswith("zmq+"):
        send_raw(address, rng.randbytes(rng.randint(1, 300)))
        send_raw(address, ZMTP_GREETING + ZMTP_READY + b"\x02" + FOUR_GIB.to_bytes(8, "big")
                 + b"x" * 64)
        send_raw(address, ZMTP_GREETING[:30])


# ------------------------------------------------------- frame-level attacks
def seal(key_id: str, envelope: bytes, *, keys: dict[str, bytes] = KEYS,
         offset: float = 0.0) -> bytes:
    return HmacAuthenticator(Keyring({key_id: keys[key_id]}), clock=Shifted(offset)).seal(envelope)


def envelope(sender: str, recipient: str = "fuzz/target", *, stream: int = 0,
             seq: int = 0, body: Any = b"attack") -> bytes:
    return CODEC.pack(Kind.SEND, stream, seq, sender, recipient, 0, {}, body)


def frame_attacks(conn: Any, rng: random.Random, round_no: int) -> None:
    """One round of hostile frames through a well-formed transport connection."""
    send = conn.send
    for _ in range(20):
        send(rng.randbytes(rng.randint(1, 200)))                          # random bytes
    good = seal("fuzz", envelope("fuzz/good"))
    send(good[:rng.randint(1, len(good) - 1)])                            # truncated
    send(seal("fuzz", rng.randbytes(rng.randint(1, 100))))                # sealed garbage
    send(seal("fuzz", b"\x99\x01\x01"))                                   # truncated envelope
    send(seal("fuzz", envelope("fuzz/good"), keys={"fuzz": os.urandom(32)}))   # wrong secret
    send(HmacAuthenticator(Keyring({"nobody": os.urandom(32)})).seal(envelope("fuzz/x")))
    send(seal("fuzz", envelope("fuzz/late"), offset=-120))                # stale
    send(seal("fuzz", envelope("fuzz/early"), offset=+120))
    send(seal("other", envelope("fuzz/good")))                            # impersonation
    send(seal("other", envelope("other/x")))                              # forbidden
    send(seal("fuzz", envelope("fuzz/x", "fuzz/elsewhere")))              # misdirected
    replayed = seal("fuzz", envelope("fuzz/replayer", body=round_no))
    send(replayed)
    send(replayed)                                                        # replay
    stream = rng.getrandbits(40) + 1
    for seq in range(1, 301):                                             # flood
        send(seal("fuzz", envelope("fuzz/flooder", stream=stream, seq=seq)))


def attack(address: str, stop: threading.Event, errors: list[BaseException]) -> None:
    rng = random.Random(address)
    deadline = time.monotonic() + ATTACK_SECONDS
    round_no = 0
    try:
        while round_no == 0 or (time.monotonic() < deadline and not stop.is_set()):
            round_no += 1
            raw_attacks(address, rng)
            conn = transport.connect(address)
            try:
                frame_attacks(conn, rng, round_no)
            finally:
                conn.close()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


# --------------------------------------------------------------------- tests
ADDRESSES = {
    "tcp": lambda tmp: "tcp://127.0.0.1:0",
    "zmq+tcp": lambda tmp: "zmq+tcp://127.0.0.1:0",
    "zmq+ipc": lambda tmp: f"zmq+ipc://{tmp}/fuzz.sock",
    "inproc": lambda tmp: f"inproc://fuzz-target-{os.getpid()}",
}


@pytest.mark.parametrize("scheme", list(ADDRESSES))
def test_hostile_input_on_every_transport(scheme: str, tmp_path: Path,
                                          registry: posa.LocalRegistry) -> None:
    make_address: Callable[[Path], str] = ADDRESSES[scheme]
    keeper = gatekeeper()
    target = posa.Peer("fuzz/target", registry=registry, listen=make_address(tmp_path),
                       gatekeeper=keeper,
                       authenticator=HmacAuthenticator(Keyring(KEYS), key_id="fuzz"))
    legit = posa.Peer("fuzz/good", registry=registry,
                      listen="tcp://127.0.0.1:0" if scheme != "inproc" else "inproc://fuzz-good",
                      authenticator=HmacAuthenticator(Keyring(KEYS), key_id="fuzz"))
    stop = threading.Event()
    errors: list[BaseException] = []
    attacker = threading.Thread(target=attack, args=(target.address, stop, errors))
    sending = threading.Thread(target=lambda: [legit.send("fuzz/target", i, timeout=60)
                                               for i in range(LEGIT_MESSAGES)]
                               + [legit.flush(60)])
    try:
        attacker.start()
        sending.start()
        got = []
        deadline = time.monotonic() + 120
        while len(got) < LEGIT_MESSAGES:
            msg = target.receive(timeout=max(0.1, deadline - time.monotonic()))
            if msg.sender == "fuzz/good":
                got.append(msg.body)
        assert got == list(range(LEGIT_MESSAGES))
        sending.join(60)
        attacker.join(60)
        assert not errors, errors
        # still serving: a request on a fresh connection is answered
        target.serve(lambda m: ("pong", m.body) if m.kind == Kind.REQUEST else None)
        assert legit.request("fuzz/target", "ping", timeout=10) == ["pong", "ping"]
        counted = {reason for reason, n in keeper.rejections.items() if n}
        assert counted >= REASONS, f"not counted: {REASONS - counted}"
        if scheme == "tcp":   # the transport itself drops the connections that misbehave
            dropped = target.transport_rejections()
            assert {"garbage", "oversize", "truncated"} <= set(dropped)
    finally:
        stop.set()
        attacker.join(60)
        sending.join(60)
        legit.close()
        target.close()


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda body: seal("fuzz", body), st.binary(max_size=200)),
    st.builds(lambda body, cut: seal("fuzz", envelope("fuzz/a", body=body))[:cut],
              st.binary(max_size=50), st.integers(0, 400))))
def test_property_gatekeeper_admits_or_rejects_never_crashes(data: bytes) -> None:
    keeper = gatekeeper()
    try:
        msg = keeper.admit(data, "source")
    except Rejection as rejection:
        assert rejection.reason in REASONS and isinstance(rejection.error, posa.PosaError)
        assert sum(keeper.rejections.values()) == 1
    else:
        assert msg.sender == "fuzz/a" and msg.headers["posa.key"] == "fuzz"
