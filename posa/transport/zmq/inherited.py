"""zmq+ endpoints in a forked child: the parent's, closed in the child at the fork.

A libzmq context is not fork-safe: its I/O thread, which moves every frame of
every socket, is not in the child; a frame a child sends through an inherited
socket goes nowhere, and a signal it sent would land in a mailbox the parent
shares. pyzmq makes ``close`` and ``term`` of an inherited socket or context do
nothing in a child (it checks the process id); never calling libzmq on them is
posa's part. The fork hook (``_forget_parents``), in the child:

* closes every endpoint the parent opened (``Endpoint._forked``): a send,
  receive or poll raises ``Closed`` saying that the endpoint is the parent's and
  to open one in the child, and ``close`` returns at once (taking no lock that a
  thread of the parent may have held, writing no wake-up pipe, which the parent
  shares). A ``Peer``, ``Sender`` or ``Client`` inherited from the parent opens
  connections of its own on its next send, on the child's own context;
* closes the child's copies of the operating-system sockets libzmq opened for
  them: a listener's listening and accepted sockets (found by their local
  address), a connection's socket (by its peer's address, if that is an IP
  address or an ipc path). Otherwise the child would keep the parent's port and
  connections open after the parent closed them, until the child exits: the
  port could not be bound again, and the other side would not see the end.
  libzmq's other descriptors (mailboxes, its poller) stay open in the child,
  unused.

An endpoint being made at the fork by another thread (its socket bound, say, not
yet an endpoint the hook knows) would be missed: a fork waits (``_before_fork``,
at most ``BUILD_WAIT`` s) for the endpoints being made (``building``) to be made.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from posa.transport.zmq.endpoint import Endpoint

__all__ = ["building", "opened", "parents"]

BUILD_WAIT = 5.0        # s a fork waits at most for the endpoints being made
_endpoints: weakref.WeakSet[Endpoint] = weakref.WeakSet()     # for the fork hook
_gate = threading.Condition(threading.Lock())   # guards _building; held over a fork
_building = [0]         # endpoints being made now
_WILDCARDS = ("0.0.0.0", "::")
_Where = tuple[str, int] | str          # (host, port), or an ipc path


def opened(endpoint: Endpoint) -> None:
    """``endpoint`` was opened in this process (a forked child closes its copy)."""
    _endpoints.add(endpoint)


@contextlib.contextmanager
def building() -> Iterator[None]:
    """Around the making of an endpoint, which a fork waits for (see the module
    docstring)."""
    with _gate:
        _building[0] += 1
    try:
        yield
    finally:
        with _gate:
            _building[0] -= 1
            if not _building[0]:
                _gate.notify_all()


def _before_fork() -> None:
    _gate.acquire()
    _gate.wait_for(lambda: not _building[0], BUILD_WAIT)


def _after_in_parent() -> None:
    _gate.release()


def parents(address: str) -> str:
    """Why a forked child cannot use the parent's endpoint at ``address``."""
    return (f"{address} was opened in the parent process, whose libzmq context (and "
            "its I/O thread) a forked child cannot use: open a new endpoint in the "
            "child (an inherited Peer, Sender or Client does so on its next send)")


def _where(address: str) -> _Where | None:
    """``zmq+tcp://h:p`` -> (h, p) with h an IP address; ``zmq+ipc:///p`` -> p;
    None for a host name (not looked up in a fork hook)."""
    scheme, _, rest = address.partition("://")
    if scheme == "zmq+ipc":
        return rest
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def _matches(where: _Where, name: object) -> bool:
    """Whether a socket address ``name`` (as ``getsockname`` gives it) is ``where``."""
    if isinstance(where, str) or isinstance(name, (str, bytes)):
        return isinstance(name, str) and name == where
    if not isinstance(name, tuple) or len(name) < 2:
        return False
    host, port = where
    there = str(name[0]).removeprefix("::ffff:")
    return name[1] == port and (host in _WILDCARDS or there == host)


def _close_copies(local: list[_Where], remote: list[_Where]) -> None:
    """Close this process's descriptors of the sockets bound at one of ``local``
    or connected to one of ``remote`` (the parent's, in a forked child)."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:     # no /proc: the copies stay open until the child exits
        return
    timeout = socket.getdefaulttimeout()    # with one, socket(fileno=) would make the
    socket.setdefaulttimeout(None)          # descriptor non-blocking, and so the
    try:                                    # parent's, which shares its flags
        for fd in fds:
            _close_if_ours(fd, local, remote)
    finally:
        socket.setdefaulttimeout(timeout)


def _close_if_ours(fd: int, local: list[_Where], remote: list[_Where]) -> None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return          # not a socket (or closed meanwhile)
    try:
        ours = any(_matches(w, sock.getsockname()) for w in local)
        if not ours and remote:
            ours = any(_matches(w, sock.getpeername()) for w in remote)
    except OSError:
        ours = False    # not connected, or not an address family of ours
    finally:
        sock.detach()
    if ours:
        os.close(fd)


def _forget_parents() -> None:
    """In a forked child every zmq endpoint is the parent's: close the child's
    copies (see the module docstring)."""
    global _gate
    _gate, _building[0] = threading.Condition(threading.Lock()), 0
    inherited = [endpoint for endpoint in list(_endpoints) if not endpoint._sock_closed]
    _endpoints.clear()
    local: list[_Where] = []
    remote: list[_Where] = []
    for endpoint in inherited:
        endpoint._forked()
        where = _where(endpoint.address)
        if where is not None:
            (local if endpoint.listening else remote).append(where)
    if local or remote:
        _close_copies(local, remote)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_in_parent,
                        after_in_child=_forget_parents)
