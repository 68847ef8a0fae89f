"""The process's descriptor limit: raised to what the system allows.

Every connection a listener serves is a descriptor, and Linux starts a process
with a soft limit (``ulimit -n``) of 1024 however high its hard limit is. A
service that faces a network (``posa dispatcher``, ``posa channel``) calls
``raise_descriptor_limit()`` once at start: the soft limit
becomes the hard one, so ``Options.max_connections`` and the listener's
hygiene bound the connections, not an accidental default. Without the
``resource`` module (Windows) it does nothing.
"""
from __future__ import annotations

import logging

__all__ = ["raise_descriptor_limit"]

log = logging.getLogger("posa.transport")


def raise_descriptor_limit() -> tuple[int, int] | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the ``(soft, hard)``
    limits now in force, or ``None`` where there are none to raise."""
    try:
        import resource
    except ImportError:      # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:   # macOS refuses RLIM_INFINITY: keep the soft one
        log.info("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        return soft, hard
    return hard, hard
