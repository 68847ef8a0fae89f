"""Client-Dispatcher-Server with real `posa dispatcher` processes."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import posa
from posa.delivery.sender import Sender
from posa.naming.protocol import DISPATCHER, OPS
from posa.naming.registration import resolver
from tests.support import ROOT, Proc, free_port, start_dispatcher

pytestmark = pytest.mark.timeout(120)

SERVER = """
import os, sys, posa
dispatcher, service, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
reg = posa.RegistryClient(dispatcher)
server = posa.Server(service, lambda body: {"pid": os.getpid(), "echo": body},
                     registry=reg, listen="tcp://127.0.0.1:0", lease=lease)
print("READY", server.name, flush=True)
sys.stdin.readline()
server.close()
reg.close()
"""


def wait_for_service(reg: posa.RegistryClient, service: str, count: int,
                     timeout: float = 15.0) -> None:
    """Wait (on the dispatcher's change notices) until ``count`` servers are live."""
    changed = threading.Event()
    stop = reg.watch(lambda name, r: changed.set())
    try:
        for _ in range(200):
            if len(posa.Client(registry=reg).servers(service)) >= count:
                return
            changed.wait(timeout / 20)
            changed.clear()
        raise AssertionError(f"{service!r} did not get {count} live server(s)")
    finally:
        stop()


def test_failover_when_a_server_is_killed_mid_traffic(dispatcher: str) -> None:
    servers = [Proc.python(SERVER, dispatcher, "library/catalog", "2.0") for _ in range(2)]
    try:
        names = {proc.expect("READY"): proc for proc in servers}
        with posa.Client(dispatcher=dispatcher, timeout=10) as client:
            pids, killed = set(), None
            for i in range(400):
                reply = client.call("library/catalog", i)      # any failure fails the test
                assert reply["echo"] == i
                pids.add(reply["pid"])
                if i == 150:
                    victim = client.channel("library/catalog").server
                    assert victim is not None
                    killed = names[victim]
                    killed.kill()
            assert len(pids) == 2, "the client must have failed over to the other server"
            assert client.channel("library/catalog").server != victim
    finally:
        for proc in servers:
            proc.close()


def test_requests_are_round_robin_across_clients(dispatcher: str) -> None:
    servers = [Proc.python(SERVER, dispatcher, "svc/rr", "5") for _ in range(2)]
    try:
        for proc in servers:
            proc.expect("READY")
        pids = set()
        for _ in range(4):
            with posa.Client(dispatcher=dispatcher) as client:
                pids.add(client.call("svc/rr", 1)["pid"])
        assert len(pids) == 2
    finally:
        for proc in servers:
            proc.close()


@pytest.mark.parametrize("keep_state", [True, False])
def test_dispatcher_killed_and_restarted_service_restored(keep_state: bool,
                                                           tmp_path: Path) -> None:
    port = free_port()
    state = ["--state", str(tmp_path / "registry.state")] if keep_state else []
    first, address = start_dispatcher(*state, port=port)
    server = Proc.python(SERVER, address, "library/loans", "1.5")
    second = None
    try:
        server.expect("READY")
        with posa.RegistryClient(address) as reg:
            with posa.Client(registry=reg, timeout=10) as client:
                assert client.call("library/loans", "before")["echo"] == "before"
                first.kill()
                second, _ = start_dispatcher(*state, port=port)
                if keep_state:   # the registration survived in the state file
                    assert reg.lookup(client.channel("library/loans").server or "")
                # without state the server registers again by itself, within a lease
                wait_for_service(reg, "library/loans", 1, timeout=15)
                assert client.call("library/loans", "after")["echo"] == "after"
    finally:
        for proc in (first, second, server):
            if proc is not None:
                proc.close()


HOLDER = """
import sys, posa
reg = posa.RegistryClient(sys.argv[1])
peer = posa.Peer(sys.argv[2], registry=reg, listen="tcp://127.0.0.1:0")
peer.serve(lambda m: {"from": peer.name, "got": m.body})
print("READY", flush=True)
sys.stdin.readline()
peer.close()
reg.close()
"""


def test_two_federated_dispatchers_route_between_sites() -> None:
    port_a, port_b = free_port(), free_port()
    site_a, addr_a = start_dispatcher("--peer", f"tcp://127.0.0.1:{port_b}", port=port_a)
    site_b, addr_b = start_dispatcher("--peer", addr_a, port=port_b)
    agent_b = Proc.python(HOLDER, addr_b, "site-b/agent-1")
    try:
        agent_b.expect("READY")
        with posa.RegistryClient(addr_a) as reg:
            assert reg.lookup("site-b/agent-1").addresses[0].startswith("tcp://")
            with posa.Peer("site-a/agent-1", registry=reg, listen="tcp://127.0.0.1:0") as a:
                assert a.request("site-b/agent-1", "hello from a", timeout=5) == {
                    "from": "site-b/agent-1", "got": "hello from a"}
            with pytest.raises(posa.NameNotFound, match="site-c/nobody"):
                reg.lookup("site-c/nobody")        # asked at b, never loops back
    finally:
        for proc in (agent_b, site_a, site_b):
            proc.close()


def test_a_service_held_at_a_federated_dispatcher_is_picked_there() -> None:
    with posa.Dispatcher("tcp://127.0.0.1:0", node="b") as b, \
         posa.Dispatcher("tcp://127.0.0.1:0", node="a", peers=[b.address]) as a:
        b.connect_peer(a.address)           # both ways: a request must still not loop
        with posa.Server("svc/far", lambda body: {"echo": body}, dispatcher=b.address):
            with posa.Client(dispatcher=a.address) as client:
                assert client.call("svc/far", 1, timeout=5) == {"echo": 1}
            with posa.RegistryClient(a.address) as reg, \
                 pytest.raises(posa.NameNotFound, match="svc/none"):
                reg.pick("svc/none")
        assert a.stats["federated_lookups"] >= 2 and b.stats["federated_lookups"] >= 1


def test_the_protocol_document_shows_the_dispatchers_op_table() -> None:
    """docs/protocol.md carries ``OPS.describe()`` between its markers, verbatim."""
    page = (ROOT / "docs" / "protocol.md").read_text()
    found = re.search(r"<!-- generated: posa\.naming\.protocol\.OPS -->\n(.*?)\n"
                      r"<!-- end generated -->", page, re.S)
    assert found, "docs/protocol.md lost its generated dispatcher table"
    assert found.group(1) == OPS.describe(), (
        "docs/protocol.md differs from the dispatcher's op table; paste "
        "posa.naming.protocol.OPS.describe() between its markers")


def test_garbage_on_the_dispatchers_port_harms_no_one(dispatcher: str) -> None:
    host, port = dispatcher.removeprefix("tcp://").rsplit(":", 1)
    blobs = [os.urandom(512), b"POSA\x00\x01\x00\x00" + b"\xff\xff\xff\xff",
             b"POSA\x00\x01\x00\x00\x00\x00\x00\x10" + os.urandom(16),
             b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"POSA\x00\x01\x00\x00\x00\x00"]
    for blob in blobs * 4:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(blob)
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer("net/survivor", registry=reg, listen="tcp://127.0.0.1:0"):
            assert reg.lookup("net/survivor").epoch >= 1


# (request body, what the Rejected text says): every refusal says what to send
REFUSED: list[tuple[object, str]] = [
    ({"op": "frobnicate"}, r"^unknown dispatcher operation 'frobnicate'; known: "
                           r"lookup, names, pick, ping, register, renew, services, "
                           r"unregister, watch$"),
    (["lookup"], r"^a dispatcher request is a map with an 'op' field, one of lookup, .*; "
                 r"see docs/protocol.md$"),
    ({"op": "lookup"}, r"^dispatcher operation 'lookup' needs the field 'name' "
                       r"\(a string\); see docs/protocol.md$"),
    ({"op": "lookup", "name": 3}, r"^field 'name' of dispatcher operation 'lookup' must "
                                  r"be a string, got int$"),
    ({"op": "register", "name": "net/x", "addresses": [1], "credential": "c"},
     r"^field 'addresses' of dispatcher operation 'register' must be a list of "
     r"transport URIs \(strings\)"),
    ({"op": "register", "name": "net/x", "addresses": ["tcp://h:1"], "credential": "c",
      "lease": True}, r"field 'lease' .* must be a number, got bool$"),
    ({"op": "pick", "service": "svc", "exclude": "svc/a"},
     r"field 'exclude' .* must be a list, got str$"),
    ({"op": "lookup", "name": "net/x", "hops": -1}, r"field 'hops' .* must be an integer >= 0"),
]


def test_malformed_requests_are_refused_with_what_to_send(dispatcher: str) -> None:
    sender = Sender("", resolve=resolver(None, pins={DISPATCHER: dispatcher}))
    try:
        def ask(body: object) -> object:
            return sender.request("posa/dispatcher", body, timeout=5).body
        for body, says in REFUSED:
            with pytest.raises(posa.Rejected) as refused:
                ask(body)
            assert re.search(says, str(refused.value)), (body, str(refused.value))
        listed = ask({"op": "names", "pattern": None})          # nil: the default, **
        node = ask({"op": "ping"})["node"]                      # still serving
        assert isinstance(listed, dict) and listed["next"] is None      # one page, the last
        assert [r["name"] for r in listed["page"]] == ["posa/dispatcher",
                                                       f"posa/dispatcher/{node}"]
    finally:
        sender.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posa", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_cli_talks_to_the_dispatcher(dispatcher: str) -> None:
    server = Proc.python(SERVER, dispatcher, "library/catalog", "5")
    try:
        name = server.expect("READY")
        listed = json.loads(run_cli("names", "library/**", "--dispatcher", dispatcher,
                                    "--json").stdout)
        assert [entry["name"] for entry in listed] == [name]
        services = json.loads(run_cli("services", "--dispatcher", dispatcher, "--json").stdout)
        assert services == {"library/catalog": [name]}
        reply = run_cli("request", name, '{"q": "patterns"}', "--dispatcher", dispatcher,
                        "--json")
        assert reply.returncode == 0 and json.loads(reply.stdout)["echo"] == {"q": "patterns"}
        missing = run_cli("request", "library/nobody", "1", "--dispatcher", dispatcher)
        assert missing.returncode == 3 and "library/nobody" in missing.stderr
        bad = run_cli("send", name, "{not json", "--dispatcher", dispatcher)
        assert bad.returncode != 0 and "JSON" in bad.stderr
        assert run_cli("send", name, '"hi"', "--dispatcher", dispatcher).returncode == 0
        assert "dispatcher" in run_cli("--help").stdout
    finally:
        server.close()


def test_sigterm_stops_the_dispatcher_cleanly(tmp_path: Path) -> None:
    proc, address = start_dispatcher("--state", str(tmp_path / "s"))
    try:
        assert proc.terminate() == 0
        assert (tmp_path / "s").exists()
    finally:
        proc.close()
