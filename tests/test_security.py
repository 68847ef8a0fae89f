"""Keys, sealed frames, access rules: in one process and across real processes."""
from __future__ import annotations

import base64
import os
import re
import struct
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import posa
from posa import Kind, Message
from posa.admission.gatekeeper import Gatekeeper, Rejection
from posa.delivery.sender import Sender
from posa.security import Acl, HmacAuthenticator, Keyring, authenticated_key, from_env
from posa.wire.codec import Codec
from tests.support import Proc

pytestmark = pytest.mark.timeout(120)

CODEC = Codec()


def secret() -> bytes:
    return os.urandom(32)


def envelope(sender: str = "netmgmt/agent-a", *, stream: int = 7, kind: int = Kind.SEND,
             recipient: str = "netmgmt/agent-b", body: object = b"x" * 100) -> bytes:
    return CODEC.pack(kind, stream, 1 if stream else 0, sender, recipient, 0, {}, body)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyring() -> Keyring:
    return Keyring({"netmgmt": secret(), "netmgmt/agent-a": secret(), "other": secret()})


def write_keys(path: Path, lines: dict[str, bytes], mode: int = 0o600) -> Path:
    path.write_text("# posa keys\n\n" + "".join(
        f"{k} {base64.b64encode(v).decode()}\n" for k, v in lines.items()))
    path.chmod(mode)
    return path


# --------------------------------------------------------------- key files
def test_key_file_loads_and_never_shows_secrets(tmp_path: Path) -> None:
    raw = secret()
    ring = Keyring.from_file(write_keys(tmp_path / "keys", {"netmgmt": raw, "lab/x": secret()}))
    assert ring.ids() == ["lab/x", "netmgmt"] and "netmgmt" in ring and len(ring) == 2
    assert base64.b64encode(raw).decode() not in repr(ring)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666, 0o620])
def test_key_file_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_keys(tmp_path / "keys", {"netmgmt": secret()}, mode)
    with pytest.raises(posa.PosaError, match=r"other users may read or change it.*chmod 600"):
        Keyring.from_file(path)


@pytest.mark.parametrize("text, problem", [
    ("netmgmt\n", "expected `key-id base64-secret`"),
    ("netmgmt !!notbase64!!\n", "not base64"),
    ("netmgmt " + base64.b64encode(b"short").decode() + "\n", "at least 16 bytes"),
    ("net/*/x " + base64.b64encode(bytes(32)).decode() + "\n", "must be a posa name"),
    ("a " + base64.b64encode(bytes(32)).decode() + "\na " + base64.b64encode(bytes(32)).decode(),
     "appears twice"),
    ("# nothing\n", "keyring is empty"),
])
def test_malformed_key_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(posa.PosaError, match=re.escape(problem)):
        Keyring.from_file(path)


def test_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(posa.PosaError, match="posa keygen"):
        Keyring.from_file(tmp_path / "absent")


def test_keys_from_environment() -> None:
    a, b = base64.b64encode(secret()).decode(), base64.b64encode(secret()).decode()
    ring = Keyring.from_environ({"POSA_KEY_netmgmt__agent1": a,
                                 "POSA_KEY_X": f"lab/agent-x.y {b}",
                                 "POSA_KEY_ID": "lab/agent-x.y", "HOME": "/root"})
    assert ring is not None and ring.ids() == ["lab/agent-x.y", "netmgmt/agent1"]
    assert Keyring.from_environ({"HOME": "/"}) is None


def test_the_switch(tmp_path: Path) -> None:
    assert from_env("netmgmt/agent-a", environ={}) is None
    path = write_keys(tmp_path / "keys", {"netmgmt": secret(), "netmgmt/agent-a": secret()})
    auth = from_env("netmgmt/agent-a", environ={"POSA_KEYS": str(path)})
    assert auth is not None and auth.key_id == "netmgmt/agent-a"      # the most specific
    auth = from_env("netmgmt/agent-b", environ={"POSA_KEYS": str(path),
                                                "POSA_AUTH_WINDOW": "5"})
    assert auth is not None and auth.key_id == "netmgmt" and auth.window == 5
    with pytest.raises(posa.Unauthorized, match="no key in the keyring speaks for 'lab/x'"):
        from_env("lab/x", environ={"POSA_KEYS": str(path)})
    with pytest.raises(posa.PosaError, match="say which one seals"):
        from_env(None, environ={"POSA_KEYS": str(path)})


# ------------------------------------------------------------ seal and open
def test_seal_open_roundtrip_and_layout(keyring: Keyring) -> None:
    auth = HmacAuthenticator(keyring, key_id="netmgmt/agent-a", clock=Clock())
    env = envelope()
    frame = auth.seal(env)
    key_id = b"netmgmt/agent-a"
    assert frame[:len(env)] == env and frame[len(env):len(env) + len(key_id)] == key_id
    n, ms, _, version = struct.unpack(">BQQB", frame[-50:-32])
    assert (n, ms, version) == (len(key_id), 1_700_000_000_000, 1)
    assert len(frame) == len(env) + len(key_id) + 50
    assert auth.open(frame) == (env, "netmgmt/agent-a")
    assert auth.seal(env) != frame                              # a fresh nonce every time


@pytest.mark.parametrize("frame_of, reason", [
    (lambda f: f[:-1], "unauthenticated"),
    (lambda f: f[:10], "unauthenticated"),
    (lambda f: f[:5] + bytes([f[5] ^ 1]) + f[6:], "unauthenticated"),     # envelope altered
    (lambda f: f[:-40] + bytes([f[-40] ^ 1]) + f[-39:], "unauthenticated"),  # time altered
    (lambda f: f[:-33] + b"\x02" + f[-32:], "unauthenticated"),            # version
])
def test_altered_frames_are_refused(keyring: Keyring, frame_of: object, reason: str) -> None:
    auth = HmacAuthenticator(keyring, key_id="netmgmt", clock=Clock())
    with pytest.raises(posa.Unauthorized) as caught:
        auth.open(frame_of(auth.seal(envelope())))  # type: ignore[operator]
    assert caught.value.reason == reason  # type: ignore[attr-defined]


def test_unknown_key_and_wrong_secret(keyring: Keyring) -> None:
    ours = HmacAuthenticator(keyring, key_id="netmgmt")
    stranger = HmacAuthenticator(Keyring({"lab": secret()}))
    impostor = HmacAuthenticator(Keyring({"netmgmt": secret()}))
    with pytest.raises(posa.Unauthorized, match="key 'lab', which this process does not hold"):
        ours.open(stranger.seal(envelope()))
    with pytest.raises(posa.Unauthorized, match="MAC .* is wrong"):
        ours.open(impostor.seal(envelope()))


def test_clock_window(keyring: Keyring) -> None:
    clock = Clock()
    receiver = HmacAuthenticator(keyring, key_id="netmgmt", clock=clock)
    sender = HmacAuthenticator(keyring, key_id="netmgmt", clock=Clock(clock.now - 29.9))
    receiver.open(sender.seal(envelope()))
    for skew in (-31.0, 31.0):
        early_or_late = HmacAuthenticator(keyring, key_id="netmgmt", clock=Clock(clock.now + skew))
        with pytest.raises(posa.Unauthorized, match="outside the \\+-30 s window") as caught:
            receiver.open(early_or_late.seal(envelope()))
        assert caught.value.reason == "stale"  # type: ignore[attr-defined]


def test_a_key_speaks_for_its_name_and_below(keyring: Keyring) -> None:
    auth = HmacAuthenticator(keyring, key_id="netmgmt")
    for sender, key_id, ok in [("netmgmt/agent-a", "netmgmt", True),
                               ("netmgmt", "netmgmt", True),
                               ("netmgmt/site/agent-9", "netmgmt", True),
                               ("netmgmt/agent-a", "netmgmt/agent-a", True),
                               ("netmgmt/agent-a/probe", "netmgmt/agent-a", True),
                               ("netmgmt/agent-b", "netmgmt/agent-a", False),
                               ("netmgmt", "netmgmt/agent-a", False),
                               ("netmgmtx/a", "netmgmt", False),
                               ("netmgmt/agent-a", "other", False),
                               ("", "other", True)]:
        msg = CODEC.decode(envelope(sender))
        if ok:
            auth.check(msg, key_id)
        else:
            with pytest.raises(posa.Unauthorized, match="may not speak for") as caught:
                auth.check(msg, key_id)
            assert caught.value.reason == "impersonation"  # type: ignore[attr-defined]


def test_replays_of_non_stream_frames_are_refused(keyring: Keyring) -> None:
    auth = HmacAuthenticator(keyring, key_id="netmgmt")

    def admit(frame: bytes) -> None:
        env, key_id = auth.open(frame)
        auth.check(CODEC.decode(env), key_id)
    reply = auth.seal(envelope(kind=Kind.REPLY, stream=0))
    admit(reply)
    with pytest.raises(posa.Unauthorized, match="came again") as caught:
        admit(reply)
    assert caught.value.reason == "replay"  # type: ignore[attr-defined]
    admit(auth.seal(envelope(kind=Kind.REPLY, stream=0)))   # same content, new seal: fine
    resent = auth.seal(envelope(stream=99))                 # a stream's frame is resent as is
    admit(resent)
    admit(resent)


def test_full_replay_table_moves_the_horizon(keyring: Keyring) -> None:
    clock = Clock()
    auth = HmacAuthenticator(keyring, key_id="netmgmt", clock=clock, max_seen=3)
    frames = []
    for _ in range(5):
        clock.now += 0.001
        frames.append(auth.seal(envelope(stream=0)))

    def admit(frame: bytes) -> None:
        env, key_id = auth.open(frame)
        auth.check(CODEC.decode(env), key_id)
    for frame in frames:
        admit(frame)
    assert len(auth._seen) == 3
    for frame in frames:         # forgotten ones are refused by the horizon, the rest as seen
        with pytest.raises(posa.Unauthorized) as caught:
            admit(frame)
        assert caught.value.reason == "replay"  # type: ignore[attr-defined]
    clock.now += 31               # the window passes: everything older expires
    admit(auth.seal(envelope(stream=0)))
    assert len(auth._seen) == 1


# ---------------------------------------------------- the trailer parser
@settings(max_examples=300, deadline=None)
@given(env=st.binary(min_size=1, max_size=300),
       key_id=st.from_regex(r"[a-z0-9]{1,12}(/[a-z0-9_-][a-z0-9._-]{0,11}){0,3}", fullmatch=True))
def test_property_open_inverts_seal(env: bytes, key_id: str) -> None:
    auth = HmacAuthenticator(Keyring({key_id: bytes(range(32))}))
    assert auth.open(auth.seal(env)) == (env, key_id)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=400))
def test_property_any_bytes_open_or_unauthorized(data: bytes) -> None:
    auth = HmacAuthenticator(Keyring({"netmgmt": bytes(range(32))}))
    with pytest.raises(posa.Unauthorized):
        auth.open(data)


@settings(max_examples=300, deadline=None)
@given(env=st.binary(min_size=1, max_size=200), data=st.data())
def test_property_every_change_of_a_sealed_frame_is_refused(env: bytes,
                                                           data: st.DataObject) -> None:
    auth = HmacAuthenticator(Keyring({"netmgmt/agent-a": bytes(range(32)),
                                      "netmgmt": bytes(range(1, 33))}), key_id="netmgmt/agent-a")
    frame = auth.seal(env)
    change = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if change == "flip":
        at = data.draw(st.integers(0, len(frame) - 1))
        bit = data.draw(st.integers(0, 7))
        altered = frame[:at] + bytes([frame[at] ^ (1 << bit)]) + frame[at + 1:]
    elif change == "cut":
        altered = frame[:data.draw(st.integers(0, len(frame) - 1))]
    else:
        altered = data.draw(st.binary(min_size=1, max_size=20)) + frame
    with pytest.raises(posa.Unauthorized):
        auth.open(altered)


# ----------------------------------------------------------------- the ACL
ACL_TEXT = """
# who may send to whom
send      netmgmt/**       netmgmt/**
send      (anonymous)      netmgmt/status
send      ops/*            **
register  ops/admin        netmgmt/**      # the admin key registers for agents
"""


def test_acl_send_rules() -> None:
    acl = Acl.parse(ACL_TEXT)
    for sender, recipient, ok in [("netmgmt/a", "netmgmt/b", True),
                                  ("netmgmt/a", "lab/x", False),
                                  ("", "netmgmt/status", True),
                                  ("", "netmgmt/b", False),
                                  ("ops/alice", "lab/x", True),
                                  ("ops/alice/x", "lab/x", False),
                                  ("lab/x", "netmgmt/b", False)]:
        msg = Message(Kind.SEND, sender, recipient)
        if ok:
            acl.check(msg)
        else:
            with pytest.raises(posa.Unauthorized, match="may not send to") as caught:
                acl.check(msg)
            assert caught.value.reason == "forbidden"  # type: ignore[attr-defined]


def test_acl_register_rules() -> None:
    acl = Acl.parse(ACL_TEXT)
    acl.check_register("netmgmt/agent-a", "netmgmt/agent-a")     # its own name
    acl.check_register("netmgmt/agent-a/probe", "netmgmt/agent-a")
    acl.check_register("netmgmt/agent-b", "ops/admin")           # by rule
    for name, key in [("netmgmt/agent-b", "netmgmt/agent-a"), ("lab/x", "ops/admin"),
                      ("netmgmt/agent-a", None)]:
        with pytest.raises(posa.Unauthorized, match="may not register"):
            acl.check_register(name, key)
    strict = Acl.parse("register-own no\n")
    with pytest.raises(posa.Unauthorized):
        strict.check_register("netmgmt/agent-a", "netmgmt/agent-a")


@pytest.mark.parametrize("line", ["send a", "allow a b", "send a/** b/**/c", "register-own maybe"])
def test_malformed_acl_names_the_line(line: str) -> None:
    with pytest.raises(posa.PosaError, match=r"acl-file:2"):
        Acl.parse(f"# rules\n{line}\n", source="acl-file")


# ---------------------------------------------------- through a gatekeeper
def test_gatekeeper_counts_each_refusal_and_records_the_key(keyring: Keyring) -> None:
    receiver = HmacAuthenticator(keyring, key_id="netmgmt")
    gatekeeper = Gatekeeper(CODEC, authenticator=receiver,
                            authorizer=Acl([("netmgmt/**", "netmgmt/**")]))
    agent_a = HmacAuthenticator(keyring, key_id="netmgmt/agent-a")
    msg = gatekeeper.admit(agent_a.seal(envelope()))
    assert authenticated_key(msg) == "netmgmt/agent-a"
    forged = CODEC.pack(Kind.SEND, 1, 1, "netmgmt/a", "netmgmt/b", 0, {"posa.key": "x"}, None)
    assert authenticated_key(Gatekeeper(CODEC).admit(forged)) is None
    cases = [(envelope(), "unauthenticated"),
             (agent_a.seal(b"\xc1garbage"), "malformed"),
             (agent_a.seal(envelope("netmgmt/agent-b", kind=Kind.REQUEST)), "impersonation"),
             (HmacAuthenticator(keyring, key_id="other").seal(
                 envelope("other/x", kind=Kind.REQUEST)), "forbidden")]
    for frame, reason in cases:
        with pytest.raises(Rejection) as caught:
            gatekeeper.admit(frame)
        assert caught.value.reason == reason
    assert caught.value.answerable and isinstance(caught.value.error, posa.Unauthorized)
    assert gatekeeper.rejections == {"unauthenticated": 1, "malformed": 1,
                                     "impersonation": 1, "forbidden": 1}


def test_peers_with_keys_talk_and_refuse_an_impersonator(keyring: Keyring) -> None:
    """One process: a peer sealing with another key gets ``Unauthorized`` back."""
    ours = HmacAuthenticator(keyring, key_id="netmgmt")
    with posa.LocalRegistry() as reg, \
            posa.Peer("netmgmt/b", registry=reg, listen="tcp://127.0.0.1:0",
                      authenticator=ours, handler=lambda m: m.body) as b, \
            posa.Peer("netmgmt/c", registry=reg, listen="tcp://127.0.0.1:0",
                      authenticator=ours) as c:
        assert c.request("netmgmt/b", "hello", timeout=5) == "hello"
        mallory = Sender("netmgmt/c", resolve=lambda n, fresh: ((b.address,), 1),
                         authenticator=HmacAuthenticator(keyring, key_id="other"))
        try:
            with pytest.raises(posa.Unauthorized, match="key 'other' may not speak for"):
                mallory.request("netmgmt/b", "I am c", timeout=5)
        finally:
            mallory.close()
        assert b.gatekeeper.rejections["impersonation"] == 1


# ------------------------------------------------------- across processes
AGENT = """
import sys, posa
from posa.ops import Monitor, OpsServer
from posa.security import from_env
name, dispatcher = sys.argv[1], sys.argv[2]
reg = posa.RegistryClient(dispatcher)
peer = posa.Peer(name, registry=reg, listen="tcp://127.0.0.1:0", credential="owner-secret",
                 authenticator=from_env(name), handler=lambda m: {"from": m.sender, "echo": m.body})
server = OpsServer(Monitor(peer))
print("READY", server.url, flush=True)
sys.stdin.readline()
server.close()
peer.close()
reg.close()
"""


def rejections(ops_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(ops_url + "/metrics", timeout=10).read().decode()
    return {match.group(1): float(match.group(2)) for match in re.finditer(
        r'^posa_rejections_total\{name="[^"]*",reason="([^"]+)"\} (\S+)$', text, re.M)}


def test_impersonation_and_name_hijack_across_processes(tmp_path: Path, dispatcher: str) -> None:
    keys = {"netmgmt/agent-a": secret(), "netmgmt/agent-b": secret(), "netmgmt/mallory": secret()}
    b_keys = write_keys(tmp_path / "b.keys", keys)
    agent = Proc.python(AGENT, "netmgmt/agent-b", dispatcher, env={"POSA_KEYS": str(b_keys)})
    reg = posa.RegistryClient(dispatcher, cache=False)
    # mallory holds its own key and agent-b's (to read agent-b's answers), not agent-a's
    mallory_ring = Keyring({k: keys[k] for k in ("netmgmt/mallory", "netmgmt/agent-b")})
    forged_ring = Keyring({"netmgmt/agent-a": secret(), "netmgmt/agent-b": keys["netmgmt/agent-b"]})
    senders: list[Sender] = []

    def sender(name: str, ring: Keyring, key_id: str) -> Sender:
        def resolve(target: str, fresh: bool) -> tuple[tuple[str, ...], int]:
            registration = reg.lookup(target)
            return registration.addresses, registration.epoch
        senders.append(Sender(name, resolve=resolve,
                              authenticator=HmacAuthenticator(ring, key_id=key_id)))
        return senders[-1]
    try:
        ops_url = agent.expect("READY")
        honest = sender("netmgmt/mallory", mallory_ring, "netmgmt/mallory")
        assert honest.request("netmgmt/agent-b", 1, timeout=10).body == {
            "from": "netmgmt/mallory", "echo": 1}
        # impersonation with a key of its own: refused, and told so
        posing = sender("netmgmt/agent-a", mallory_ring, "netmgmt/mallory")
        with pytest.raises(posa.Unauthorized, match="'netmgmt/mallory' may not speak for "
                                                    "'netmgmt/agent-a'"):
            posing.request("netmgmt/agent-b", "transfer", timeout=10)
        # impersonation with a made-up secret under agent-a's key id: refused with an
        # unsealed answer that names no byte of the forged frame
        forging = sender("netmgmt/agent-a", forged_ring, "netmgmt/agent-a")
        with pytest.raises(posa.Unauthorized, match="MAC of this frame is wrong"):
            forging.request("netmgmt/agent-b", "transfer", timeout=30)
        seen = rejections(ops_url)
        assert seen["impersonation"] >= 1 and seen["unauthenticated"] >= 1
        # name hijack without the owner's credential
        with pytest.raises(posa.Unauthorized, match="registered with another credential"):
            reg.register("netmgmt/agent-b", ["tcp://127.0.0.1:9"], credential="guessed")
        with pytest.raises(posa.Unauthorized, match="registered with another credential"):
            posa.Peer("netmgmt/agent-b", registry=reg, listen="tcp://127.0.0.1:0")
        with pytest.raises(posa.Unauthorized):
            reg.unregister("netmgmt/agent-b", credential="guessed")
        assert honest.request("netmgmt/agent-b", 2, timeout=10).body["echo"] == 2
        agent.tell("stop")
        assert agent.popen.wait(20) == 0
    finally:
        for s in senders:
            s.close()
        reg.close()
        agent.close()


# ------------------------------------------------------------ ZeroMQ CURVE
@pytest.fixture
def curve_transport() -> Iterator[object]:
    import zmq

    from posa import transport
    from posa.transport.zmq import Curve, ZmqTransport
    public, secret_key = zmq.curve_keypair()
    curve = Curve(public, secret_key)
    transport.register(ZmqTransport(curve=curve))
    try:
        yield curve
    finally:
        transport.register(ZmqTransport())


def test_zmq_curve_encrypts_and_refuses_plain_clients(curve_transport: object) -> None:
    from posa import transport
    from posa.transport.base import Options
    from posa.transport.zmq import Curve, ZmqTransport
    with posa.LocalRegistry() as reg, \
            posa.Peer("net/b", registry=reg, listen="zmq+tcp://127.0.0.1:0",
                      handler=lambda m: m.body) as b, \
            posa.Peer("net/a", registry=reg, listen="zmq+tcp://127.0.0.1:0") as a:
        assert a.request("net/b", "secret plan", timeout=10) == "secret plan"
        plain = ZmqTransport().connect(b.address, Options(send_timeout=0.5,
                                                          high_water_mark=1))
        try:
            with pytest.raises(posa.Timeout):   # the handshake never completes: no room
                for _ in range(2):
                    plain.send(envelope("net/x", recipient="net/b"))
        finally:
            plain.close()
        with pytest.raises(posa.TransportError, match="without the server secret key"):
            ZmqTransport(curve=Curve(curve_transport.server_public)).listen(  # type: ignore
                "zmq+tcp://127.0.0.1:0", Options())
    assert transport.get("zmq+tcp").curve is curve_transport  # type: ignore[attr-defined]
