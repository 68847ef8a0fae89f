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

In a forked child the forwarders a sender holds are the parent's (their streams
and connections; the forking thread has the same ident there): a fork hook
(``_forget_forwarders``) moves them aside in the child, where ``close`` closes
only their copies of descriptors, so that the child's first send from any thread
makes a forwarder, stream and connection of its own. The send path checks
nothing per send for this.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.delivery.budget import seconds
from posa.delivery.forwarder import Forwarder
from posa.delivery.links import Resolve
from posa.errors import Closed, PosaError
from posa.runtime.reactor import Reactor
from posa.transport.base import Options
from posa.wire.codec import Codec, Kind, Message

__all__ = ["Sender"]

log = logging.getLogger("posa.delivery.sender")
_ident = threading.get_ident
_senders: weakref.WeakSet[Sender] = weakref.WeakSet()  # for the fork hook below


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
        self._pid = os.getpid()         # made in this process, or inherited
        self._parents: list[Forwarder] = []     # (in a forked child) the parent's
        _senders.add(self)

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
        return self.forwarder().send(name, body, kind=kind, headers=headers, deadline=(
            time.monotonic() + seconds(timeout, "a send's timeout")))

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
        self.forwarder().flush(time.monotonic() + seconds(timeout, "a flush's timeout"))

    def unacknowledged(self) -> int:
        """Messages sent by every thread and not yet acknowledged (approximate)."""
        with self._lock:
            forwarders = list(self.by_thread.values())
        return sum(fwd.unacknowledged() for fwd in forwarders)

    @property
    def inherited(self) -> bool:
        """True in a forked child of the process that made this sender (whose
        forwarders made before the fork are the parent's)."""
        return self._pid != os.getpid()

    def _forked(self) -> None:
        """(in a forked child, from the fork hook) The forwarders are the parent's:
        set aside for ``close``; the next send of each thread makes its own. A
        thread of the parent, absent here, may have held the lock at the fork."""
        self._lock = threading.Lock()
        self._parents.extend(self.by_thread.values())
        self.by_thread.clear()          # (in place: a Peer reads this very dict)
        self._reactor = None            # the parent's thread: the child's own instead

    def close(self, linger: float = 0.0) -> None:
        """Flush this thread's messages for up to ``linger`` s, then close every
        forwarder. Call it when the other sending threads are done.

        In a forked child the parent's forwarders are neither flushed nor locked
        (their streams are the parent's): they close the child's copies of their
        descriptors only; the child's own forwarders close as in any process."""
        mine = self.by_thread.get(_ident())
        if mine is not None and linger > 0 and not self.closed:
            try:
                mine.flush(time.monotonic() + linger)
            except PosaError as exc:
                log.warning("%s: closing with undelivered messages: %s", self.name, exc)
        self.closed = True
        with self._lock:
            forwarders = [*self.by_thread.values(), *self._parents]
        for fwd in forwarders:
            fwd.close()     # (a parent's: its inherited close, copies only)
        with self._lock:    # forgotten once closed: a close interrupted (KeyboardInterrupt)
            self.by_thread.clear()  # and made again closes the rest
            self._parents.clear()


def _forget_forwarders() -> None:
    """In a forked child no sender's forwarder is the child's (``Sender._forked``)."""
    for sender in list(_senders):
        sender._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_forwarders)
