"""What every ``RegistryClient`` of a process shares instead of holding its own.

A process may hold thousands of idle clients (one per component that looks a
name up, or a pool of them), each with one connection to a dispatcher, so what
a client holds it holds thousands of times.  What need not differ between
clients is made once per process here:

* the ``Codec`` of a client given none (a codec is thread-safe, with a packer
  per thread, and its default limits are the same for all);
* the ``Options`` of a client given none, one per request timeout;
* the resolver that reaches a dispatcher's address (its name pinned there);
* one condition, on which a ``watch()`` call waits for the dispatcher to take
  its subscription, in place of an event per client: a client's watch is taken
  once per connection, and a waiter checks its own client when woken.

Each is a ``process_local``, or a bounded cache of immutable values: a forked
child makes its own, and a held lock is never copied into it.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from posa.errors import Closed
from posa.naming.protocol import DISPATCHER
from posa.naming.registration import Resolve, resolver
from posa.runtime.local import process_local
from posa.transport.base import Options
from posa.wire.codec import Codec

__all__ = ["client_codec", "client_options", "pinned_dispatcher", "wait_taken",
           "notify_taken"]

client_codec = process_local(Codec)
"""The codec of every client given none."""

_taken = process_local(threading.Condition)


@functools.lru_cache(maxsize=64)
def client_options(timeout: float) -> Options:
    """The transport options of a client given none: sends wait at most its
    request ``timeout``, 5 s at most. Frozen, so shared."""
    return Options(send_timeout=min(timeout, 5.0))


@functools.lru_cache(maxsize=256)
def pinned_dispatcher(address: str) -> Resolve:
    """A resolver that reaches the dispatcher at ``address`` (and no other name)."""
    return resolver(None, pins={DISPATCHER: address})


def wait_taken(taken: Callable[[], bool], timeout: float,
               closed: Callable[[], bool]) -> bool:
    """Wait up to ``timeout`` s until ``taken()``; its result then. ``Closed`` if
    ``closed()`` first (its client's close wakes the wait with ``notify_taken``)."""
    cond = _taken()
    with cond:
        done = cond.wait_for(lambda: taken() or closed(), timeout)
    if closed():
        raise Closed("this registry client is closed")
    return done


def notify_taken() -> None:
    """A client's watch was taken (or lost): wake the waiters to check theirs."""
    cond = _taken()
    with cond:
        cond.notify_all()
