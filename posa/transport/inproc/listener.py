"""The listening end of ``inproc://NAME``: ``InprocListener``.

A listener is entered under NAME in the process-global table ``listeners``,
where ``connect`` finds it. Its ``_ready`` deque holds connections, one entry
per frame waiting in that connection's ``_up``; popping an entry and then that
connection's oldest frame yields each connection's frames in order and the
connections in arrival order.

A forked child inherits copies of the table and its endpoints, not the threads
that read them: the fork hook (``_forget_parents``) empties the child's table
and closes its copies, so that in the child a send through an inherited
connection, a receive on an inherited listener and a ``connect`` to one of the
parent's names raise at once, saying so, instead of queueing frames nobody will
read; the child may listen on those names itself.
"""
from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import Counter

from posa.errors import Closed, TransportError
from posa.transport.base import Options, Route
from posa.transport.inproc.connection import InprocConnection
from posa.transport.inproc.receiver import Receiver, as_frame

__all__ = ["InprocListener", "PREFIX", "listeners", "listeners_lock"]

PREFIX = "inproc://"

listeners: dict[str, InprocListener] = {}
listeners_lock = threading.Lock()
parents_names: set[str] = set()    # (in a forked child) the parent's, at the fork
_connections: weakref.WeakSet[InprocConnection] = weakref.WeakSet()   # for the fork hook


def parents(address: str) -> str:
    """Why a forked child cannot reach the parent's inproc listener ``address``."""
    return (f"the inproc listener {address} is the parent process's: inproc names live "
            "in one process, and a forked child reaches only the inproc listeners it "
            "makes itself; make the Peer (or listener) in the child, or use tcp:// "
            "or zmq+ipc:// between processes")


class InprocListener(Receiver["InprocConnection"]):
    """An ``inproc://NAME`` listener; routes are connection ids (``int``)."""

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(PREFIX + name, options)
        self.rejections: Counter[str] = Counter()
        self._name = name
        self._routes: dict[Route, InprocConnection] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()   # guards _routes, rejections and accepting
        self._max_frame_size = options.max_frame_size
        self._hwm = options.high_water_mark
        self._parents = False           # (in a forked child) the parent's copy
        self._ended = False             # every step of close() done

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._routes)} connections"
        return f"<InprocListener {self.address} {state}>"

    def _closed_error(self) -> Closed:
        if self._parents:
            return Closed(parents(self.address))
        return Closed(f"the inproc listener {self.address} is closed; listen again")

    def recv_nowait(self) -> tuple[Route, bytes] | None:
        """The next ``(route, frame)``, or ``None``. Raises ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        try:
            conn = self._ready.popleft()
        except IndexError:
            if not self._unsignal():
                return None
            try:
                conn = self._ready.popleft()
            except IndexError:
                return None
        up = conn._up
        try:
            frame = up.popleft()
        except IndexError:   # close() emptied it after we took the entry
            raise self._closed_error() from None
        if conn._blocked and len(up) <= conn._up_low:
            conn._blocked.wake_all()
        return conn._route, frame

    def recv(self, timeout: float | None = None) -> tuple[Route, bytes]:
        """Block for the next ``(route, frame)``. Raises ``Timeout``, ``Closed``."""
        item = self.recv_nowait()
        if item is not None:
            return item
        return self._wait_for_frame(self.recv_nowait, timeout,
                                    f"the inproc listener {self.address}")

    def send(self, route: Route, frame: bytes) -> None:
        """Send ``frame`` to the connection ``route`` came from.

        Blocks while that connection has ``high_water_mark`` frames unread.
        Raises ``TransportError`` (no such connection, oversize frame),
        ``Timeout`` after ``send_timeout``, ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        conn = self._routes.get(route)
        if conn is None:
            raise TransportError(f"the inproc listener {self.address} has no connection "
                                 f"{route!r}: it was closed or dropped; a route is valid "
                                 "only while its connection is open")
        if frame.__class__ is not bytes:
            frame = as_frame(frame)
        if len(frame) > self._max_frame_size:
            raise TransportError(f"a frame of {len(frame)} bytes exceeds max_frame_size "
                                 f"{self._max_frame_size} of the inproc listener "
                                 f"{self.address}; split it or raise Options.max_frame_size")
        ready = conn._ready
        if len(ready) >= self._hwm:
            conn._wait_for_room(ready, self._hwm, self._options.send_timeout,
                                lambda: self._check_route(conn),
                                f"connection {route!r} of the inproc listener {self.address}")
        ready.append(frame)
        if not conn._signalled:
            conn._signal()
        if conn._readers:
            conn._readers.wake_one()

    def _check_route(self, conn: InprocConnection) -> None:
        if self._closed:
            raise self._closed_error()
        if conn._closed:
            raise TransportError(f"connection {conn._route!r} of the inproc listener "
                                 f"{self.address} was closed by its owner")

    def close(self) -> None:
        """Stop listening and drop every connection: their sends and, once they
        have read what was sent to them, their receives raise ``Closed``. Idempotent;
        a close interrupted (``KeyboardInterrupt``) is finished by the next one."""
        self._mark_closed()     # (done already by a close that was interrupted)
        if self._ended:
            return
        with listeners_lock:
            if listeners.get(self._name) is self:
                del listeners[self._name]
        with self._lock:
            conns = list(self._routes.values())
        for conn in conns:
            conn._drop(f"the inproc listener {self.address} was closed")
        self._ready.clear()
        for conn in conns:
            conn._up.clear()
        with self._lock:
            self._routes.clear()
        self._release()
        self._ended = True

    def _accept(self, options: Options) -> InprocConnection:
        with self._lock:
            if self._closed:
                raise TransportError(f"no inproc listener named {self._name!r} in this "
                                     "process: it was closed; listen again first")
            limit = self._options.max_connections
            if len(self._routes) >= limit:
                self.rejections["too-many-connections"] += 1
                raise TransportError(f"the inproc listener {self.address} refused a "
                                     f"connection: it has {limit} already (its "
                                     "max_connections); close some or raise "
                                     "Options.max_connections")
            conn = InprocConnection(self, next(self._ids), options)
            self._routes[conn._route] = conn
            _connections.add(conn)
            return conn

    def _forget(self, conn: InprocConnection) -> None:
        with self._lock:
            if self._routes.get(conn._route) is conn:
                del self._routes[conn._route]

    def _reject(self, conn: InprocConnection, cause: str, why: str) -> None:
        """Drop ``conn`` for a limit it broke, counted in ``rejections``."""
        with self._lock:
            if self._routes.get(conn._route) is conn:
                del self._routes[conn._route]
                self.rejections[cause] += 1
        conn._drop(why)

    def _forked(self) -> None:
        """(in a forked child) This listener is the parent's (its connections too:
        see ``_forget_parents``)."""
        super()._forked()
        self._parents = True
        self._lock = threading.Lock()


def _forget_parents() -> None:
    """In a forked child no inproc listener is the child's: the table starts empty
    (its lock new: a thread of the parent may have held it at the fork), and every
    connection is the parent's, that of a listener the parent closed too (it is
    in no table, its descriptor and its frames still the parent's)."""
    global listeners_lock
    listeners_lock = threading.Lock()
    parents_names.update(listeners)
    inherited = list(listeners.values())
    listeners.clear()
    for listener in inherited:
        listener._forked()
    connections = list(_connections)
    _connections.clear()
    for conn in connections:
        conn._forked()
        conn._send_error = conn._gone = parents(conn.address)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents)
