"""In-process transport: ``inproc://NAME``, frames handed over by reference.

A listener is entered under NAME in a process-global table; ``connect`` finds it
there, so both ends must live in the same process. Nothing is serialised or
copied: the ``bytes`` object a sender passes is the one the receiver gets.

Strategy
--------
Each connection owns two deques: ``_up`` (connection -> listener) and
``_ready`` (listener -> connection). A listener's ``_ready`` holds connections,
one entry per frame waiting in that connection's ``_up``; popping an entry and
then that connection's oldest frame yields each connection's frames in order
and the connections in arrival order. ``deque.append``/``popleft`` are atomic,
so the data path takes no lock, and ``len()`` of a deque is the exact number of
frames in flight in one direction, which ``Options.high_water_mark`` bounds.

Wake-ups cost a system call or a lock, so they are paid per batch, not per frame:

- ``fileno()`` is an eventfd (a pipe where there is none), created on first use.
  A sender writes it only when ``_signalled`` is false, and sets the flag. A
  reader that finds its deque empty clears the flag, drains the descriptor and
  looks once more before it reports ``None``: a frame appended before the flag
  was cleared is found by that look, one appended after writes the descriptor.
  Readiness may be spurious; it is never missed. Until ``fileno()`` is called
  the flag stays set, so endpoints nobody polls make no system calls.
- A thread that must block (``recv()``, or ``send`` at the high-water mark)
  enters a ``Sleepers`` deque with a lock of its own, takes a last look, and
  sleeps on that lock. A waker pops the lock it releases, so each sleeper is
  woken once; a counter of sleepers (what a Condition offers) stays up until
  the sleeper runs again, and meanwhile every frame would pay a wake-up.
- A blocked sender is woken when the receiver has taken the queue down to half
  the mark: one wake-up per half-queue, not per frame.

``Options.linger`` has nothing to do here: a sent frame is already in the
receiver's memory, and frames a connection sent before closing stay deliverable.

    posa.transport.inproc             InprocTransport: the scheme, listen and connect
    posa.transport.inproc.wakeup      the wake-up descriptor and the sleepers' locks
    posa.transport.inproc.receiver    the receiving half both ends have
    posa.transport.inproc.listener    InprocListener and the table of names
    posa.transport.inproc.connection  InprocConnection: both deques of a connection
"""
from __future__ import annotations

from posa.errors import TransportError
from posa.transport.base import Options
from posa.transport.inproc import listener as _table
from posa.transport.inproc.connection import InprocConnection
from posa.transport.inproc.listener import PREFIX, InprocListener, listeners, parents

__all__ = ["InprocTransport", "InprocListener", "InprocConnection"]


def _name_of(address: str) -> str:
    if not address.startswith(PREFIX) or len(address) == len(PREFIX):
        raise TransportError(f"{address!r} is not an inproc address; write it as "
                             "inproc://NAME, e.g. inproc://agent-3")
    return address[len(PREFIX):]


class InprocTransport:
    """Serves ``inproc://NAME``: listeners and connections inside one process."""

    schemes = ("inproc",)

    def listen(self, address: str, options: Options) -> InprocListener:
        """Enter a listener under NAME. Raises ``TransportError`` if NAME is taken."""
        name = _name_of(address)
        with _table.listeners_lock:     # (made anew in a forked child)
            if name in listeners:
                raise TransportError(f"the inproc name {name!r} is already taken by a "
                                     "listener in this process; close that listener "
                                     "first or pick another name")
            listener = InprocListener(name, options)
            listeners[name] = listener
            _table.parents_names.discard(name)      # the child's own now
        return listener

    def connect(self, address: str, options: Options) -> InprocConnection:
        """Connect to the listener entered under NAME. Raises ``TransportError``."""
        name = _name_of(address)
        listener = listeners.get(name)
        if listener is None and name in _table.parents_names:
            raise TransportError(parents(address))
        if listener is None:
            raise TransportError(f"no inproc listener named {name!r} in this process; "
                                 "an inproc:// address reaches only listeners of the "
                                 "process itself: listen on it first, or use tcp:// or "
                                 "zmq+ipc:// between processes")
        return listener._accept(options)
