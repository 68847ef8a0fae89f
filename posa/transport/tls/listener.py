"""The listening end of ``tls://``: ``TlsListener``, a ``TcpListener`` over TLS.

Everything a tcp listener does it does the same way (one epoll descriptor,
framing, send queues, limits, the reaper, and whatever connection hygiene the
tcp listener applies): its listening socket is a ``TlsListeningSocket``, whose
connections decrypt in ``recv_into`` and encrypt in ``send``
(``posa.transport.tls.sockets``). What this class adds:

*The handshake never blocks.* It advances a step whenever its connection is
readable, on the listener's thread, and holds only that connection. A failed
handshake drops the connection and is counted in ``rejections``: ``"garbage"``
(not TLS, or broken TLS), ``"certificate"`` (a client certificate missing,
expired, or not signed by ``TlsSettings.ca``), ``"truncated"`` (closed in the
middle), ``"handshake-timeout"`` (not complete within
``TlsSettings.handshake_timeout``). Handshakes wait in accept order, so their
deadlines do too: each poll drops the expired ones at the head of that queue
(O(1) when none is due), and a timer wakes the listener's descriptor at the next
deadline, so a listener with nothing else to do drops them as well.

*Identities.* ``identity(route)`` is what the peer's verified certificate names
(its common name, else its first subject alternative name; see
``posa.transport.tls.settings.identity_of``), or None without a client
certificate. The ACL maps identities to the names they may register.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from posa.transport.base import Options, Route
from posa.transport.tcp.accepting import Accepted
from posa.transport.tcp.listener import TcpListener
from posa.transport.tls.failures import TlsFailure
from posa.transport.tls.sockets import TlsListeningSocket, TlsSocket

__all__ = ["TlsListener"]


class TlsListener(TcpListener):
    """A bound ``tls://`` endpoint; see the module docstring."""

    shared_poll = False   # its poll also expires handshakes: it keeps its own poller

    def __init__(self, sock: TlsListeningSocket, options: Options, address: str) -> None:
        super().__init__(sock, options)
        self.address = address
        self._listening = sock
        self._handshakes: deque[TlsSocket] = deque()   # in accept (= deadline) order
        self._alarm: threading.Timer | None = None
        self._alarm_at = 0.0

    def identity(self, route: Route) -> str | None:
        """What the verified certificate of connection ``route`` names, or None."""
        peer = self._peers.get(route)
        sock = peer.sock if peer is not None else None
        return sock.identity if isinstance(sock, TlsSocket) else None

    def close(self) -> None:
        alarm = self._alarm
        if alarm is not None:
            alarm.cancel()
        super().close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._peers)} connections"
        return f"<TlsListener {self.address} {state}>"

    # -- with the I/O lock held ---------------------------------------------------
    def _accept(self) -> None:
        super()._accept()
        accepted = self._listening.accepted
        self._handshakes.extend(accepted)       # (refused ones are closed: skipped)
        accepted.clear()

    def _read(self, peer: Accepted) -> None:
        sock = peer.sock
        if isinstance(sock, TlsSocket) and sock.handshaking:
            try:
                if not sock.handshake():
                    return
            except TlsFailure as exc:
                self._drop(peer, exc.cause, exc.strerror or "TLS failed")
                return
            except OSError as exc:
                self._drop(peer, None, f"the connection failed: {exc}")
                return
        truncated = peer.decoder.buffered       # tcp counts a failure "truncated" then
        super()._read(peer)
        if peer.route not in self._peers and isinstance(sock, TlsSocket):
            failure = sock.failure              # a broken record: tcp saw an OSError
            if failure is not None and failure.cause and not truncated:
                self.rejections[failure.cause] += 1

    def _poll(self, timeout: float | None) -> None:
        try:
            super()._poll(timeout)
        finally:
            if self._handshakes and not self._closed:
                with self._io_lock:
                    self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        """Drop the handshakes past their deadline; arm the alarm for the next."""
        waiting = self._handshakes
        while waiting:
            sock = waiting[0]
            if sock.handshaking and sock.fileno() >= 0:
                if sock.deadline is None or sock.deadline > now:
                    break
                owner = self._owners.get(sock.fileno())
                if isinstance(owner, Accepted) and owner.sock is sock:
                    self._drop(owner, "handshake-timeout", "no TLS handshake within "
                               "TlsSettings.handshake_timeout")
            waiting.popleft()
        if waiting and waiting[0].deadline is not None:
            self._arm(waiting[0].deadline)

    def _arm(self, when: float) -> None:
        """Make the descriptor readable at ``when`` (unless an alarm comes first)."""
        if self._alarm is not None and self._alarm.is_alive() and self._alarm_at <= when:
            return
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm_at = when
        self._alarm = threading.Timer(max(0.0, when - time.monotonic()) + 0.001, self._ring)
        self._alarm.daemon = True
        self._alarm.start()

    def _ring(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass    # closed, or a wake-up is pending already
