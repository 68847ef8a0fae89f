"""What a forked child may not do with a ``Publisher`` its parent made.

A publisher's events go out through one background thread; a forked child has
no copy of that thread, so an event published there would wait in the buffer for
ever (or ``publish`` would block once the buffer is full). In the child, every
publisher made before the fork refuses ``publish``, ``publish_many`` and
``flush`` with ``Closed``, saying to make a new ``Publisher`` there (an instance
attribute over each method: the parent pays nothing); ``close`` there touches
only the child's copies of descriptors (``Publisher.close``). A new publisher in
the child has a publisher id of its own, which the channel's duplicate check
needs: the parent's and the child's numbers would collide under one id.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

from posa.errors import Closed

__all__ = ["watch"]

_publishers: weakref.WeakSet[Any] = weakref.WeakSet()
_PARENTS_ONLY = ("publish", "publish_many", "flush")


def watch(publisher: Any) -> None:
    """Refuse ``publisher``'s parent-only methods in a forked child."""
    _publishers.add(publisher)


def _refuse(channel: str, what: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise Closed(f"the publisher for channel {channel!r} was made in the parent "
                     f"process, whose thread sends its events: a forked child cannot "
                     f"call {what}() on it; make a new Publisher in the child")
    return refused


def _forbid() -> None:
    for publisher in list(_publishers):
        for what in _PARENTS_ONLY:
            setattr(publisher, what, _refuse(publisher.channel, what))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forbid)
