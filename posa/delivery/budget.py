"""The time budget of the work in hand: a request's deadline, inherited by the
calls made while handling it.

A handler runs ``with until(request.deadline)``; every request it makes (on any
peer, client or forwarder of this thread or of the asyncio task it runs in)
gets at most the time left: ``bounded(timeout)``.  So a request that has 1 s
left does not start a nested call that would wait 5 s for an answer nobody
waits for, and the nested call's ``ttl`` tells its server as much.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TypeVar

__all__ = ["until", "enter", "leave", "call", "remaining", "bounded", "not_finite",
           "no_send_deadline"]

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
    """``timeout`` cut to the current budget."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    return max(0.0, min(timeout, deadline - time.monotonic()))


def not_finite(seconds: float) -> ValueError:
    """The error of a request whose timeout is no finite number of seconds (its
    ``ttl`` would be none): raised before anything is sent."""
    return ValueError(f"a request's timeout must be a finite number of seconds, not "
                      f"{seconds!r}: pass the longest wait you accept (a request is "
                      "answered by its deadline or told Timeout)")


def no_send_deadline(deadline: float) -> ValueError:
    """The error of a send whose timeout is no finite number of seconds (its
    deadline, ``deadline``, is as infinite or nan: a wait for room in the window
    would never end): raised at first contact with a name, before anything is
    sent, and before a wait for room."""
    return ValueError(f"a send's timeout must be a finite number of seconds, not "
                      f"{deadline!r}: pass the longest wait you accept for the "
                      "recipient to take the message (it is delivered or the sender "
                      "told Timeout)")
