"""The public surface is exactly what it claims to be."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import posa
import posa.aio
import transports
from tests.support import ROOT

PUBLIC = ["posa", "posa.aio", "transports"] + [
    f"posa.{m}" for m in ("errors", "message", "names", "registry", "reactor", "peer",
                          "forwarder", "dispatcher", "registry_client", "services",
                          "eventchannel", "filters", "masterslave", "workqueue", "pipeline",
                          "security", "ops", "gatekeeper", "streams", "limits")]


@pytest.mark.parametrize("module_name", PUBLIC)
def test_all_names_exist_and_are_unique(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = module.__all__
    assert len(names) == len(set(names)), f"{module_name}.__all__ repeats a name"
    for name in names:
        assert getattr(module, name) is not None, f"{module_name}.{name} is missing"


def test_every_error_is_a_posa_error() -> None:
    errors = [getattr(posa, n) for n in posa.__all__
              if isinstance(getattr(posa, n), type) and issubclass(getattr(posa, n), Exception)]
    assert errors and all(issubclass(e, posa.PosaError) for e in errors)


def test_the_contract_of_the_design_is_there() -> None:
    for name in ("Peer", "LocalRegistry", "RegistryClient", "ZeroconfRegistry", "Server",
                 "Client", "Publisher", "Subscriber", "Message", "Event", "Master", "Slave",
                 "PosaError", "ProtocolError", "TransportError", "Timeout", "NameNotFound",
                 "Unauthorized"):
        assert hasattr(posa, name), f"posa.{name} is part of the documented contract"
    assert {"Peer", "Publisher", "Subscriber"} <= set(posa.aio.__all__)
    assert set(transports.schemes()) >= {"inproc", "tcp", "zmq+tcp", "zmq+ipc"}


def test_the_patterns_on_top_of_peers_load_on_first_use() -> None:
    """``import posa`` loads the core only; each pattern loads when first named."""
    script = (
        "import sys, posa\n"
        "heavy = ['asyncio', 'zeroconf', 'posa.eventchannel', 'posa.workqueue',"
        " 'posa.masterslave', 'posa.pipeline']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(posa.EventChannel.__module__, 'posa.eventchannel' in sys.modules)\n"
        "print('WorkQueue' in dir(posa))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "posa.eventchannel True", "True"]
