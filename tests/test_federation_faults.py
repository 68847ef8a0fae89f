"""Federated dispatchers under faults (real ``posa dispatcher`` processes, one of
them SIGKILLed): an answer that could not be had is never a missing name."""
from __future__ import annotations

import time

import pytest

import posa
from tests.support import Proc, free_port, start_dispatcher, wait_until

pytestmark = pytest.mark.timeout(120)

HOLDER = """
import sys, posa
reg = posa.RegistryClient(sys.argv[1])
peers = [posa.Peer(name, registry=reg, listen="tcp://127.0.0.1:0", lease=60.0)
         for name in sys.argv[2:]]
print("READY", flush=True)
sys.stdin.readline()
"""


def test_a_dead_federated_dispatcher_is_reported_not_taken_for_a_missing_name() -> None:
    port_b, port_c = free_port(), free_port()
    b_addr, c_addr = f"tcp://127.0.0.1:{port_b}", f"tcp://127.0.0.1:{port_c}"
    site_b, _ = start_dispatcher(port=port_b)
    site_c, _ = start_dispatcher(port=port_c)
    site_a, a_addr = start_dispatcher("--peer", b_addr, "--peer", c_addr)
    holders = [Proc.python(HOLDER, a_addr, "fed/a/one"),
               Proc.python(HOLDER, b_addr, "fed/b/one", "fed/b/two"),
               Proc.python(HOLDER, c_addr, "fed/c/one")]
    try:
        for proc in holders:
            proc.expect("READY")
        with posa.RegistryClient(a_addr, cache=False) as reg:
            # all alive: names() gathers across the federation
            assert [r.name for r in reg.names("fed/**")] == [
                "fed/a/one", "fed/b/one", "fed/b/two", "fed/c/one"]
            assert [r.name for r in reg.names("fed/b/*")] == ["fed/b/one", "fed/b/two"]
            with pytest.raises(posa.NameNotFound, match="fed/nowhere"):
                reg.lookup("fed/nowhere")

            site_b.kill()
            with pytest.raises(posa.Unreachable, match=str(port_b)) as caught:
                reg.lookup("fed/b/one")
            assert "fed/b/one" in str(caught.value)
            with pytest.raises(posa.Unreachable, match=str(port_b)):
                reg.lookup("fed/nowhere")       # b might hold it: not a NameNotFound
            with pytest.raises(posa.Unreachable, match=str(port_b)):
                reg.names("fed/**")
            with pytest.raises(posa.Unreachable, match=str(port_b)):
                reg.pick("svc/nowhere")
            # a reachable dispatcher that has the name answers; a local name too
            assert reg.lookup("fed/c/one").name == "fed/c/one"
            assert reg.lookup("fed/a/one").name == "fed/a/one"
            assert isinstance(caught.value, posa.TransportError)   # in the error tree
    finally:
        for proc in holders + [site_a, site_b, site_c]:
            proc.close()


def test_a_chain_of_federation_reports_the_far_dispatcher() -> None:
    """a asks b, b asks c; c is dead: a's answer names c, through b."""
    port_c = free_port()
    c_addr = f"tcp://127.0.0.1:{port_c}"
    site_c, _ = start_dispatcher(port=port_c)
    site_b, b_addr = start_dispatcher("--peer", c_addr)
    site_a, a_addr = start_dispatcher("--peer", b_addr)
    try:
        site_c.kill()
        with posa.RegistryClient(a_addr, cache=False) as reg, \
             pytest.raises(posa.Unreachable, match=str(port_c)):
            reg.lookup("fed/far/one")
    finally:
        for proc in (site_a, site_b, site_c):
            proc.close()


def test_a_dead_federated_dispatcher_is_answered_for_at_once_and_used_again_once_back(
        ) -> None:
    """Once b is found dead, a's lookups, pages and picks that would ask it fail at
    once naming b (each waited 2 s for it before); b started again on its address
    is asked again within a deadline."""
    port_b = free_port()
    b_addr = f"tcp://127.0.0.1:{port_b}"
    site_b, _ = start_dispatcher(port=port_b)
    site_a, a_addr = start_dispatcher("--peer", b_addr)
    holders = [Proc.python(HOLDER, b_addr, "fed/b/one")]
    try:
        holders[0].expect("READY")
        with posa.RegistryClient(a_addr, cache=False) as reg:
            assert reg.lookup("fed/b/one").name == "fed/b/one"
            site_b.kill()
            with pytest.raises(posa.Unreachable, match=str(port_b)):
                reg.lookup("fed/b/one")         # finds b dead
            started = time.monotonic()
            for ask in [lambda: reg.lookup("fed/b/one"), lambda: reg.names("fed/**"),
                        lambda: reg.pick("svc/nowhere")] * 4:
                with pytest.raises(posa.Unreachable, match=str(port_b)):
                    ask()
            assert time.monotonic() - started < 8.0     # 12 asks; each waited 2 s before

            site_b, _ = start_dispatcher(port=port_b)
            holders.append(Proc.python(HOLDER, b_addr, "fed/b/one"))
            holders[-1].expect("READY")
            wait_until(lambda: _found(reg, "fed/b/one"), timeout=30.0,
                       what="a lookup through the restarted dispatcher")
            assert [r.name for r in reg.names("fed/**")] == ["fed/b/one"]
    finally:
        for proc in holders + [site_a, site_b]:
            proc.close()


def _found(reg: posa.RegistryClient, name: str) -> bool:
    try:
        return reg.lookup(name).name == name
    except posa.Unreachable:
        return False
