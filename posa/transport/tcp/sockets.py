"""What the tcp endpoints share below the frame level: the text of an
``OSError`` for messages, poll timeouts, the send flags, and the size up to
which a frame is written together with its header in one call. No state.
"""
from __future__ import annotations

import math
import socket

from posa.errors import TransportError

__all__ = ["DIRECT_LIMIT", "NOSIGNAL", "dial", "error_text", "poll_ms", "too_large"]

DIRECT_LIMIT = 64 * 1024           # frames up to this size are written with their header
# the flags of every send: no SIGPIPE, and no wait (the sockets are non-blocking,
# but a forked child shares a descriptor's flags and may change them)
NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0) | getattr(socket, "MSG_DONTWAIT", 0)


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


def dial(address: str, host: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to ``host:port`` (posa's ``address``), made within
    ``timeout``; ``TransportError`` saying what to check if it cannot be."""
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise TransportError(f"cannot connect to {address}: connection refused; "
                             "is a posa peer listening there?") from None
    except socket.gaierror as exc:
        raise TransportError(f"cannot connect to {address}: host {host!r} does "
                             f"not resolve ({error_text(exc)})") from None
    except TimeoutError:
        raise TransportError(f"cannot connect to {address}: no answer within "
                             f"{timeout} s; check the address and that the host is "
                             "reachable") from None
    except OSError as exc:
        raise TransportError(f"cannot connect to {address}: {error_text(exc)}") from None
