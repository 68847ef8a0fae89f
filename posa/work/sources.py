"""Where a work queue's items come from: the ``Source`` protocol, two sources,
and the feeder thread that lists a source into a queue.

A source is the application's side of the queue: ``items()`` lists the keys
there are to process, ``fetch(key)`` gives one item's data. Listing and
fetching may block (a directory on a slow disk, a database), so a ``Feeder``
runs them on a thread of its own, never on the reactor. It lists the source
every ``refresh`` seconds, fetches only keys the queue does not know (held,
completed and remembered, or dead), waits while the queue is full, and tells
the queue once the first listing is through (``join`` waits for that). A
listing or fetch that raises is logged and retried at the next refresh. A source
that holds its items (``posa.work.channelsource``) may offer ``forget(key)``:
called for a key the queue already knows.

``refresh`` is a finite number of seconds, positive (``check_refresh``, before the
queue starts anything): 0 would list a source without a pause, one core busy
for ever. It may be 0 only for a source whose ``items()`` waits itself and says
so with a true ``paced`` (a ``ChannelSource`` with a ``wait``).
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from posa.errors import Closed

__all__ = ["Source", "ListSource", "DirectorySource", "Feeder", "check_refresh"]

log = logging.getLogger("posa.work.sources")


class Source(Protocol):
    """Where a queue's items come from (the application's side of the queue)."""

    def items(self) -> Iterable[str]:
        """The keys of every item there is to process now (done ones may stay
        listed: the queue remembers what it has done)."""

    def fetch(self, key: str) -> Any:
        """The data of item ``key`` (msgpack data), handed to the executor."""


class ListSource:
    """Items held in memory: a mapping of key -> data, or a sequence whose keys
    are the positions as decimal strings ("0", "1", ...)."""

    def __init__(self, items: Mapping[str, Any] | Sequence[Any]) -> None:
        self._items = (dict(items) if isinstance(items, Mapping)
                       else {str(i): data for i, data in enumerate(items)})

    def items(self) -> Iterable[str]:
        return list(self._items)

    def fetch(self, key: str) -> Any:
        return self._items[key]


class DirectorySource:
    """The files in a directory matching ``pattern``: key = file name, data =
    {"path": absolute path, "size": bytes}. A file that appears later is
    picked up at the queue's next refresh."""

    def __init__(self, directory: str | os.PathLike[str], pattern: str = "*") -> None:
        self.directory = Path(directory).resolve()
        self.pattern = pattern

    def items(self) -> Iterable[str]:
        return sorted(p.name for p in self.directory.glob(self.pattern) if p.is_file())

    def fetch(self, key: str) -> Any:
        path = self.directory / key
        return {"path": str(path), "size": path.stat().st_size}

def check_refresh(refresh: float, source: Source | None) -> None:
    """Refuse a ``refresh`` that is not a finite number of seconds, or that is
    0 (or less) for a source that does not wait in ``items()`` itself (the module)."""
    if source is None:
        return
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) \
            or not math.isfinite(refresh) or refresh < 0:
        raise ValueError(f"WorkQueue refresh={refresh!r}: refresh is the seconds between "
                         "two listings of the source; give a finite number, e.g. 5.0")
    if refresh == 0 and not getattr(source, "paced", False):
        raise ValueError(f"WorkQueue refresh=0 would list {type(source).__name__} without "
                         "a pause, busy for ever: refresh is the seconds between two "
                         "listings of the source; give a positive number, e.g. 5.0 (0 "
                         "only for a source that waits in items(), a ChannelSource)")


class Feeder:
    """The thread that lists ``source`` into the queue named ``name`` every
    ``refresh`` seconds until ``stop()``. It asks the queue through three
    callables: ``wants(key)`` (whether ``key`` is new, once there is room for
    it: blocks while the queue is full), ``offer([(key, data)])`` (queue it) and
    ``listed()`` (the source was listed through once); ``wants`` and ``offer``
    raise ``Closed`` once the queue is closed, which ends the thread."""

    def __init__(self, name: str, source: Source, refresh: float, *,
                 wants: Callable[[str], bool],
                 offer: Callable[[list[tuple[str, Any]]], object],
                 listed: Callable[[], None]) -> None:
        self.name = name
        self.source = source
        self.refresh = refresh
        self._wants = wants
        self._offer = offer
        self._listed = listed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"posa-source-{name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listing; wait up to ``timeout`` for a fetch in progress."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._list_once()
                self._listed()
                self._stop.wait(self.refresh)
        except Closed:
            return

    def _list_once(self) -> None:
        name = self.name
        try:
            keys = list(self.source.items())
        except Exception:
            log.exception("queue %s: listing the source failed; retrying in %s s",
                          name, self.refresh)
            return
        forget = getattr(self.source, "forget", None)   # a source that holds items
        for key in keys:
            if self._stop.is_set():
                return
            if not self._wants(key):
                if forget is not None:
                    forget(key)
                continue                     # known: queued, done or dead
            try:
                data = self.source.fetch(key)
            except Exception:
                log.exception("queue %s: fetching %r failed; retrying at the next "
                              "refresh", name, key)
                continue
            self._offer([(key, data)])
