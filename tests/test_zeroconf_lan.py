"""A name found on the LAN can be reached: across two network namespaces joined by a
veth pair (two hosts, as far as the network goes), a peer listening on a wildcard
address or on the default is found through zeroconf and answers a request.

The test makes the namespaces itself (``ip netns add``, a veth pair, 10.77.0.0/24 and
fd77::/64) and deletes them at the end; without root or iproute2 it skips, saying
why. Every packet stays inside the two namespaces."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import Proc

pytestmark = pytest.mark.timeout(120)

HOST_A, HOST_B = "10.77.0.1", "10.77.0.2"
HOST_A6, HOST_B6 = "fd77::1", "fd77::2"

FAR = """
import json, sys, posa
listen = None if sys.argv[1] == "default" else sys.argv[1]
reg = posa.ZeroconfRegistry()
peer = posa.Peer("lan/far", registry=reg, listen=listen, lease=30.0,
                 handler=lambda msg: {"from": "lan/far", "got": msg.body})
print("ANNOUNCED", json.dumps(list(reg.lookup("lan/far").addresses)), flush=True)
sys.stdin.readline()
peer.close()
reg.close()
"""

NEAR = """
import json, sys, threading, posa
reg = posa.ZeroconfRegistry()
seen = threading.Event()
stop = reg.watch(lambda name, r: seen.set() if name == "lan/far" and r else None)
try:
    reg.lookup("lan/far")
    seen.set()
except posa.NameNotFound:
    pass
if not seen.wait(30.0):
    sys.exit("lan/far was not seen on the LAN within 30 s")
print("FOUND", json.dumps(list(reg.lookup("lan/far").addresses)), flush=True)
with posa.Peer("lan/near", registry=reg, listen="tcp://127.0.0.1:0") as near:
    print("REPLY", json.dumps(near.request("lan/far", "hello", timeout=15.0)), flush=True)
stop()
reg.close()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: (a, b)."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to make two network namespaces")
    if os.geteuid() != 0:
        pytest.skip("needs root to make two network namespaces (the LAN must not leave "
                    "this host)")
    a, b = f"posa-lan-a-{os.getpid()}", f"posa-lan-b-{os.getpid()}"
    made = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", "posa-va", "netns", a, "type", "veth", "peer", "name", "posa-vb",
            "netns", b)
        for ns, dev, v4, v6 in ((a, "posa-va", HOST_A, HOST_A6), (b, "posa-vb", HOST_B, HOST_B6)):
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            _ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
    except subprocess.CalledProcessError as exc:
        for ns in made:
            _ip("netns", "delete", ns)
        pytest.skip(f"cannot make two network namespaces joined by veth: "
                    f"{exc.stderr.strip()}")
    try:
        yield a, b
    finally:
        for ns in made:
            _ip("netns", "delete", ns)      # takes the veth pair with it


def _in(ns: str, code: str, *args: str) -> Proc:
    return Proc(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args])


@pytest.mark.parametrize("listen, host", [
    ("tcp://0.0.0.0:0", HOST_A),
    ("default", HOST_A),
    ("zmq+tcp://0.0.0.0:0", HOST_A),
    ("tcp://[::]:0", f"[{HOST_A6}]"),
])
def test_a_peer_found_on_the_lan_is_reached_from_another_host(
        hosts: tuple[str, str], listen: str, host: str) -> None:
    a, b = hosts
    far = _in(a, FAR, listen)
    near = None
    try:
        announced = json.loads(far.expect("ANNOUNCED", timeout=40.0))
        assert any(f"://{host}:" in address for address in announced), announced
        for address in announced:
            assert "0.0.0.0" not in address and "[::]" not in address, announced
            assert "127.0.0.1" not in address and "[::1]" not in address, announced
        near = _in(b, NEAR)
        assert json.loads(near.expect("FOUND", timeout=40.0)) == announced
        assert json.loads(near.expect("REPLY", timeout=40.0)) == {"from": "lan/far", "got": "hello"}
    finally:
        for proc in (near, far):
            if proc is not None:
                proc.close()


def test_a_wildcard_address_becomes_the_interfaces_addresses() -> None:
    from posa.naming.hosts import reachable
    interfaces = ["10.0.0.1", "192.168.1.2", "fd00::1"]
    assert reachable(["tcp://0.0.0.0:7000", "inproc://x"], interfaces) == [
        "tcp://10.0.0.1:7000", "tcp://192.168.1.2:7000", "inproc://x"]
    assert reachable(["zmq+tcp://0.0.0.0:7001", "tcp://[::]:7002"], interfaces) == [
        "zmq+tcp://10.0.0.1:7001", "zmq+tcp://192.168.1.2:7001", "tcp://[fd00::1]:7002"]
    # a loopback listener is reachable from this host only: kept as it is
    kept = ["tcp://127.0.0.1:7000", "zmq+ipc:///tmp/x", "tcp://10.1.1.1:7000"]
    assert reachable(kept, interfaces) == kept
    assert reachable(["tcp://0.0.0.0:7000"], ["127.0.0.1"]) == ["tcp://127.0.0.1:7000"]
    assert reachable("tcp://0.0.0.0:7000", interfaces) == "tcp://0.0.0.0:7000"  # refused later
