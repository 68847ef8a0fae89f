"""The time budget of the work in hand: a request's deadline, inherited by the
calls made while handling it.

A handler runs ``with until(request.deadline)``; every request it makes (on any
peer, client or forwarder of this thread or of the asyncio task it runs in)
gets at most the time left: ``bounded(timeout)``.  So a request that has 1 s
left does not start a nested call that would wait 5 s for an answer nobody
waits for, and the nested call's ``ttl`` tells its server as much.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TypeVar

__all__ = ["until", "enter", "leave", "call", "remaining", "bounded", "not_finite",
           "no_send_deadline", "seconds", "wrong_timeout", "LONGEST"]

LONGEST = threading.TIMEOUT_MAX
"""The longest timeout taken, in seconds (about 292 years on Linux): the longest
wait a thread can make. A longer one is refused, as the command line refuses
one over ``posa.cli.values.MAX_SECONDS``: nothing could wait for it."""

_A = TypeVar("_A")
_R = TypeVar("_R")
_deadline: ContextVar[float | None] = ContextVar("posa_deadline", default=None)


@contextmanager
def until(deadline: float | None) -> Iterator[None]:
    """Run the block with ``deadline`` (``time.monotonic()`` seconds) as its budget;
    None leaves the budget as it is. A budget never grows inside a shorter one."""
    if deadline is None:
        yield
        return
    outer = _deadline.get()
    token = _deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def enter(deadline: float) -> Token[float | None]:
    """``until`` without a context manager, for hot paths: set ``deadline`` as the
    budget (never growing an outer one); pass the result to ``leave``."""
    outer = _deadline.get()
    return _deadline.set(deadline if outer is None or deadline < outer else outer)


def leave(token: Token[float | None]) -> None:
    _deadline.reset(token)


def call(deadline: float, fn: Callable[[_A], _R], arg: _A) -> _R:
    """``fn(arg)`` with ``deadline`` as its budget: ``enter`` and ``leave`` in one
    call (a handler's, on the hot path of a request)."""
    outer = _deadline.get()
    token = _deadline.set(deadline if outer is None or deadline < outer else outer)
    try:
        return fn(arg)
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left of the current budget (None: no budget; never negative)."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def bounded(timeout: float) -> float:
    """A request's ``timeout`` checked (``seconds``) and cut to the current budget."""
    try:
        if not 0.0 <= timeout <= LONGEST:   # nan, negative, infinite, too large (0.0: a
            # float compared with a float, some 300 instructions fewer than with int 0)
            raise wrong_timeout(timeout, "a request's timeout", _ANSWERED)
    except TypeError:                       # not a number
        raise wrong_timeout(timeout, "a request's timeout", _ANSWERED) from None
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    return max(0.0, min(timeout, deadline - time.monotonic()))


_ANSWERED = "a request is answered by its deadline or told Timeout"
_TAKEN = "it is delivered or the sender told Timeout"


def seconds(timeout: object, what: str, meaning: str = _TAKEN, *, zero: bool = True
            ) -> float:
    """``timeout`` if it is a number of seconds from 0 (above 0 unless ``zero``)
    to ``LONGEST``; else the ``ValueError`` of ``wrong_timeout``. The one check
    of every public timeout of the delivery layer (``bounded`` makes it for
    requests; ``Peer.send`` makes it inline, on its hot path)."""
    try:
        if 0.0 <= timeout <= LONGEST and (zero or timeout):     # type: ignore[operator]
            return float(timeout)       # type: ignore[arg-type]
    except TypeError:
        pass
    raise wrong_timeout(timeout, what, meaning, zero=zero)


def wrong_timeout(timeout: object, what: str, meaning: str = _TAKEN, *,
                  zero: bool = True) -> ValueError:
    """The error of a timeout that is no wait (nan, negative, infinite, not a
    number; 0 unless ``zero``) or one longer than any wait (over ``LONGEST``),
    saying which."""
    if isinstance(timeout, (int, float)) and timeout > LONGEST and timeout - timeout == 0:
        return ValueError(f"{what} of {timeout!r} s is too large: at most {LONGEST:.0f} s "
                          "(the longest wait a thread can make); pass the longest wait "
                          f"you accept ({meaning})")
    low = "from 0" if zero else "above 0 and up"
    return ValueError(f"{what} must be a finite number of seconds {low} to "
                      f"{LONGEST:.0f}, not {timeout!r}: pass the longest wait you "
                      f"accept ({meaning})")


def not_finite(seconds: float) -> ValueError:
    """The error of a request whose timeout is no finite number of seconds (its
    ``ttl`` would be none), or too large to carry: raised before anything is sent."""
    return wrong_timeout(seconds, "a request's timeout", _ANSWERED)


def no_send_deadline(deadline: float) -> ValueError:
    """The error of a send whose timeout is no finite number of seconds (its
    deadline, ``deadline``, is as infinite or nan: a wait for room in the window
    would never end): raised at first contact with a name, before anything is
    sent, and before a wait for room."""
    return ValueError(f"a send's timeout must be a finite number of seconds, not "
                      f"{deadline!r}: pass the longest wait you accept for the "
                      "recipient to take the message (it is delivered or the sender "
                      "told Timeout)")
