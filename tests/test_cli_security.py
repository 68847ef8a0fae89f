"""The command line against a secured system, and authentication failures said.

A real ``posa dispatcher`` process runs with a key file; ``posa names``, ``send``
and ``request`` (real processes too) reach it and a keyed peer with
``POSA_KEYS`` and with ``--keys``. Without a key they fail at once, saying what
to do: every such test gives the command a 30 s timeout and fails itself long
before that (``subprocess`` timeout and a pytest timeout below 30 s), so a
command that waits out its deadline fails the test; no test measures time.
Python requesters get ``Unauthorized`` at once too, on both sides: a receiver
answers a frame it cannot open with a rate-limited, unsealed refusal that
echoes none of the frame's bytes, and a requester that cannot verify an
answer names the key it lacks. The recipe of docs/security.md runs verbatim.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import posa
from posa.admission.unverified import RefusalAnswers
from posa.cli import EXIT_UNAUTHORIZED
from posa.delivery.sender import Sender
from posa.naming.registration import resolver
from posa.security import Gatekeeper, HmacAuthenticator, Keyring, Rate
from posa.wire.codec import Codec
from tests.support import ROOT, Proc, free_port, start_dispatcher
from tests.test_protocol_doc import (
    BODY,
    CORRELATION,
    ERROR,
    HEADERS,
    KIND,
    RECIPIENT,
    REQUEST,
    SENDER,
    Frames,
    RawClient,
    frame,
)

LONG = "30"             # the commands' --timeout: far above every test's own limit
FAST = 15.0             # seconds a failing command may take before the test fails
pytestmark = pytest.mark.timeout(25)

FILES = {               # key file -> the key ids it holds
    "dispatcher.keys": ("posa/dispatcher", "ops", "lab"),
    "client.keys": ("ops", "posa/dispatcher", "lab"),
    "no-dispatcher.keys": ("ops", "lab"),
    "no-lab.keys": ("ops", "posa/dispatcher"),
    "stranger.keys": ("stranger", "posa/dispatcher"),
    "service.keys": ("lab", "ops", "posa/dispatcher"),
}


@pytest.fixture(scope="module")
def secrets_by_id() -> dict[str, str]:
    return {key_id: Keyring.new_secret()
            for key_id in ("posa/dispatcher", "ops", "lab", "stranger")}


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory, secrets_by_id: dict[str, str]) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for name, ids in FILES.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{key_id} {secrets_by_id[key_id]}\n" for key_id in ids)
    return directory


def ring(secrets_by_id: dict[str, str], *ids: str) -> Keyring:
    import base64
    return Keyring({key_id: base64.b64decode(secrets_by_id[key_id]) for key_id in ids})


@pytest.fixture(scope="module")
def dispatcher(keydir: Path) -> Iterator[str]:
    """A keyed ``posa dispatcher`` process; yields its address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSA_KEY")}
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = Proc.posa("dispatcher", "--listen", address, "--keys",
                     str(keydir / "dispatcher.keys"), env=env)
    try:
        proc.expect("posa dispatcher")
        yield address
    finally:
        proc.close()


class Echo:
    """``lab/echo``: a keyed peer registered at the dispatcher (this process)."""

    def __init__(self, address: str, secrets_by_id: dict[str, str]) -> None:
        self.auth = HmacAuthenticator(ring(secrets_by_id, "lab", "ops", "posa/dispatcher"),
                                      key_id="lab")
        self.registry = posa.RegistryClient(address, cache=False, authenticator=self.auth)
        self.sent: list[Any] = []
        self.peer = posa.Peer("lab/echo", registry=self.registry,
                              listen="tcp://127.0.0.1:0", authenticator=self.auth)
        self.peer.serve(self.handle)

    def handle(self, msg: posa.Message) -> Any:
        if msg.kind == posa.Kind.REQUEST:
            return {"echo": msg.body}
        self.sent.append(msg.body)
        return None

    def close(self) -> None:
        self.peer.close()
        self.registry.close()


@pytest.fixture
def echo(dispatcher: str, secrets_by_id: dict[str, str]) -> Iterator[Echo]:
    peer = Echo(dispatcher, secrets_by_id)
    try:
        yield peer
    finally:
        peer.close()


def posa_cli(*args: str, keys: Path | None = None,
             key_id: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``posa ARGS`` (POSA_KEYS=``keys``, POSA_KEY_ID=``key_id`` if given, else no
    key variable at all); a command still running after ``FAST`` s fails the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSA_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    if keys is not None:
        env["POSA_KEYS"] = str(keys)
    if key_id is not None:
        env["POSA_KEY_ID"] = key_id
    return subprocess.run([sys.executable, "-m", "posa", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=FAST)


# ------------------------------------------------------------------ the commands work
def test_names_send_and_request_work_with_posa_keys_and_with_the_keys_option(
        dispatcher: str, echo: Echo, keydir: Path) -> None:
    client = keydir / "client.keys"     # two keys outside posa/: the sealing one is named
    for how in ("POSA_KEYS", "--keys"):
        env: dict[str, Any] = {"keys": client, "key_id": "ops"} if how == "POSA_KEYS" else {}
        option = [] if how == "POSA_KEYS" else ["--keys", str(client), "--key-id", "ops"]
        names = posa_cli("names", "lab/*", "--dispatcher", dispatcher, *option, **env)
        assert names.returncode == 0, names.stderr
        assert names.stdout.startswith("lab/echo\t"), names.stdout
        reply = posa_cli("request", "lab/echo", '{"n": 1}', "--json", "--dispatcher",
                         dispatcher, *option, **env)
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout.strip() == '{"echo": {"n": 1}}'
        sent = posa_cli("send", "lab/echo", f'"{how}"', "--dispatcher", dispatcher,
                        *option, **env)
        assert sent.returncode == 0, sent.stderr
        assert how in echo.sent      # send returns once the message was acknowledged


def test_a_channel_runs_keyed_with_the_keys_option(dispatcher: str, keydir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSA_KEY")}
    channel = Proc.posa("channel", "lab/events", "--dispatcher", dispatcher,
                        "--keys", str(keydir / "service.keys"), env=env)
    try:
        assert channel.expect("channel lab/events at")
        names = posa_cli("names", "lab/events", "--dispatcher", dispatcher,
                         "--keys", str(keydir / "client.keys"), "--key-id", "ops")
        assert names.returncode == 0, names.stderr
        assert names.stdout.startswith("lab/events\t"), names.stdout
        client = ["--dispatcher", dispatcher, "--keys", str(keydir / "client.keys"),
                  "--key-id", "ops"]
        published = posa_cli("pub", "lab/events", "link/down", '{"port": 3}', *client)
        assert published.returncode == 0, published.stderr     # sealed with ops's key
        got = posa_cli("sub", "lab/events", "--from-seq", "1", "--count", "1", "--json",
                       *client)
        assert got.returncode == 0, got.stderr                  # its peer: ops/sub/...
        assert json.loads(got.stdout) == {"seq": 1, "topic": "link/down",
                                          "body": {"port": 3}}
        unsealed = posa_cli("pub", "lab/events", "link/up", "{}", "--dispatcher", dispatcher)
        assert unsealed.returncode == 5 and "POSA_KEYS" in unsealed.stderr, unsealed.stderr
        assert channel.terminate() == 0
    finally:
        channel.close()


def test_a_queue_and_its_worker_run_keyed_with_the_keys_option(
        dispatcher: str, echo: Echo, keydir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSA_KEY")}
    keys = ["--dispatcher", dispatcher, "--keys", str(keydir / "service.keys")]
    queue = Proc.posa("queue", "lab/q", "--results", *keys, env=env)
    worker = None
    try:
        assert queue.expect("queue lab/q at")
        worker = Proc.posa("worker", "--queue", "lab/q", *keys, "--", "cat", env=env)
        assert worker.expect("worker lab/q/")
        assert posa.submit(echo.peer, "lab/q", {"item": "keyed"}, timeout=20) == 1
        assert queue.json("", timeout=20) == {"done": "item", "result": '"keyed"'}  # JSON in
        progress = posa_cli("progress", "lab/q", "--once", "--json", "--dispatcher",
                            dispatcher, "--keys", str(keydir / "client.keys"),
                            "--key-id", "ops")
        assert progress.returncode == 0, progress.stderr
        assert '"done": 1' in progress.stdout, progress.stdout
    finally:
        for proc in (worker, queue):
            if proc is not None:
                proc.close()


# ------------------------------------------------------------ failures, said at once
@pytest.mark.parametrize("command", ["names", "send", "request"])
def test_without_any_key_a_command_is_refused_at_once_saying_what_to_do(
        dispatcher: str, echo: Echo, command: str) -> None:
    args = {"names": ["names"], "send": ["send", "lab/echo", "1"],
            "request": ["request", "lab/echo", "1"]}[command]
    done = posa_cli(*args, "--dispatcher", dispatcher, "--timeout", LONG)
    assert done.returncode == EXIT_UNAUTHORIZED, done.stderr
    assert "refused: 'posa/dispatcher' runs with keys and refuses unsealed frames" in done.stderr
    assert "POSA_KEYS" in done.stderr and "slow or stuck" not in done.stderr


@pytest.mark.parametrize("command", ["names", "send", "request"])
def test_without_the_dispatchers_key_a_command_names_the_missing_key(
        dispatcher: str, echo: Echo, keydir: Path, command: str) -> None:
    args = {"names": ["names"], "send": ["send", "lab/echo", "1"],
            "request": ["request", "lab/echo", "1"]}[command]
    done = posa_cli(*args, "--dispatcher", dispatcher, "--timeout", LONG,
                    "--keys", str(keydir / "no-dispatcher.keys"), "--key-id", "ops")
    assert done.returncode == EXIT_UNAUTHORIZED, done.stderr
    assert ("no key for 'posa/dispatcher': set POSA_KEYS to a keys file that has it"
            in done.stderr)


@pytest.mark.parametrize("command", ["send", "request"])
def test_without_the_peers_key_a_command_names_the_peer_and_its_key(
        dispatcher: str, echo: Echo, keydir: Path, command: str) -> None:
    done = posa_cli(command, "lab/echo", "1", "--dispatcher", dispatcher, "--timeout", LONG,
                    keys=keydir / "no-lab.keys")
    assert done.returncode == EXIT_UNAUTHORIZED, done.stderr
    assert ("no key for 'lab/echo' (its answers are sealed with key 'lab'): set POSA_KEYS"
            in done.stderr)
    assert echo.sent == [1] if command == "send" else echo.sent == []


def test_a_key_the_dispatcher_does_not_hold_is_refused_naming_the_sealing_key(
        dispatcher: str, keydir: Path) -> None:
    done = posa_cli("names", "--dispatcher", dispatcher, "--timeout", LONG,
                    keys=keydir / "stranger.keys")
    assert done.returncode == EXIT_UNAUTHORIZED, done.stderr
    assert "'posa/dispatcher' does not hold the key this frame was sealed with" in done.stderr
    assert "(this process seals with key 'stranger')" in done.stderr


def test_a_keyed_command_against_a_dispatcher_without_keys_is_told_so(keydir: Path) -> None:
    proc, address = start_dispatcher()
    try:
        done = posa_cli("names", "--dispatcher", address, "--timeout", LONG,
                        keys=keydir / "no-lab.keys")
    finally:
        proc.close()
    assert done.returncode == EXIT_UNAUTHORIZED, done.stderr
    assert ("refused: 'posa/dispatcher' runs without keys and cannot open sealed frames"
            in done.stderr)


def test_a_python_requester_without_the_repliers_key_raises_unauthorized_naming_it(
        dispatcher: str, secrets_by_id: dict[str, str]) -> None:
    auth = HmacAuthenticator(ring(secrets_by_id, "ops"))
    with posa.RegistryClient(dispatcher, cache=False, timeout=30.0,
                             authenticator=auth) as registry, \
            pytest.raises(posa.Unauthorized, match="no key for 'posa/dispatcher': set "
                          "POSA_KEYS to a keys file that has it"):
        registry.names("**")


def test_an_unsealed_sender_to_a_keyed_peer_gets_unauthorized(
        dispatcher: str, echo: Echo, secrets_by_id: dict[str, str]) -> None:
    keyed = posa.RegistryClient(dispatcher, cache=False, authenticator=echo.auth)
    sender = Sender("", resolve=resolver(keyed))        # no authenticator: unsealed
    try:
        with pytest.raises(posa.Unauthorized, match="'lab/echo' runs with keys and "
                           "refuses unsealed frames"):
            sender.request("lab/echo", "hello", timeout=30.0)
        sender.send("lab/echo", "one way", timeout=30.0)
        with pytest.raises(posa.Unauthorized, match="refuses unsealed frames"):
            sender.flush(30.0)
    finally:
        sender.close()
        keyed.close()
    assert echo.sent == []


# ------------------------------------------------------------------ refusal answers
def test_refusals_are_unsealed_echo_nothing_and_are_rate_limited(
        secrets_by_id: dict[str, str]) -> None:
    auth = HmacAuthenticator(ring(secrets_by_id, "lab"))
    registry = posa.LocalRegistry()
    gate = Gatekeeper(authenticator=auth, refusal_rate=Rate(0.001, 5))
    peer = posa.Peer("lab/target", registry=registry, listen="tcp://127.0.0.1:0",
                     authenticator=auth, gatekeeper=gate)
    raw = RawClient(peer.addresses[0], name="evil/marker-5e1f")
    flood = 300
    try:
        raw.sock.sendall(b"".join(
            frame(REQUEST, 77, seq, "evil/marker-5e1f", "lab/target", body="BODY-5e1f")
            for seq in range(1, flood + 1)))
        answers = read_until(raw, lambda got: gate.rejections["unauthenticated"] >= flood
                             and len(got) >= gate.answers.sent)   # type: ignore[union-attr]
    finally:
        raw.close()
        peer.close()
    assert gate.answers is not None and gate.answers.sent == 5
    assert gate.answers.suppressed == flood - 5
    assert [a[CORRELATION] for a in answers] == [1, 2, 3, 4, 5]
    for answer in answers:
        assert answer[KIND] == ERROR and answer[SENDER] == "lab/target"
        assert answer[RECIPIENT] == "" and answer[HEADERS] == {"refused": "unsealed"}
        assert answer[BODY][:2] == [3, "Unauthorized"]
        packed = msgpack.packb(answer)
        assert b"5e1f" not in packed        # nothing of the refused frame comes back


def read_until(raw: RawClient, done: Any, timeout: float = 20.0) -> list[list[Any]]:
    """Envelopes read from ``raw`` until ``done(envelopes)``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    got: list[list[Any]] = []
    frames = Frames()
    while not done(got):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(got)} answers arrived"
        raw.sock.settimeout(min(remaining, 0.2))
        try:
            data = raw.sock.recv(65536)
        except TimeoutError:
            continue        # the receiver is still counting what it refused
        assert data, "the peer closed the connection"
        got += frames.feed(data)
    return got


# ------------------------------------------------------------------------ the recipe
RECIPE = re.compile(r"```sh\n(# recipe: .*?)^```", re.M | re.S)


def test_the_recipe_in_docs_security_runs_verbatim(tmp_path: Path) -> None:
    """The shell recipe of docs/security.md, run as written (in a network namespace
    of its own where the system allows one, so its fixed port is free; else with
    that port replaced by a free one)."""
    found = RECIPE.search((ROOT / "docs" / "security.md").read_text())
    assert found, "docs/security.md has no ```sh block starting with '# recipe:'"
    script = found.group(1)
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSA_KEY")}
    env.update(PYTHONPATH=str(ROOT), PATH=f"{bindir}{os.pathsep}{env['PATH']}")
    assert shutil.which("posa", path=env["PATH"]), "the posa command is not installed"
    command = ["bash", "-euo", "pipefail", "-c", script]
    if own_network():
        command = ["unshare", "-rn", "bash", "-c", 'ip link set lo up && exec "$@"', "--",
                   *command]
    else:
        command[-1] = script.replace("127.0.0.1:7000", f"127.0.0.1:{free_port()}")
    # a session of its own: whatever the script leaves running (its dispatcher, if it
    # failed before `kill`) is killed with it
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == 0, out + err
    assert re.search(r"^posa/dispatcher/\w+\ttcp://127\.0\.0\.1:\d+\t", out, re.M), out
    assert "refused, exit 5" in out, out


def own_network() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


ENVELOPES = st.builds(
    lambda kind, recipient, seq, body: Codec().encode(posa.Message(
        kind, "evil/x", recipient, body, id=seq, stream=7)),
    st.sampled_from([1, 2, 3, 4, 5]), st.sampled_from(["lab/target", "lab/other"]),
    st.integers(1, 2**32), st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.binary(max_size=300), ENVELOPES), sealed=st.booleans(),
       cause=st.sampled_from(["unsealed", "unknown-key", "bad-mac", "stale", "sealed"]))
def test_a_refusal_is_built_from_any_bytes_without_raising_and_names_only_the_receiver(
        body: bytes, sealed: bool, cause: str) -> None:
    codec = Codec()
    answers = RefusalAnswers(codec, Rate(1, 1_000_000))
    frame = body
    if sealed and body:     # a trailer of a key this side does not know
        frame = HmacAuthenticator(Keyring({"k": b"s" * 32})).seal(body)
    refusal = answers.answer(frame, cause, {"lab/target"})
    try:
        sent = codec.decode(body)
    except posa.PosaError:
        sent = None
    expected = (sent is not None and sent.kind in (1, 2) and sent.recipient == "lab/target"
                and (cause != "sealed" or sealed))
    assert (refusal is not None) == expected
    if refusal is not None:
        assert sent is not None
        msg = codec.decode(refusal)
        assert (msg.kind, msg.sender, msg.recipient) == (posa.Kind.ERROR, "lab/target", "")
        assert msg.correlation == sent.id and msg.headers == {"refused": cause}
        assert msg.body[:2] == [3, "Unauthorized"] and b"evil" not in refusal
