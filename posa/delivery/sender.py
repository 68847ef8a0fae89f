"""The Sender: sends to names on behalf of one name, from any number of threads.

Each thread gets a ``Forwarder`` of its own (its own streams, connections and
order), so sends never contend for a lock and no message crosses a thread.  A
``Peer`` sends through one; a publisher or a client that receives nothing uses
one directly.  Closing flushes the closing thread's messages for up to
``linger`` seconds, then closes every thread's forwarder.

A thread finds its forwarder in a dict keyed by its ident, which holds every
forwarder the sender made and not replaced (a thread-local and a list of them
cost a client that sends from one thread about 1.2 KB; docs/benchmarks.md, "An
idle client's memory"). A thread that ends leaves its forwarder to the next thread with
its ident, which uses it alone as the first did; ``close`` closes them all.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.delivery.forwarder import Forwarder
from posa.delivery.links import Resolve
from posa.errors import Closed, PosaError
from posa.runtime.reactor import Reactor
from posa.transport.base import Options
from posa.wire.codec import Codec, Kind, Message

__all__ = ["Sender"]

log = logging.getLogger("posa.delivery.sender")
_ident = threading.get_ident


class Sender:
    """Sends to names on behalf of ``name``, from any number of threads.

    Each thread gets a ``Forwarder`` of its own (its own stream, connections and
    order), so sends never contend for a lock. ``Peer`` sends through one; a
    publisher or client that receives nothing uses one directly (``name`` may be
    empty for an anonymous sender)."""

    def __init__(self, name: str, *, resolve: Resolve,
                 codec: Codec | None = None, options: Options | None = None,
                 window: int = 1024, ack_timeout: float = 1.0,
                 on_notify: Callable[[Message], None] | None = None,
                 authenticator: Authenticator | None = None,
                 reactor: Reactor | None = None) -> None:
        self.name = name
        self.codec = codec or Codec()
        self.options = self.codec.limits.options(options)
        self._resolve, self._window, self._ack_timeout = resolve, window, ack_timeout
        self._on_notify, self._auth, self._reactor = on_notify, authenticator, reactor
        # every forwarder made and not replaced, by thread ident: read it (a hot
        # path's ``forwarder()``, inline), never change it
        self.by_thread: dict[int, Forwarder] = {}
        self._lock = threading.Lock()
        self.closed = False
        self._pid = os.getpid()         # a forked child's copy is not its to flush

    def forwarder(self) -> Forwarder:
        """This thread's forwarder."""
        fwd = self.by_thread.get(_ident())
        if fwd is None or fwd.closed:
            return self._new_forwarder()
        return fwd

    def _new_forwarder(self) -> Forwarder:
        """A forwarder for this thread, in place of its closed one if it had one."""
        if self.closed:
            raise Closed(f"the sender {self.name!r} is closed")
        fwd = Forwarder(self.name, resolve=self._resolve, codec=self.codec,
                        options=self.options, window=self._window,
                        ack_timeout=self._ack_timeout, on_notify=self._on_notify,
                        authenticator=self._auth, reactor=self._reactor)
        with self._lock:
            self.by_thread[_ident()] = fwd
        return fwd

    def send(self, name: str, body: Any, *, headers: dict[str, Any] | None = None,
             timeout: float = 5.0, kind: int = Kind.SEND) -> int:
        """Send reliably to one name; returns the message's sequence number."""
        return self.forwarder().send(name, body, kind=kind, headers=headers,
                                     deadline=time.monotonic() + timeout)

    def request(self, name: str, body: Any, *, timeout: float = 5.0,
                headers: dict[str, Any] | None = None, failfast: bool = False) -> Message:
        """Send a request to one name and return the reply message."""
        return self.forwarder().request(name, body, timeout=timeout, headers=headers,
                                        failfast=failfast)

    def forget(self, name: str) -> None:
        """For this thread: drop what is known about ``name`` (its next send resolves
        it again); its unacknowledged messages are given up."""
        self.forwarder().forget(name)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything this thread sent is acknowledged."""
        self.forwarder().flush(time.monotonic() + timeout)

    def unacknowledged(self) -> int:
        """Messages sent by every thread and not yet acknowledged (approximate)."""
        with self._lock:
            forwarders = list(self.by_thread.values())
        return sum(fwd.unacknowledged() for fwd in forwarders)

    @property
    def inherited(self) -> bool:
        """True in a forked child of the process that made this sender: its
        forwarders' streams and connections are the parent's."""
        return self._pid != os.getpid()

    def close(self, linger: float = 0.0) -> None:
        """Flush this thread's messages for up to ``linger`` s, then close every
        forwarder. Call it when the other sending threads are done.

        In a forked child a sender made by the parent neither flushes (the streams
        are the parent's) nor takes the lock (a thread of the parent, absent here,
        may have held it at the fork): its forwarders close the child's copies."""
        if self.closed:
            return
        if self.inherited:
            self.closed = True
            forwarders = list(self.by_thread.values())
            self.by_thread.clear()
            for fwd in forwarders:
                fwd.close()
            return
        mine = self.by_thread.get(_ident())
        if mine is not None and linger > 0:
            try:
                mine.flush(time.monotonic() + linger)
            except PosaError as exc:
                log.warning("%s: closing with undelivered messages: %s", self.name, exc)
        self.closed = True
        with self._lock:
            forwarders = list(self.by_thread.values())
            self.by_thread.clear()
        for fwd in forwarders:
            fwd.close()
