"""Thread pools that work in a forked child and leave the parent's be: ``Pool``.

A ``concurrent.futures.ThreadPoolExecutor`` copied into a forked child is the
parent's: its threads are not in the child, and its lock may have been held at
the fork by a thread of the parent submitting work (that thread is not in the
child either, so the lock is never released there). CPython makes nothing of
that but its module-wide lock anew: in the child, ``submit`` could wait for ever
for the pool's lock, or hand the work to a worker the pool counts as idle, which
is not there to run it; ``shutdown`` takes that lock too.

A ``Pool`` knows the process that made it. In any other process it touches none
of the parent's state: ``submit`` (and so ``map``) runs the work on a pool of the
child's own, made on the child's first submit with the same number of threads
(``here``), and ``shutdown`` shuts that one down, if any, leaving the parent's
threads and lock alone (the parent still shuts its own pool down).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["Pool"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_own_lock = threading.Lock()    # guards ``Pool._own``; made anew in a forked child
_pid = [os.getpid()]            # this process's (no system call per submit)


class Pool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` that, in a forked child, runs work on threads of the
    child's own and leaves the parent's threads and lock alone."""

    def __init__(self, max_workers: int, *, thread_name_prefix: str) -> None:
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        self._made_in = _pid[0]
        self._prefix = thread_name_prefix
        self._own: Pool | None = None       # (in a forked child) the child's pool

    @property
    def inherited(self) -> bool:
        """True in a forked child of the process that made the pool."""
        return self._made_in != _pid[0]

    def here(self) -> Pool:
        """This pool; in a forked child, the child's own like it (made on first use),
        which runs what is submitted there."""
        if not self.inherited:
            return self
        with _own_lock:
            own = self._own
            if own is None or own.inherited:        # (a grandchild's: made anew)
                own = self._own = Pool(self._max_workers, thread_name_prefix=self._prefix)
            return own

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args,
               **kwargs: _P.kwargs) -> Future[_T]:
        """As ``ThreadPoolExecutor.submit``; in a forked child, on the child's pool."""
        if self._made_in != _pid[0]:
            return self.here().submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``ThreadPoolExecutor.shutdown``; in a forked child, that of the child's
        pool, if it made one: the parent's threads and lock are the parent's."""
        if not self.inherited:
            super().shutdown(wait=wait, cancel_futures=cancel_futures)
            return
        own = self._own
        if own is not None and not own.inherited:
            own.shutdown(wait=wait, cancel_futures=cancel_futures)


def _forked() -> None:
    global _own_lock
    _own_lock = threading.Lock()    # a thread of the parent may have held it
    _pid[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
