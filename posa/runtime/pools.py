"""Thread pools that a forked child leaves to its parent: ``Pool``.

A ``concurrent.futures.ThreadPoolExecutor`` copied into a forked child is the
parent's: its threads are not in the child, and its lock may have been held at
the fork by a thread of the parent submitting work (that thread is not in the
child either, so the lock is never released there). ``shutdown`` takes that
lock: a child closing an inherited object that shuts its pool down could wait
for ever. A ``Pool`` knows the process that made it; in any other process its
``shutdown`` returns at once and leaves the pool alone (the parent still shuts
its own pool down).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["Pool"]


class Pool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose ``shutdown`` in a forked child does nothing."""

    def __init__(self, max_workers: int, *, thread_name_prefix: str) -> None:
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        self._made_in = os.getpid()
        self._prefix = thread_name_prefix

    @property
    def inherited(self) -> bool:
        """True in a forked child of the process that made the pool."""
        return self._made_in != os.getpid()

    def here(self) -> Pool:
        """This pool; in a forked child, a new one like it, the child's own (for a
        close that still runs on a worker thread there)."""
        if not self.inherited:
            return self
        return Pool(self._max_workers, thread_name_prefix=self._prefix)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``ThreadPoolExecutor.shutdown``; in a forked child, nothing: the
        threads and the lock are the parent's."""
        if self.inherited:
            return
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
