"""What a forked child may not do with a ``Peer`` its parent made.

A peer's listeners, inbox and reactor thread are the process's that made it; a
forked child has no copy of that thread, so nothing would ever read what comes
to those listeners there. In the child, every peer made before the fork refuses
``receive``, ``serve``, ``reply``, ``reply_error`` and ``migrate`` with
``Closed``, saying to make a new ``Peer`` there (an instance attribute over each
method: the parent pays nothing); it still sends and requests, on streams of its
own (``Peer.close`` there: ``Peer._close_inherited``).
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

from posa.errors import Closed

__all__ = ["watch"]

_peers: weakref.WeakSet[Any] = weakref.WeakSet()
_PARENTS_ONLY = ("receive", "serve", "reply", "reply_error", "migrate")


def watch(peer: Any) -> None:
    """Refuse ``peer``'s parent-only methods in a forked child."""
    _peers.add(peer)


def _refuse(name: str, what: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise Closed(f"peer {name!r} was made in the parent process, which owns its "
                     f"listeners, inbox and reactor: a forked child may send and request "
                     f"through it but not call {what}(); make a new Peer in the child")
    return refused


def _forbid() -> None:
    for peer in list(_peers):
        for what in _PARENTS_ONLY:
            setattr(peer, what, _refuse(peer.name, what))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forbid)
