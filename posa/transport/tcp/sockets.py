"""What the tcp endpoints share below the frame level: the text of an
``OSError`` for messages, poll timeouts, the send flags, and the size up to
which a frame is written together with its header in one call. No state.
"""
from __future__ import annotations

import math
import socket

from posa.errors import TransportError

__all__ = ["DIRECT_LIMIT", "NOSIGNAL", "error_text", "poll_ms", "too_large"]

DIRECT_LIMIT = 64 * 1024           # frames up to this size are written with their header
NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def error_text(exc: OSError) -> str:
    """A short text for ``exc`` without Python's ``[Errno n]`` decoration."""
    if isinstance(exc, TimeoutError) and not exc.strerror:
        return "timed out"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def poll_ms(timeout: float | None) -> int | None:
    """A poll() timeout in whole milliseconds, rounded up."""
    return None if timeout is None else max(0, math.ceil(timeout * 1000))


def too_large(size: int, limit: int, where: str) -> TransportError:
    return TransportError(f"cannot send a frame of {size} bytes {where}: the limit is "
                          f"{limit} bytes (Options.max_frame_size); split it or raise "
                          "the limit on both sides")
