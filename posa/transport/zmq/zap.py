"""CURVE client allowlists: which client keys a zmq+ listener accepts (ZAP).

CURVE alone authenticates the server only: a listener accepts any client key
pair.  ``Curve(server_public, server_secret, clients=[...])`` gives a listener
an allowlist of client public keys (Z85 text); a client connects with
``Curve(server_public, client_public=..., client_secret=...)``.  A client whose
key is not on the list never completes its handshake (its sends end in
``Timeout``), and the listener counts it in ``rejections["curve-client"]``
(logged once per listener).

libzmq asks a ZAP handler (RFC 27, ``inproc://zeromq.zap.01`` in the socket's
context) about every CURVE handshake.  The handler is pyzmq's own
``zmq.auth.thread.ThreadAuthenticator``, the maintained one, with a
credentials callback: a small handler on posa's reactor would save a thread but
would put a runtime dependency under the transport layer (the reactor sits
above it) and re-implement the ZAP protocol that pyzmq keeps.  One handler per
process context (made again after a fork), started when the first listener
with an allowlist binds and kept for the process's life (thread ``posa-zap``:
libzmq frees the handler's inproc address asynchronously, so a handler stopped
with the last listener could not always be bound again at once), stopped at
exit before the context is terminated.
Each such listener gets a ZAP domain of its own (``posa-N``), mapped to its
allowlist; every other CURVE listener of the process (domain ``""``, ZAP's
``*``) still accepts any client, as without a handler.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING

import zmq

from posa.transport.zmq.context import context

if TYPE_CHECKING:      # loaded with the first allowlist (it brings asyncio along)
    from zmq.auth.thread import ThreadAuthenticator

__all__ = ["allow_clients", "located", "forget", "REASON"]

REASON = "curve-client"     # the listener's rejections key for a refused client key

_log = logging.getLogger("posa.transport.zmq")
_lock = threading.Lock()
_domains = itertools.count(1)


class _Allowlists:
    """The credentials provider: ZAP domain -> (allowed keys, the listener's counter)."""

    def __init__(self) -> None:
        self.lists: dict[str, tuple[frozenset[bytes], Counter[str], str]] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP thread: may the client with public ``key`` (Z85) connect in ``domain``?"""
        entry = self.lists.get(domain)
        if entry is None:
            return True             # a CURVE listener without an allowlist: any client
        allowed, rejections, address = entry
        if key in allowed:
            return True
        rejections[REASON] += 1
        if rejections[REASON] == 1:
            _log.warning("%s refused a CURVE client whose public key is not on its "
                         "allowlist; further ones are only counted (rejections[%r])",
                         address, REASON)
        return False


_provider = _Allowlists()
_handler: ThreadAuthenticator | None = None
_handler_pid = 0


def _running() -> ThreadAuthenticator:
    """The process's ZAP handler, started on first use (again after a fork)."""
    global _handler, _handler_pid
    if _handler is not None and _handler_pid == os.getpid():
        return _handler
    from zmq.auth.thread import ThreadAuthenticator
    handler = ThreadAuthenticator(context(), log=logging.getLogger("posa.transport.zap"))
    handler.start()
    handler.thread.name = "posa-zap"
    handler.configure_curve_callback("*", _provider)
    _handler, _handler_pid = handler, os.getpid()
    atexit.register(_stop, handler)     # runs before the context's exit flush
    return handler


def _stop(handler: ThreadAuthenticator) -> None:
    if handler is _handler and _handler_pid == os.getpid():
        handler.stop()


def allow_clients(sock: zmq.Socket[bytes], clients: Collection[bytes],
                  rejections: Counter[str], address: str) -> str:
    """Make the CURVE server ``sock`` accept only ``clients`` (Z85 public keys),
    counting refusals in ``rejections``; returns its ZAP domain (``forget`` it
    when the socket closes)."""
    with _lock:
        handler = _running()
        domain = f"posa-{next(_domains)}"
        _provider.lists[domain] = (frozenset(bytes(k) for k in clients), rejections, address)
        handler.configure_curve_callback(domain, _provider)
    sock.zap_domain = domain.encode()
    return domain


def located(domain: str, address: str) -> None:
    """The listener of ``domain`` is bound at ``address`` (named in the log)."""
    with _lock:
        entry = _provider.lists.get(domain)
        if entry is not None:
            _provider.lists[domain] = (entry[0], entry[1], address)


def forget(domain: str) -> None:
    """The listener of ``domain`` closed: drop its allowlist."""
    with _lock:
        _provider.lists.pop(domain, None)
        if _handler is not None and _handler_pid == os.getpid():
            _handler.credentials_providers.pop(domain, None)


def _forked() -> None:
    """(in a forked child) The handler is the parent's (``_running`` starts one
    again); the lock is new, as a thread of the parent may have held it."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
