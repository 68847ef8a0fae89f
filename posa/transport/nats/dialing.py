"""Which NATS server to dial next, and dialling it without blocking.

``Servers`` (sans-IO) keeps the failover order: the servers of the address first,
in the order given, then the ``connect_urls`` each server's INFO adds; the next
dial takes the one after the server dialled last, the first again after the last.
After a round in which every dial failed, the next waits ``RECONNECT_WAIT``.
``dial`` starts a non-blocking connection to one of them.
"""
from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

__all__ = ["Servers", "dial", "RECONNECT_WAIT"]

RECONNECT_WAIT = 0.1     # s between rounds of the servers that all failed
_STARTED = (0, errno.EINPROGRESS, errno.EWOULDBLOCK)


class Servers:
    """The failover order of one client's servers."""

    __slots__ = ("_given", "_learned", "_at", "_failures")

    def __init__(self, given: Sequence[str]) -> None:
        self._given = list(given)
        self._learned: list[str] = []
        self._at = -1
        self._failures = 0               # dials in a row that failed

    @property
    def candidates(self) -> list[str]:
        """The servers to dial, in order: the address's, then those learned."""
        return self._given + [url for url in self._learned if url not in self._given]

    def next(self) -> str:
        servers = self.candidates
        self._at = (self._at + 1) % len(servers)
        return servers[self._at]

    def failed(self) -> float:
        """A dial failed: the pause before the next one."""
        self._failures += 1
        return RECONNECT_WAIT if self._failures % len(self.candidates) == 0 else 0.0

    def succeeded(self) -> None:
        self._failures = 0

    def learn(self, info: dict[str, Any]) -> None:
        """The servers an INFO announces (``connect_urls``: "host:port" each)."""
        urls = info.get("connect_urls")
        if isinstance(urls, list):
            for url in urls:
                if isinstance(url, str) and url not in self._learned:
                    self._learned.append(url)


def dial(server: str) -> socket.socket:
    """A non-blocking socket connecting to ``server`` ("host:port", "[v6]:port");
    ``OSError`` (or ``ValueError`` for a malformed one) if it cannot start."""
    host, _, port = server.rpartition(":")
    family, kind, proto, _, where = socket.getaddrinfo(
        host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex(where)
        if error not in _STARTED:
            raise OSError(error, f"connecting to {server}: {errno.errorcode.get(error)}")
    except BaseException:
        sock.close()
        raise
    return sock
