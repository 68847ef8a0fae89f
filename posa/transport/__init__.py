"""Pluggable transports for posa, chosen by the scheme of an address URI.

    inproc://NAME            in-process, no serialisation          (posa.transport.inproc)
    tcp://HOST:PORT          length-prefixed frames over TCP       (posa.transport.tcp)
    zmq+tcp://HOST:PORT      ZeroMQ ROUTER/DEALER over TCP         (posa.transport.zmq)
    zmq+ipc:///PATH          ZeroMQ ROUTER/DEALER over a Unix socket
    tls://HOST:PORT          the tcp frames inside TLS                (posa.transport.tls)

This module and ``posa.transport.testing`` (the conformance suite) are public;
the transports' own modules are internal. The transport layer is posa's bottom:
nothing under ``posa.transport`` imports posa beyond ``posa.errors``.

A third-party transport registers under the entry-point group ``posa.transports``
(``name = "package.module:TransportClass"``); the class's ``schemes`` say which
URI schemes it serves. See docs/transports.md.
"""
from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

from posa.errors import TransportError
from posa.transport.base import Connection, Listener, Options, Route, Transport

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["Connection", "Listener", "Options", "Route", "Transport",
           "listen", "connect", "get", "schemes", "register", "Curve", "ZmqTransport",
           "TlsSettings", "TlsTransport"]

# ZeroMQ's CURVE configuration is public, but pyzmq loads only when it is used
_FROM_ZMQ = ("Curve", "ZmqTransport")


_FROM_TLS = ("TlsSettings", "TlsTransport")


def __getattr__(name: str) -> Any:
    if name in _FROM_ZMQ:
        from posa.transport import zmq
        return getattr(zmq, name)
    if name in _FROM_TLS:
        from posa.transport import tls
        return getattr(tls, name)
    raise AttributeError(f"module 'posa.transport' has no attribute {name!r}")

# scheme -> "module:Class" of the built-in transports, imported on first use
_BUILTIN = {
    "inproc": "posa.transport.inproc:InprocTransport",
    "tcp": "posa.transport.tcp:TcpTransport",
    "zmq+tcp": "posa.transport.zmq:ZmqTransport",
    "zmq+ipc": "posa.transport.zmq:ZmqTransport",
    "tls": "posa.transport.tls:TlsTransport",
}
_loaded: dict[str, Transport] = {}
_plugin_failures: list[str] | None = None    # None until the plugins are scanned
_scan_lock = threading.Lock()


def register(transport: Transport) -> None:
    """Make ``transport`` serve its ``schemes`` (replacing any earlier one)."""
    for scheme in transport.schemes:
        _loaded[scheme] = transport


def _scan_plugins() -> list[str]:
    """Load every installed plugin once; return what went wrong with each that
    failed. A broken plugin, or a package whose entry points cannot be read, must
    not keep the others or the built-ins from working."""
    global _plugin_failures
    with _scan_lock:
        if _plugin_failures is None:
            failures: list[str] = []
            for ep in _plugin_entry_points(failures):
                try:
                    register(ep.load()())
                except Exception as exc:
                    failures.append(f"transport plugin {ep.name!r} ({ep.value}) failed "
                                    f"to load: {exc}; fix or uninstall it")
            _plugin_failures = failures
        return _plugin_failures


def _plugin_entry_points(failures: list[str]) -> list[EntryPoint]:
    """The ``posa.transports`` entry points of every installed distribution, read
    one distribution at a time (the first of a name on the path wins)."""
    # imported here: importlib.metadata costs a tenth of posa's import time, and
    # only an address with an unknown scheme needs it
    from importlib.metadata import distributions
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for dist in distributions():
        name = "?"
        try:
            name = (dist.metadata["Name"] or "?").lower().replace("_", "-")
            if name in seen:
                continue
            seen.add(name)
            found.extend(ep for ep in dist.entry_points if ep.group == "posa.transports")
        except Exception as exc:     # e.g. a malformed entry_points.txt
            failures.append(f"the entry points of the installed package {name!r} "
                            f"cannot be read ({type(exc).__name__}: {exc}); fix or "
                            "reinstall it")
    return found


def get(scheme: str) -> Transport:
    """The transport serving ``scheme``. Raises ``TransportError`` if none does."""
    transport = _loaded.get(scheme)
    if transport is not None:
        return transport
    target = _BUILTIN.get(scheme)
    if target is not None:
        module, _, cls = target.partition(":")
        try:
            register(getattr(importlib.import_module(module), cls)())
        except ImportError as exc:
            raise TransportError(f"the {scheme!r} transport cannot load ({exc}); "
                                 "reinstall posa with its dependencies") from None
        return _loaded[scheme]
    failures = _scan_plugins()
    if scheme in _loaded:
        return _loaded[scheme]
    raise TransportError(f"no transport serves scheme {scheme!r}; use one of "
                         f"{', '.join(schemes())} or install a posa.transports plugin"
                         + "".join(f" ({failure})" for failure in failures))


def schemes() -> list[str]:
    """Every scheme that a built-in or registered transport serves."""
    return sorted(set(_BUILTIN) | set(_loaded))


def split(address: str) -> tuple[str, str]:
    """``"tcp://h:1"`` -> ``("tcp", "h:1")``. Raises ``TransportError`` if malformed."""
    scheme, sep, rest = address.partition("://")
    if not sep or not scheme or not rest:
        raise TransportError(f"address {address!r} is not a transport URI; write it as "
                             "SCHEME://WHERE, e.g. tcp://127.0.0.1:7000")
    return scheme, rest


def listen(address: str, options: Options | None = None) -> Listener:
    """Bind a listener at ``address`` with the transport its scheme names."""
    return get(split(address)[0]).listen(address, options or Options())


def connect(address: str, options: Options | None = None) -> Connection:
    """Connect to the listener at ``address`` with the transport its scheme names."""
    return get(split(address)[0]).connect(address, options or Options())
