"""The process's one ZeroMQ context, with its fork hook and its exit flush.

One ``zmq.Context`` per process (one I/O thread), created on first use under a
lock and again in a forked child: a context inherited over ``fork`` must not be
used. At interpreter exit the context is terminated so that frames queued by
closed endpoints are flushed for at most the longest ``linger`` any of them had
(an endpoint still open then only delays exit by that much).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time

import zmq

__all__ = ["context", "note_linger", "exit_by"]

_ctx_lock = threading.Lock()
_ctx: zmq.Context[zmq.Socket[bytes]] | None = None
_ctx_pid = 0
_exit_linger = 0.0  # longest linger of an endpoint closed so far, in seconds
_exit_deadline: float | None = None     # exit_by()


def context() -> zmq.Context[zmq.Socket[bytes]]:
    """The process's one context, created on first use (again after a fork)."""
    global _ctx, _ctx_pid
    ctx = _ctx
    if ctx is not None and _ctx_pid == os.getpid():
        return ctx
    with _ctx_lock:
        if _ctx is None or _ctx_pid != os.getpid():
            _ctx = zmq.Context(io_threads=1)
            _ctx_pid = os.getpid()
        return _ctx


def note_linger(seconds: float) -> None:
    """An endpoint closed with ``linger`` = ``seconds``: exit waits that long at most."""
    global _exit_linger
    _exit_linger = max(_exit_linger, seconds)


def exit_by(deadline: float) -> None:
    """Exit waits for lingering frames until ``deadline`` (``time.monotonic()``) at
    the latest: for a command that must end by a time (``posa.cli``)."""
    global _exit_deadline
    _exit_deadline = deadline


def _flush_at_exit() -> None:
    ctx = _ctx
    linger = _exit_linger if _exit_deadline is None else \
        min(_exit_linger, _exit_deadline - time.monotonic())
    if ctx is None or _ctx_pid != os.getpid() or linger <= 0:
        return

    def term() -> None:
        with contextlib.suppress(zmq.ZMQError):
            ctx.term()

    flusher = threading.Thread(target=term, name="posa-zmq-flush", daemon=True)
    flusher.start()
    flusher.join(linger)


def _forked() -> None:
    """In a forked child the parent's context is never used nor terminated (pyzmq
    ignores it there too); the lock is new: a thread of the parent making the
    context at the fork would have left it held."""
    global _ctx_lock
    _ctx_lock = threading.Lock()


atexit.register(_flush_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
