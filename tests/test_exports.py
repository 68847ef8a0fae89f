"""The public surface is exactly what it claims to be (docs/architecture.md).

Public modules: ``posa`` (the façade), ``posa.aio``, ``posa.errors``,
``posa.transport`` (with ``posa.transport.testing``), ``posa.security`` and
``posa.ops``. Everything else is internal. The docs and examples import only
from the public modules.
"""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys

import pytest

import posa
import posa.aio
from posa import transport
from tests.support import ROOT

PUBLIC = ["posa", "posa.aio", "posa.errors", "posa.transport", "posa.transport.testing",
          "posa.security", "posa.ops", "posa.gateway.view"]

FACADE = {
    "PosaError", "ProtocolError", "TransportError", "Closed", "Timeout", "InvalidName",
    "NameNotFound", "Unauthorized", "StaleEpoch", "Rejected", "RemoteError",
    "Unreachable", "PartialDelivery",
    "CodecLimits", "Kind", "Message",
    "matches", "validate_name", "validate_pattern",
    "LocalRegistry", "Registration", "Registry", "RegistryClient", "ZeroconfRegistry",
    "NatsRegistry", "Election", "Term", "Fence",
    "Peer", "DEFERRED", "Reactor", "Dispatcher",
    "Server", "Client", "ServiceChannel",
    "EventChannel", "Publisher", "Subscriber", "Event", "Gap", "InvalidFilter",
    "Master", "Slave", "Outcome", "WorkQueue", "Worker", "Pipeline", "Stage",
    "split_chunks", "split_whole", "merge_concat", "merge_first", "majority", "first", "Mean",
    "Item", "ListSource", "DirectorySource", "ScalingAdvisor", "submit", "gather", "Gathered",
    "ChannelSource",
    "Acl", "HmacAuthenticator", "Keyring",
}

# the __all__ of every other public module, exactly
MODULES = {
    "posa.aio": {"Peer", "Server", "Client", "Publisher", "Subscriber", "Worker", "Master",
                 "Slave", "Pipeline", "submit", "gather"},
    "posa.errors": {"Closed", "InvalidName", "NameNotFound", "PartialDelivery", "PosaError",
                    "ProtocolError", "Rejected", "RemoteError", "StaleEpoch", "Timeout",
                    "TransportError", "Unauthorized", "Unreachable"},
    "posa.transport": {"Connection", "Curve", "Listener", "Options", "Route", "Transport",
                       "ZmqTransport", "TlsSettings", "TlsTransport", "connect", "get",
                       "listen", "register", "schemes"},
    "posa.transport.testing": {
        "AddressFactory", "CHECKS", "DEADLINE", "check_all", "check_close_wakes_recv",
        "check_frame_sizes", "check_many_connections", "check_order",
        "check_oversize_dropped_by_listener", "check_oversize_refused_by_send",
        "check_polling", "check_recv_timeout", "check_resolved_address", "check_round_trip",
        "check_use_after_close", "check_wait_readable", "check_waiting_without_draining"},
    "posa.security": {"Acl", "Authenticator", "Authorizer", "Gatekeeper", "HmacAuthenticator",
                      "InFlight", "Keyring", "Limiter", "Quotas", "Rate", "RateLimiter",
                      "acl_from_env", "authenticated_key", "from_env"},
    "posa.ops": {"DEFAULT_BUCKETS", "Histogram", "Monitor", "OpsServer",
                 "serve_until_signalled", "timed", "trace_context", "trace_headers"},
    "posa.gateway.view": {"add_routes", "serve", "ViewServer", "Board", "Feed", "ViewState"},
}


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_each_public_module_exports_exactly_its_pinned_names(module_name: str) -> None:
    assert set(importlib.import_module(module_name).__all__) == MODULES[module_name]


@pytest.mark.parametrize("module_name", PUBLIC)
def test_all_names_exist_and_are_unique(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = module.__all__
    assert len(names) == len(set(names)), f"{module_name}.__all__ repeats a name"
    for name in names:
        assert getattr(module, name) is not None, f"{module_name}.{name} is missing"


def test_the_facade_is_exactly_pinned() -> None:
    assert set(posa.__all__) == FACADE
    assert posa.__version__ and re.fullmatch(r"\d+\.\d+\.\d+\S*", posa.__version__)


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
    assert set(transport.schemes()) >= {"inproc", "tcp", "zmq+tcp", "zmq+ipc"}


def test_import_posa_loads_nothing_until_a_name_is_used() -> None:
    """The façade is lazy for every name (PEP 562): ``import posa`` loads no
    other posa module; each name loads its own module when first used."""
    script = (
        "import sys, posa\n"
        "print(sorted(m for m in sys.modules if m.startswith('posa.')))\n"
        "heavy = ['asyncio', 'zeroconf', 'posa.channel.service', 'posa.work.queue']\n"
        "posa.Peer\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(posa.EventChannel.__module__, 'WorkQueue' in dir(posa))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "[]", "posa.channel.service True"]


def _posa_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "posa"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "posa":
            found += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names
                                             if f"{node.module}.{a.name}" in PUBLIC]
    return found


def _code_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(),
                                             re.S)):
            blocks.append((f"{path.relative_to(ROOT)}#{i}", block))
    for path in sorted((ROOT / "examples").rglob("*.py")):
        blocks.append((str(path.relative_to(ROOT)), path.read_text()))
    return blocks


def test_docs_and_examples_import_only_the_public_surface() -> None:
    problems = []
    for where, code in _code_blocks():
        try:
            imported = _posa_imports(code)
        except SyntaxError:
            continue            # a fragment, not a program
        problems += [f"{where}: {m}" for m in imported if m not in PUBLIC]
    assert not problems, "internal modules imported:\n" + "\n".join(problems)
