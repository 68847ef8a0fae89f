"""The ``zmq+tcp://`` and ``zmq+ipc://`` address syntax, and ipc paths in use.

``zmq+tcp://h:p`` is ZeroMQ's ``tcp://h:p`` and ``zmq+ipc:///path`` its
``ipc:///path``. Parsing needs no socket; only ``check_ipc_free`` looks at the
file system, because libzmq replaces whatever file is at an ipc path.
"""
from __future__ import annotations

import os
import socket
import stat

from posa.errors import TransportError

__all__ = ["zmq_endpoint", "posa_address", "check_ipc_free"]

_SCHEMES = {"zmq+tcp": "tcp", "zmq+ipc": "ipc"}
_IPC_PATH_MAX = 107  # sun_path of a Unix socket, less the terminating NUL


def zmq_endpoint(address: str, *, binding: bool) -> tuple[str, bool]:
    """``zmq+tcp://h:p`` -> (``tcp://h:p``, is-IPv6). Raises ``TransportError``."""
    scheme, sep, where = address.partition("://")
    kind = _SCHEMES.get(scheme) if sep else None
    if kind is None:
        raise TransportError(f"address {address!r} is not a ZeroMQ address; write "
                             "zmq+tcp://HOST:PORT or zmq+ipc:///PATH")
    if kind == "ipc":
        if not where.startswith("/"):
            raise TransportError(f"address {address!r} needs an absolute path; write "
                                 "it as zmq+ipc:///PATH, e.g. zmq+ipc:///tmp/agent.sock")
        if len(os.fsencode(where)) > _IPC_PATH_MAX:
            raise TransportError(f"the path of {address!r} is longer than the "
                                 f"{_IPC_PATH_MAX} bytes a Unix socket allows; use a "
                                 "shorter one")
        return "ipc://" + where, False
    host, colon, port = where.rpartition(":")
    port_ok = port.isdigit() and int(port) <= 65535 and (binding or int(port) > 0)
    if not colon or not host or not (port_ok or (binding and port == "*")):
        example = "port 0 picks a free one" if binding else "the listener's port"
        raise TransportError(f"address {address!r} needs HOST:PORT ({example}), "
                             "e.g. zmq+tcp://127.0.0.1:7002")
    ipv6 = host.startswith("[")
    if ipv6 and not host.endswith("]"):
        raise TransportError(f"address {address!r} has an unclosed IPv6 bracket; "
                             "write it as zmq+tcp://[::1]:7002")
    return "tcp://" + where, ipv6


def posa_address(endpoint: str) -> str:
    """ZeroMQ's ``tcp://h:p`` -> ``zmq+tcp://h:p``."""
    kind, _, where = endpoint.partition("://")
    return f"zmq+{kind}://{where}"


def check_ipc_free(address: str, path: str) -> None:
    """libzmq replaces whatever file is at an ipc path: refuse a live listener's
    socket or a file that is no socket; a stale socket file may be replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISSOCK(mode):
        raise TransportError(f"cannot bind {address}: {path} exists and is not a "
                             "socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return  # nobody accepts there: a stale file left by a dead process
    except OSError:
        pass    # someone is there but busy: as good as in use
    finally:
        probe.close()
    raise TransportError(f"cannot bind {address}: address in use by a live listener; "
                         "choose another path or close that listener")
