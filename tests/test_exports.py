"""The public surface is exactly what it claims to be."""
from __future__ import annotations

import importlib

import pytest

import posa
import posa.aio
import transports

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
