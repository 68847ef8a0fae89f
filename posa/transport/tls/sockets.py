"""TLS under the tcp code: sockets whose bytes are TLS records (``ssl.SSLObject``
over memory BIOs) and which, to their user, are plain sockets of plaintext.

Why memory BIOs rather than a non-blocking ``ssl.SSLSocket``: the tcp listener
and connection (``posa.transport.tcp``) already do everything else right —
one epoll descriptor per listener, coalesced writes, a send queue and a
high-water mark, partial writes, the reaper — and they need a socket that
behaves like one: ``recv_into`` returns what is there without holding anything
back, ``send`` takes what it takes. ``TlsSocket`` is that socket. Its
``recv_into`` reads the raw socket once and decrypts *every* complete record
into the caller's buffer, so no plaintext waits inside OpenSSL where the poller
cannot see it (``SSLSocket`` keeps decrypted bytes in its own buffer; a loop
that waits on the descriptor then hangs with data in hand), and ``pending()``
stays honest. Its ``send`` encrypts and writes; what the kernel does not take
waits as ciphertext, and the plaintext it came from is reported as not sent, so
the writer keeps it queued and watches for writability as it does on tcp; the
next ``send`` writes the ciphertext first and then reports that plaintext sent
(``_ahead``). Measured on this machine (100-byte frames, one process pair):
see docs/transports.md.

``TlsListeningSocket.accept`` returns server-side ``TlsSocket``s whose
handshake has not begun: a listener drives it with ``handshake()`` on each
readiness of the socket (never blocking; a slow or garbage handshake holds only
its own connection) and drops it at its ``deadline``.

A connecting side does not wait for its handshake either: ``connect`` must
return before the listener answers, because the thread that connects may be
the one that polls the listener (a handler on the reactor thread sending to a
peer of the same process). Its ``send`` keeps plaintext (up to 4 MiB) until the
handshake is done, and a driver thread (``drive``, one per connecting socket,
ending with its handshake) completes the handshake, then writes what waited.
A failed handshake is raised by the next ``send`` or ``recv`` as what it is
(a certificate refused, not for this host, not TLS at all).

One lock per socket serialises its TLS state: a connection's reader and writer
threads may use it at once, and OpenSSL's objects are not thread-safe.
"""
from __future__ import annotations

import errno
import select
import socket
import ssl
import threading
import time
from typing import Any

from posa.transport.tls.failures import TlsFailure, describe
from posa.transport.tls.settings import identity_of

__all__ = ["TlsSocket", "TlsListeningSocket"]

_CHUNK = 256 * 1024          # plaintext encrypted per send
_CLIENT_READ = 64 * 1024     # a connection's raw read buffer
_EARLY_LIMIT = 4 * 1024 * 1024   # plaintext a connection keeps until its handshake is done
_SLICE = 0.25                # s: a driver looks at least this often whether it is wanted
_raw_recv_into = socket.socket.recv_into   # the plain socket's calls, without super()
_raw_send = socket.socket.send
NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


class TlsSocket(socket.socket):
    """A connected socket carrying TLS; ``recv_into`` and ``send`` move plaintext."""

    def start(self, context: ssl.SSLContext, scratch: memoryview, *, server_side: bool,
              deadline: float, server_hostname: str | None = None,
              session: ssl.SSLSession | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=server_hostname, session=session)
        # the C object under ssl.SSLObject: its read and write skip a Python call
        self._c = getattr(self._tls, "_sslobj", self._tls)
        self._server = server_side
        self._mutex = threading.Lock()   # guards the TLS state below
        self._scratch = scratch          # raw reads land here (shared by a listener)
        self._backlog: memoryview | bytes = b""   # ciphertext the kernel did not take
        self._ahead = 0                  # plaintext encrypted, not yet reported sent
        self._early = bytearray()        # a client's plaintext sent before its handshake
        self._raw = False                # shut down: reads and writes pass through
        self._received = False           # a handshake byte arrived
        self._driver: threading.Thread | None = None
        self.linger = 1.0                # s shutdown waits for the driver
        self.handshaking = True
        self._steady = False             # handshake done, not failed, not shut down
        self.deadline: float | None = deadline    # the handshake must beat it
        self.identity: str | None = None
        self.failure: TlsFailure | None = None    # why TLS failed, once it did

    @property
    def session_reused(self) -> bool:
        with self._mutex:
            return self._tls.session_reused

    def session(self) -> ssl.SSLSession | None:
        with self._mutex:
            return self._tls.session

    # -- the handshake ------------------------------------------------------
    def handshake(self) -> bool:
        """One non-blocking step of the handshake: read what is there, answer.
        True once complete. Raises ``TlsFailure``."""
        with self._mutex:
            return self._handshake_locked()

    def _handshake_locked(self) -> bool:
        if self.failure is not None:
            raise self.failure
        if not self.handshaking:
            return True
        size = self._read_raw(self._scratch)
        if size == 0:
            side = "the connecting side" if self._server else "the listener"
            raise self._failed(TlsFailure(
                f"{side} closed the connection during the TLS handshake"
                + ("" if self._server else "; is it a tls:// listener, and does it "
                   "accept this side's certificate?"),
                "truncated" if self._received else None))
        if size > 0:
            self._received = True
            self._in.write(self._scratch[:size])
        done = self._step()
        self._write_raw(self._out.read())
        if done and self._early:
            self._tls.write(self._early)
            self._early = bytearray()
            self._write_raw(self._out.read())
        elif self._backlog and self._server:
            raise self._failed(TlsFailure("the connecting side does not read its "
                                          "handshake", None))
        return done

    def _step(self) -> bool:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            failure = self._failed(describe(exc, "listener" if self._server else
                                            "connection"))
            try:
                self._write_raw(self._out.read())   # the alert, if it fits
            except OSError:
                pass
            raise failure from None
        self.handshaking = False
        self._steady = True
        self.deadline = None
        self.identity = identity_of(self._tls.getpeercert())
        return True

    def _failed(self, failure: TlsFailure) -> TlsFailure:
        self._steady = False
        if self.failure is None:
            self.failure = failure
        return self.failure

    def begin(self) -> None:
        """A client: send the first handshake message, start the driver thread."""
        with self._mutex:
            self._handshake_locked()
        self._driver = threading.Thread(target=self.drive, daemon=True,
                                        name="posa-tls-handshake")
        self._driver.start()

    def drive(self) -> None:
        """The driver: complete the handshake by the deadline, then write what
        waited for it; on failure, shut the socket so that waiting readers wake."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        while True:
            with self._mutex:
                if self._raw or self.fileno() < 0 or self.failure is not None:
                    return
                if not self.handshaking and not self._backlog:
                    return
                left = _SLICE if self.deadline is None else self.deadline - time.monotonic()
                if left <= 0:
                    self._failed(TlsFailure("no TLS handshake within "
                                            "TlsSettings.handshake_timeout", None))
                    break
                poller.modify(self.fileno(), select.POLLIN if self.handshaking
                              else select.POLLOUT)
            poller.poll(max(1, int(min(left, _SLICE) * 1000)))
            with self._mutex:
                try:
                    if self.handshaking:
                        self._handshake_locked()
                    elif self._backlog and not self._raw:
                        self._write_raw(b"")
                except OSError as exc:
                    self._failed(exc if isinstance(exc, TlsFailure) else
                                 TlsFailure(f"the connection failed: {exc}", None))
                    break
        try:
            super().shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- plaintext ----------------------------------------------------------
    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Read the raw socket once, decrypt every complete record into ``buffer``
        (never more than it holds: the raw read is cut to fit). 0 at the end of
        the stream; ``BlockingIOError`` if no plaintext is ready."""
        if self._raw:
            return super().recv_into(buffer, nbytes, flags)
        with self._mutex:
            if not self._steady:
                if self.failure is not None:
                    raise self.failure
                if self.handshaking and not self._handshake_locked():
                    raise BlockingIOError(errno.EAGAIN, "the TLS handshake is under way")
            incoming = self._in
            scratch = self._scratch
            room = len(buffer) - incoming.pending
            size = -1
            blocked: BaseException | None = None
            if room > 0:
                try:
                    size = _raw_recv_into(self, scratch if room >= len(scratch)
                                          else scratch[:room])
                except (BlockingIOError, InterruptedError) as exc:
                    blocked = exc
                if size > 0:
                    incoming.write(scratch[:size])
            got, closed = self._decrypt(buffer) if incoming.pending else (0, False)
            if self._out.pending:            # a post-handshake message to answer
                self._write_raw(self._out.read())
        if got:
            return got
        if size == 0 or closed:
            return 0
        raise blocked or BlockingIOError(errno.EAGAIN, "no complete TLS record yet")

    def _read_raw(self, into: memoryview) -> int:
        """Read what the socket has into ``into``: its size, 0 at the end, -1 for none."""
        try:
            return super().recv_into(into)
        except (BlockingIOError, InterruptedError):
            return -1

    def _decrypt(self, buffer: Any) -> tuple[int, bool]:
        """Decrypt the complete records in the incoming BIO into ``buffer``: the
        bytes, and whether close_notify came. Stops when the BIO is empty, so a
        whole record costs one call and no exception."""
        read = self._c.read
        incoming = self._in
        got: int = 0
        size = len(buffer)
        view = memoryview(buffer)
        while got < size and incoming.pending:
            try:
                n = read(size - got, view[got:] if got else buffer)
            except ssl.SSLWantReadError:
                return got, False
            except ssl.SSLZeroReturnError:
                return got, True         # close_notify
            except ssl.SSLError as exc:
                raise self._failed(describe(exc, "record")) from None
            if not n:
                return got, True         # close_notify (read as 0 on some versions)
            got += n  # type: ignore[operator]
        return got, False

    def send(self, data: Any, flags: int = 0) -> int:
        """Encrypt and write up to 256 KiB of ``data``; return how much of it is
        on the wire (see the module docstring). ``BlockingIOError`` if earlier
        ciphertext still waits for the kernel."""
        if self._raw:
            return super().send(data, flags)
        with self._mutex:
            if not self._steady:
                return self._send_unsteady(data)
            if self._backlog:
                self._write_raw(b"")
                if self._backlog:
                    raise BlockingIOError(errno.EAGAIN, "earlier TLS records still wait")
            done, self._ahead = self._ahead, 0
            rest = data if not done and len(data) <= _CHUNK else (
                memoryview(data)[done:done + _CHUNK])
            if rest:
                self._c.write(rest)
                cipher = self._out.read()
                try:
                    sent = _raw_send(self, cipher, NOSIGNAL)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if sent < len(cipher):
                    self._backlog = memoryview(cipher)[sent:]
                    self._write_raw(b"")
                    if self._backlog:
                        self._ahead = len(rest)
                        return done
            return done + len(rest)

    def _send_unsteady(self, data: Any) -> int:
        """``send`` before the handshake is done (keep ``data``) or after it failed."""
        if self.failure is not None:
            raise self.failure
        if len(self._early) >= _EARLY_LIMIT:
            raise BlockingIOError(errno.EAGAIN, "the TLS handshake is under way")
        chunk = memoryview(data)[:_CHUNK]
        self._early += chunk
        return len(chunk)

    def _write_raw(self, data: bytes) -> None:
        """Write the backlog, then ``data``, as far as the kernel takes them."""
        if not self._backlog:
            if not data:
                return
            try:
                sent = _raw_send(self, data, NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            self._backlog = memoryview(data)[sent:]
            return
        if data:
            self._backlog = bytes(self._backlog) + data
        backlog = self._backlog
        while backlog:
            try:
                sent = super().send(backlog, NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            backlog = memoryview(backlog)[sent:]
        self._backlog = backlog if backlog else b""

    def shutdown(self, how: int) -> None:
        """Let the driver finish (at most ``linger``), send close_notify (best
        effort) and end the raw stream's sending side; from now on reads and
        writes pass through (the reaper discards input)."""
        driver = self._driver
        if driver is not None and driver is not threading.current_thread():
            driver.join(self.linger)
        with self._mutex:
            if not self._raw and not self.handshaking and self.failure is None:
                try:
                    self._tls.unwrap()
                except ssl.SSLError:
                    pass                     # the peer's close_notify is not awaited
                try:
                    self._write_raw(self._out.read())
                except OSError:
                    pass
            self._raw = True
            self._steady = False
        super().shutdown(how)


class TlsListeningSocket(socket.socket):
    """A listening socket whose ``accept`` returns server-side ``TlsSocket``s."""

    def configure(self, context: ssl.SSLContext, handshake_timeout: float) -> None:
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._scratch = memoryview(bytearray(_CLIENT_READ))  # used under the I/O lock
        self.accepted: list[TlsSocket] = []     # since the listener last looked

    def accept(self) -> tuple[socket.socket, Any]:
        fd, remote = self._accept()      # type: ignore[attr-defined]
        sock = TlsSocket(self.family, self.type, self.proto, fileno=fd)
        sock.start(self._context, self._scratch, server_side=True,
                   deadline=time.monotonic() + self._handshake_timeout)
        self.accepted.append(sock)
        return sock, remote

