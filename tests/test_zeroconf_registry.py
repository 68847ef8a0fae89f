"""ZeroconfRegistry: the pure parts as tables and properties, then real mDNS/DNS-SD.

How the network tests get multicast without touching the host's network: each run
makes a network namespace of its own (``ip netns add``) whose loopback interface
is given the MULTICAST flag and the route 224.0.0.0/4. In-process registries are
created by the test thread after it has entered that namespace (``setns``), so
their sockets and event-loop threads live there; a second process runs in it under
``ip netns exec``. Every mDNS packet stays on that namespace's loopback; the
namespace is deleted at the end. Without root or iproute2 those tests skip, saying
why.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from posa.errors import (
    Closed,
    InvalidName,
    NameNotFound,
    ProtocolError,
    Rejected,
    StaleEpoch,
    Unauthorized,
)
from posa.naming.registration import Registration, Registry
from posa.naming.zeroconf.registry import (
    SERVICE_TYPE,
    Announcement,
    DiscoveryTable,
    ZeroconfRegistry,
    decode_txt,
    encode_txt,
    instance_label,
)

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 5.0          # s for anything that should take milliseconds on loopback


# -- the wire format -----------------------------------------------------------------

segments = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,15}", fullmatch=True)
names = st.lists(segments, min_size=1, max_size=6).map("/".join)
addresses = st.from_regex(r"[a-z][a-z+]{0,7}://[!-~]{1,80}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
announcements = st.builds(
    Announcement, names, st.lists(addresses, min_size=1, max_size=4).map(tuple),
    st.integers(1, 2**63), st.floats(0.001, 1e6),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4))


@given(announcements)
def test_txt_round_trip(a: Announcement) -> None:
    try:
        txt = encode_txt(a)
    except Rejected:
        assume(False)
    assert len(txt) <= 1300
    back = decode_txt(txt)
    assert back._replace(meta={}) == a._replace(meta={})
    assert dict(back.meta) == json.loads(json.dumps(a.meta))


@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        decode_txt(data)
    except ProtocolError:
        pass


def test_long_values_continue_in_numbered_keys() -> None:
    name = "/".join(["x" * 63] * 4)                   # 255 characters, the most
    a = Announcement(name, ("tcp://127.0.0.1:1",), 1, 2.0, {})
    txt = encode_txt(a)
    assert b"name+1=" in txt
    assert decode_txt(txt) == a


@pytest.mark.parametrize("strings, problem", [
    ([b"name=a", b"epoch=1", b"lease=2", b"addr0=tcp://h:1"], "lacks txtvers="),
    ([b"txtvers=2", b"name=a"], "txtvers=2"),
    ([b"txtvers=1", b"name=a b", b"epoch=1", b"lease=2", b"addr0=tcp://h:1"], "character"),
    ([b"txtvers=1", b"name=a", b"epoch=0", b"lease=2", b"addr0=tcp://h:1"], "epoch"),
    ([b"txtvers=1", b"name=a", b"epoch=1", b"lease=nan", b"addr0=tcp://h:1"], "lease"),
    ([b"txtvers=1", b"name=a", b"epoch=1", b"lease=2"], "addresses"),
    ([b"txtvers=1", b"name=a", b"epoch=1", b"lease=2", b"addr0=nowhere"], "URI"),
    ([b"txtvers=1", b"name=a", b"epoch=1", b"lease=2", b"addr0=tcp://h:1", b"meta=[1]"],
     "JSON object"),
    ([b"txtvers=1", b"name=a", b"epoch=1", b"lease=2", b"addr0=tcp://h:1",
      b"meta=" + b"[" * 250], "malformed"),
])
def test_bad_txt_records_say_what_is_wrong(strings: list[bytes], problem: str) -> None:
    data = b"".join(bytes([len(s)]) + s for s in strings)
    with pytest.raises(ProtocolError, match=problem):
        decode_txt(data)


def test_oversized_registration_is_rejected() -> None:
    a = Announcement("a", ("tcp://h:1",), 1, 2.0, {"blob": "x" * 1300})
    with pytest.raises(Rejected, match="1300"):
        encode_txt(a)


@pytest.mark.parametrize("name, label", [
    ("net/agent-a", "net/agent-a"),
    ("a_b/c-9", "a_b/c-9"),
])
def test_plain_names_are_their_own_label(name: str, label: str) -> None:
    assert instance_label(name) == label


@given(names, names)
def test_labels_fit_and_differ(a: str, b: str) -> None:
    la, lb = instance_label(a), instance_label(b)
    assert len(la.encode()) <= 63 and "." not in la
    if a != b:
        assert la.lower() != lb.lower()     # DNS compares labels without case


# -- the table, with a clock in hand ------------------------------------------------

def txt_of(name: str, epoch: int, port: int = 1, lease: float = 2.0) -> bytes:
    return encode_txt(Announcement(name, (f"tcp://10.9.9.9:{port}",), epoch, lease, {}))


@pytest.fixture
def table() -> DiscoveryTable:
    return DiscoveryTable(rng=random.Random(0))


def test_own_registrations_follow_the_registry_rules(table: DiscoveryTable) -> None:
    reg, changes = table.register("a", ["tcp://h:1"], credential="k", epoch=None,
                                  lease=5, meta={"w": 1}, now=0)
    assert (reg.epoch, reg.expires_in, dict(reg.meta)) == (1, 5, {"w": 1})
    assert changes == [("a", reg)]
    with pytest.raises(Unauthorized):
        table.register("a", ["tcp://h:2"], credential="other", epoch=None, lease=5,
                       meta=None, now=1)
    jumped, _ = table.register("a", ["tcp://h:1"], credential="k", epoch=3, lease=5,
                               meta=None, now=1)
    assert jumped.epoch == 3
    with pytest.raises(StaleEpoch):
        table.register("a", ["tcp://h:1"], credential="k", epoch=2, lease=5, meta=None,
                       now=1)
    same, changes = table.register("a", ["tcp://h:1"], credential="k", epoch=3, lease=5,
                                   meta=None, now=1)
    assert same.epoch == 3 and changes == []        # the owner's refresh
    assert table.renew("a", credential="k", now=4).expires_in == 5
    with pytest.raises(Unauthorized):
        table.unregister("a", credential="other", now=4)
    assert table.unregister("a", credential="k", now=4) == [("a", None)]
    with pytest.raises(NameNotFound):
        table.lookup("a", now=4)
    again, _ = table.register("a", ["tcp://h:1"], credential="x", epoch=None, lease=5,
                              meta=None, now=5)
    assert again.epoch == 4                 # epochs never go backwards
    with pytest.raises(Rejected, match="JSON"):
        table.register("b", ["tcp://h:1"], credential="k", epoch=None, lease=5,
                       meta={"raw": b"bytes"}, now=5)
    with pytest.raises(InvalidName):
        table.lookup("not a name", now=5)


def test_an_unrenewed_registration_lapses(table: DiscoveryTable) -> None:
    table.register("a", ["tcp://h:1"], credential="k", epoch=None, lease=2, meta=None, now=0)
    assert table.next_deadline() == 2
    tick = table.tick(now=2)
    assert tick.changes == [("a", None)] and tick.lapsed == ["a"]
    with pytest.raises(NameNotFound):
        table.renew("a", credential="k", now=2)


def test_the_wire_higher_epoch_wins_lower_is_ignored(table: DiscoveryTable) -> None:
    changes, outbid = table.receive("x", txt_of("x", 3), 2, now=0)
    assert [c.registration and c.registration.epoch for c in changes] == [3]
    assert outbid == []
    assert table.receive("x", txt_of("x", 2, port=9), 2, now=0.1) == ([], [])
    assert table.receive("x", txt_of("x", 2), 0, now=0.2) == ([], [])   # its goodbye
    assert table.lookup("x", now=0.3).epoch == 3
    changes, _ = table.receive("x", txt_of("x", 4, port=7), 2, now=0.4)
    assert [c.registration and c.registration.addresses for c in changes] == [
        ("tcp://10.9.9.9:7",)]
    assert table.receive("x", txt_of("x", 4, port=7), 0, now=0.5) == ([("x", None)], [])
    # a late copy of what just said goodbye is not taken for a new announcement
    assert table.receive("x", txt_of("x", 4, port=7), 2, now=0.6) == ([], [])
    assert table.receive("wrong-label", txt_of("y", 1), 2, now=0.7) == ([], [])


def test_a_name_of_another_host_is_taken_only_on_purpose(table: DiscoveryTable) -> None:
    table.receive("x", txt_of("x", 3), 2, now=0)
    with pytest.raises(Unauthorized, match="another host"):
        table.register("x", ["tcp://h:1"], credential="k", epoch=None, lease=2, meta=None,
                       now=0.5)
    with pytest.raises(StaleEpoch, match="epoch > 3"):
        table.register("x", ["tcp://h:1"], credential="k", epoch=3, lease=2, meta=None,
                       now=0.5)
    with pytest.raises(Unauthorized):
        table.renew("x", credential="k", now=0.5)
    reg, changes = table.register("x", ["tcp://h:1"], credential="k", epoch=4, lease=2,
                                  meta=None, now=0.5)
    assert reg.epoch == 4 and changes == [("x", reg)]


def test_our_name_outbid_from_the_wire(table: DiscoveryTable) -> None:
    reg, _ = table.register("x", ["tcp://h:1"], credential="k", epoch=2, lease=5, meta=None,
                            now=0)
    own_txt = encode_txt(Announcement("x", ("tcp://h:1",), 2, 5.0, {}))
    assert table.receive("x", own_txt, 5, now=0.1) == ([], [])          # our echo
    assert table.receive("x", txt_of("x", 2), 2, now=0.2) == ([], [])   # conflict: we keep
    assert table.receive("x", txt_of("x", 1), 2, now=0.3) == ([], [])
    changes, outbid = table.receive("x", txt_of("x", 3), 2, now=0.4)
    assert outbid == ["x"] and changes == [("x", table.lookup("x", now=0.4))]
    assert table.lookup("x", now=0.4).epoch == 3
    with pytest.raises(Unauthorized, match="another host"):
        table.renew("x", credential="k", now=0.5)


def test_records_are_refreshed_near_their_end_then_expire(table: DiscoveryTable) -> None:
    table.receive("x", txt_of("x", 1), 10, now=0)
    queried = []
    now = 0.0
    for _ in range(100):                    # bounded: 4 refresh points and an expiry
        deadline = table.next_deadline()
        if deadline is None:
            break
        now = deadline
        tick = table.tick(now)
        queried += [(round(now, 1), q) for q in tick.queries]
        if tick.changes:
            assert tick.changes == [("x", None)] and tick.lapsed == []
    assert [t for t, _ in queried][:4] == pytest.approx([8.0, 8.5, 9.0, 9.5], abs=0.21)
    assert queried[-1] == (10.0, "x")       # gone: ask once whether someone took it over
    assert now == 10
    # an answer refreshes the record: the next refresh is a TTL later
    table.receive("x", txt_of("x", 1), 10, now=20)
    assert table.tick(27).queries == [] and table.tick(28.3).queries == ["x"]


# -- real mDNS in a network namespace --------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the calling thread in ``netns``; the sockets and threads it creates there
    stay there after it comes back."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as there:
        _setns(there.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.skip("the mDNS tests need iproute2's `ip` to make a network namespace")
    if os.geteuid() != 0:
        pytest.skip("the mDNS tests need root to make a network namespace "
                    "(multicast must not leave this host)")
    name = f"posa-zc-{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace: {exc.stderr.strip()}")
    try:
        _ip("-n", name, "link", "set", "lo", "up", "multicast", "on")
        _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
        yield name
    finally:
        _ip("netns", "delete", name)


class Seen:
    """A watch callback that keeps each name's latest state, and waits on it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.state: dict[str, tuple[float, Registration | None]] = {}

    def __call__(self, name: str, registration: Registration | None) -> None:
        with self.cond:
            self.state[name] = (time.monotonic(), registration)
            self.cond.notify_all()

    def wait(self, name: str, test: Callable[[Registration | None], bool],
             timeout: float = DEADLINE) -> float | None:
        """When ``name``'s state passed ``test`` (monotonic time), or None at timeout."""
        def ok() -> bool:
            return name in self.state and test(self.state[name][1])
        with self.cond:
            if not self.cond.wait_for(ok, timeout):
                return None
            return self.state[name][0]


def has_epoch(epoch: int) -> Callable[[Registration | None], bool]:
    return lambda r: r is not None and r.epoch == epoch


def gone(registration: Registration | None) -> bool:
    return registration is None


@pytest.fixture
def lan(netns: str) -> Iterator[Callable[..., ZeroconfRegistry]]:
    """Makes ZeroconfRegistry instances inside the namespace; closes them after."""
    made: list[ZeroconfRegistry] = []

    def make(**kwargs: Any) -> ZeroconfRegistry:
        with inside(netns):
            registry = ZeroconfRegistry(interfaces=["127.0.0.1"], **kwargs)
        made.append(registry)
        return registry
    yield make
    for registry in made:
        registry.close()


def test_two_registries_see_each_other(lan: Callable[..., ZeroconfRegistry]) -> None:
    a, b = lan(), lan()
    assert isinstance(a, Registry)
    seen = Seen()
    b.watch(lambda name, registration: 1 / 0)     # logged; the others still hear
    b.watch(seen)
    start = time.monotonic()
    mine = a.register("net/agent-a", ["tcp://127.0.0.1:7001", "inproc://agent-a"],
                      credential="a-key", lease=3.0, meta={"role": "router"})
    at = seen.wait("net/agent-a", has_epoch(1))
    assert at is not None, "b never saw a's name"
    print(f"\ndiscovery latency {1000 * (at - start):.1f} ms")
    theirs = b.lookup("net/agent-a")
    assert (theirs.addresses, theirs.epoch, theirs.lease, dict(theirs.meta)) == (
        mine.addresses, 1, 3.0, {"role": "router"})
    assert 2.0 < theirs.expires_in <= 3.0
    assert [r.name for r in b.names("net/*")] == ["net/agent-a"]
    assert a.lookup("net/agent-a").epoch == 1        # its own names too

    start = time.monotonic()
    a.register("net/agent-a", ["tcp://127.0.0.1:7002"], credential="a-key", lease=3.0)
    at = seen.wait("net/agent-a", has_epoch(2))
    assert at is not None, "b never saw epoch 2"
    print(f"update latency {1000 * (at - start):.1f} ms")
    assert b.lookup("net/agent-a").addresses == ("tcp://127.0.0.1:7002",)
    with pytest.raises(Unauthorized):
        b.register("net/agent-a", ["tcp://127.0.0.1:1"], credential="b-key")

    start = time.monotonic()
    a.unregister("net/agent-a", credential="a-key")
    at = seen.wait("net/agent-a", gone)
    assert at is not None, "b never saw the goodbye"
    print(f"removal latency {1000 * (at - start):.1f} ms")
    with pytest.raises(NameNotFound):
        b.lookup("net/agent-a")


def test_renewed_names_live_and_lapsed_ones_leave(lan: Callable[..., ZeroconfRegistry]
                                                  ) -> None:
    a, b = lan(), lan()
    seen = Seen()
    b.watch(seen)
    a.register("net/kept", ["tcp://127.0.0.1:7003"], credential="k", lease=1.0)
    a.register("net/dropped", ["tcp://127.0.0.1:7004"], credential="k", lease=1.0)
    assert seen.wait("net/kept", has_epoch(1)) and seen.wait("net/dropped", has_epoch(1))
    until = time.monotonic() + 3.0          # three leases, renewing one name only
    while time.monotonic() < until:
        assert a.renew("net/kept", credential="k").expires_in == 1.0
        assert seen.wait("net/kept", gone, timeout=0.3) is None
    assert seen.wait("net/dropped", gone, timeout=0.1) is not None
    assert b.lookup("net/kept").epoch == 1
    with pytest.raises(NameNotFound):
        a.renew("net/dropped", credential="k")


def test_a_plain_dns_sd_client_sees_the_service(netns: str,
                                                lan: Callable[..., ZeroconfRegistry]) -> None:
    from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf
    long_name = "Net/" + "site.a/" * 12 + "agent"
    a = lan()
    a.register("net/agent-a", ["zmq+tcp://127.0.0.1:7005"], credential="k", lease=5.0)
    a.register(long_name, ["inproc://x"], credential="k", lease=5.0)
    found: queue.Queue[str] = queue.Queue()
    with inside(netns):
        zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[
            lambda zeroconf, service_type, name, state_change:
            found.put(name) if state_change is ServiceStateChange.Added else None])
        try:
            instances = {found.get(timeout=DEADLINE) for _ in range(2)}
        finally:
            browser.cancel()
        assert instances == {"net/agent-a." + SERVICE_TYPE,
                             instance_label(long_name) + "." + SERVICE_TYPE}
        info = ServiceInfo(SERVICE_TYPE, "net/agent-a." + SERVICE_TYPE)
        assert info.request(zc, timeout=int(DEADLINE * 1000))
        assert info.port == 7005 and info.parsed_addresses() == ["127.0.0.1"]
        txt = info.decoded_properties
        assert (txt["txtvers"], txt["name"], txt["epoch"], txt["addr0"]) == (
            "1", "net/agent-a", "1", "zmq+tcp://127.0.0.1:7005")
    finally:
        zc.close()


def test_what_the_wire_may_change(netns: str, lan: Callable[..., ZeroconfRegistry]) -> None:
    """Another host (a bare Zeroconf announcing by hand) outbids, fails to go back an
    epoch, sends garbage, and keeps a name alive by answering refresh queries."""
    from zeroconf import ServiceInfo, Zeroconf
    a = lan()
    seen = Seen()
    a.watch(seen)
    a.register("net/x", ["tcp://127.0.0.1:7006"], credential="k", epoch=2, lease=30.0)
    with inside(netns):
        other = Zeroconf(interfaces=["127.0.0.1"])
    try:
        def announce(name: str, txt: bytes, ttl: int = 2) -> ServiceInfo:
            info = ServiceInfo(SERVICE_TYPE, f"{instance_label(name)}.{SERVICE_TYPE}",
                               port=1, properties=txt, server="other-host.local.",
                               host_ttl=ttl, other_ttl=ttl)
            other.register_service(info, cooperating_responders=True)
            return info

        def barrier(tag: str) -> None:
            """Packets arrive in order: once ``tag`` is seen, so is all before it."""
            other.register_service(ServiceInfo(
                SERVICE_TYPE, f"{tag}.{SERVICE_TYPE}", port=1, server="other-host.local.",
                properties=txt_of(tag, 1), host_ttl=2, other_ttl=2),
                cooperating_responders=True)
            assert seen.wait(tag, has_epoch(1)), f"barrier {tag} not seen"

        announce("net/garbage", b"\x05txtvers=1\xff")
        other.unregister_all_services()
        outbid = announce("net/x", txt_of("net/x", 5, port=7100))
        assert seen.wait("net/x", has_epoch(5)), "a higher epoch did not win"
        assert a.lookup("net/x").addresses == ("tcp://10.9.9.9:7100",)
        with pytest.raises(Unauthorized, match="another host"):
            a.renew("net/x", credential="k")
        other.unregister_service(outbid)
        assert seen.wait("net/x", gone)
        alive = announce("net/y", txt_of("net/y", 7))
        assert seen.wait("net/y", has_epoch(7))
        other.send(other.generate_service_broadcast(ServiceInfo(   # once, unregistered
            SERVICE_TYPE, alive.name, port=1, properties=txt_of("net/y", 6),
            server="other-host.local.", host_ttl=2, other_ttl=2), None))
        barrier("barrier-1")
        assert a.lookup("net/y").epoch == 7
        assert seen.wait("net/garbage", lambda r: True, timeout=0) is None

        # net/y was announced once with TTL 2 and is never announced again: it lives
        # on because `a` queries it near the end of each TTL and `other` answers.
        assert seen.wait("net/y", gone, timeout=5.0) is None
        assert a.lookup("net/y").epoch == 7
        # silent death: `other` stops answering, no goodbye
        assert other.loop is not None
        other.loop.call_soon_threadsafe(other.registry.async_remove, alive)
        silent = time.monotonic()
        at = seen.wait("net/y", gone, timeout=2.0 + DEADLINE)
        assert at is not None and at - silent <= 3.0      # TTL 2 s, one timer late at most
    finally:
        other.close()


CHILD = r"""
import sys, threading
from posa.naming.zeroconf.registry import ZeroconfRegistry
reg = ZeroconfRegistry(interfaces=["127.0.0.1"])
mine, lock, stop = set(), threading.Lock(), threading.Event()
cond, seen = threading.Condition(), {}
def on_change(name, registration):
    with cond:
        seen[name] = registration
        cond.notify_all()
reg.watch(on_change)
def renew_all():
    while not stop.wait(0.5):
        with lock:
            for name in mine:
                reg.renew(name, credential="child")
renewer = threading.Thread(target=renew_all)
renewer.start()
print("ready", flush=True)
try:
    for line in sys.stdin:                      # ends when the parent closes stdin
        cmd, name, arg = line.split()
        if cmd == "register":
            with lock:
                r = reg.register(name, [f"tcp://127.0.0.1:{arg}"], credential="child",
                                 lease=2.0)
                mine.add(name)
            print("registered", name, r.epoch, flush=True)
        elif cmd == "unregister":
            with lock:
                reg.unregister(name, credential="child")
                mine.discard(name)
            print("unregistered", name, flush=True)
        elif cmd == "wait":
            with cond:
                ok = cond.wait_for(lambda: seen.get(name) is not None
                                   and seen[name].epoch >= int(arg), 5.0)
            print("seen" if ok else "unseen", name, flush=True)
finally:
    stop.set()
    renewer.join()
    reg.close()
"""


class Child:
    """A ZeroconfRegistry in another process, driven line by line."""

    def __init__(self, netns: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="child-stdout")
        self.reader.start()
        self.expect("ready", timeout=20.0)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def ask(self, line: str, answer: str, timeout: float = DEADLINE) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self.expect(answer, timeout)

    def expect(self, answer: str, timeout: float) -> None:
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the child did not say {answer!r} in {timeout}s") from None
        assert got == answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_a_registry_in_another_process(netns: str,
                                       lan: Callable[..., ZeroconfRegistry]) -> None:
    here = lan()
    seen = Seen()
    here.watch(seen)
    child = Child(netns)
    try:
        child.ask("register lan/child 7101", "registered lan/child 1")
        assert seen.wait("lan/child", has_epoch(1)), "the child's name was not seen"
        child.ask("register lan/child 7102", "registered lan/child 2")
        assert seen.wait("lan/child", has_epoch(2)), "the child's update was not seen"
        assert here.lookup("lan/child").addresses == ("tcp://127.0.0.1:7102",)

        here.register("lan/parent", ["tcp://127.0.0.1:7103"], credential="p", lease=5.0)
        child.ask("wait lan/parent 1", "seen lan/parent")

        child.ask("register lan/brief 7104", "registered lan/brief 1")
        assert seen.wait("lan/brief", has_epoch(1))
        child.ask("unregister lan/brief -", "unregistered lan/brief")
        assert seen.wait("lan/brief", gone), "the child's goodbye was not seen"

        # renewed every 0.5 s, the name outlives its 2 s lease many times over
        assert seen.wait("lan/child", gone, timeout=4.0) is None
        child.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        at = seen.wait("lan/child", gone, timeout=2.0 + DEADLINE)
        assert at is not None, "the dead child's name never went away"
        print(f"\ndead child's name gone {at - killed:.2f} s after SIGKILL (lease 2 s)")
        assert at - killed <= 3.0          # lease 2 s, one timer late at most
    finally:
        child.close()


def test_close_says_goodbye_and_stops_every_thread(lan: Callable[..., ZeroconfRegistry]
                                                   ) -> None:
    before = set(threading.enumerate())
    a, b = lan(), lan()
    seen = Seen()
    b.watch(seen)
    a.watch(lambda name, registration: None)
    a.register("net/leaving", ["tcp://127.0.0.1:7007"], credential="k", lease=60.0)
    assert seen.wait("net/leaving", has_epoch(1))
    a.close()
    assert seen.wait("net/leaving", gone, timeout=1.0), "no goodbye on close"
    a.close()                                   # idempotent
    with pytest.raises(Closed):
        a.lookup("net/leaving")
    with pytest.raises(Closed):
        a.register("net/again", ["tcp://127.0.0.1:1"], credential="k")
    b.close()
    assert set(threading.enumerate()) == before


def test_a_shared_zeroconf_stays_open(netns: str) -> None:
    from zeroconf import Zeroconf
    with inside(netns):
        zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        with pytest.raises(Rejected):
            ZeroconfRegistry(zeroconf=zc, interfaces=["127.0.0.1"])
        with ZeroconfRegistry(zeroconf=zc) as registry:
            registry.register("net/shared", ["tcp://127.0.0.1:7008"], credential="k")
            assert registry.lookup("net/shared").epoch == 1
        assert zc.loop is not None and zc.loop.is_running()
        assert zc.registry.async_get_service_infos() == []
    finally:
        zc.close()
