"""The request side of a forwarder: send a REQUEST, wait for its answer.

``Forwarder`` inherits it; it lives apart because waiting is a protocol of its
own, written once as steps (``request_steps``, ``reply_steps``) that a driver
runs: ``posa.delivery.waiting.drive`` with ``poll``, ``posa.aio`` with the
event loop, ``posa.Client.call_steps`` inside its failover.

Waiting for an answer: until the request is acknowledged it is resent (by way of
its name, which may have moved) every ``ack_timeout`` s; once acknowledged it
is waited for until the caller's deadline, however long the handler takes.  A
caller that fails over passes ``stall``: a recipient silent for that long (no
acknowledgement, no PROGRESS keep-alive) is taken for gone.  Inside a handler
the wait is cut to the handled request's remaining time (``posa.delivery.budget``).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from posa.delivery.budget import bounded, not_finite
from posa.delivery.waiting import Steps, drive
from posa.errors import Closed, Timeout, TransportError, Unauthorized, from_wire
from posa.wire.codec import Kind, Message, error_fields

if TYPE_CHECKING:
    from posa.delivery.links import Links
    from posa.delivery.target import Target
    from posa.transport.base import Connection

    Waited = tuple[Target, Connection, float, int]
    """``first_wait``'s: the target, connection, seconds and mark of quiet."""

__all__ = ["Requesting"]

_REQUEST, _ERROR = Kind.REQUEST, Kind.ERROR
_monotonic = time.monotonic


class Requesting:
    """Requests and their answers, for a ``Forwarder`` (one thread's)."""

    if TYPE_CHECKING:       # what the forwarder provides
        lock: threading.Lock
        ack_timeout: float
        closed: bool
        generation: int
        _replies: dict[tuple[str, int], Message]
        _progress: dict[tuple[str, int], float]
        _targets: dict[str, Target]
        _links: Links

        def send_locked(self, name: str, body: Any, kind: int,
                        headers: dict[str, Any] | None, deadline: float) -> int: ...
        def _recover_steps(self, target: Target, deadline: float,
                           cause: BaseException | None) -> Steps[None]: ...
        def open_steps(self, name: str, deadline: float) -> Steps[Target]: ...
        def _drop_target(self, name: str) -> Target | None: ...
        def _absorb(self, frame: bytes) -> None: ...
        def _give_up(self, target: Target, why: str) -> Timeout: ...
        def _refusal(self, target: Target) -> Unauthorized: ...

    def request(self, name: str, body: Any, *, timeout: float,
                headers: dict[str, Any] | None = None, failfast: bool = False) -> Message:
        """Send a REQUEST and wait for its REPLY; raises the ERROR it gets back.

        With ``failfast`` a broken connection raises ``TransportError`` at once
        instead of being retried until the deadline (the caller fails over).

        ``request_steps`` driven, with the send taken out of the steps when the
        name is known: one generator less, and the clock read once before the
        first wait (the send's time serves the ``ttl`` and that wait)."""
        lock = self.lock
        now = deadline = 0.0
        with lock:
            if name in self._targets:
                now = _monotonic()
                deadline = now + bounded(timeout)
                seq = self.send_request(name, body, deadline, headers, now=now)
            else:
                seq = 0
        if not seq:
            return drive(lock, self.request_steps(name, body, timeout=timeout,
                                                  headers=headers, failfast=failfast))
        return drive(lock, self.reply_steps(name, seq, deadline, failfast=failfast,
                                            since=now))

    def request_steps(self, name: str, body: Any, *, timeout: float,
                      headers: dict[str, Any] | None = None, failfast: bool = False
                      ) -> Steps[Message]:
        """A request as steps: it yields ``(connection, seconds)`` whenever it must
        wait for input, expects to be sent whether the connection became readable,
        and returns the reply. ``request`` drives it with ``select``; ``posa.aio``
        with the event loop, so the protocol is written once. Drivers hold ``lock``
        while a step runs and release it while they wait.

        Inside a handler the timeout is cut to the handled request's remaining
        time (``posa.delivery.budget``); the ``ttl`` header tells the recipient."""
        timeout = bounded(timeout)
        deadline = time.monotonic() + timeout
        if name not in self._targets:
            yield from self.open_steps(name, deadline)
        seq = self.send_request(name, body, deadline, headers)
        return (yield from self.reply_steps(name, seq, deadline, failfast=failfast))

    def send_request(self, name: str, body: Any, deadline: float,
                     headers: dict[str, Any] | None = None, *,
                     send_within: float | None = None, now: float | None = None) -> int:
        """Send a REQUEST due by ``deadline`` (its ``ttl``); returns its id (wait
        with ``reply_steps``). ``send_within`` bounds the send itself (a caller
        that fails over gives a dead recipient only that long); ``now``, if the
        caller read the clock just before."""
        if now is None:
            now = _monotonic()
        try:
            ttl = int((deadline - now) * 1000)
        except (OverflowError, ValueError):     # inf, nan
            raise not_finite(deadline - now) from None
        hdrs = {"ttl": ttl if ttl > 1 else 1}
        if headers:
            hdrs.update(headers)
        if send_within is not None and now + send_within < deadline:
            deadline = now + send_within
        return self.send_locked(name, body, _REQUEST, hdrs, deadline)

    def reply_steps(self, name: str, seq: int, deadline: float, *, failfast: bool = False,
                    stall: float | None = None, since: float | None = None,
                    target: Target | None = None) -> Steps[Message]:
        """Wait for the reply to request ``seq`` sent to ``name``, as steps.

        Until the request is acknowledged it is resent (by way of the name, which
        may have moved) every ``ack_timeout`` s.  With ``stall``, a recipient that
        has not acknowledged the request, nor said it is still handling it
        (PROGRESS, sent while a handler runs), for ``stall`` s is taken for gone:
        ``TransportError``, like a connection lost with ``failfast``.  ``since``: when
        it was sent, if known; ``target``, its target, if a driver waited first."""
        key = (name, seq)
        target = self._targets[name] if target is None else self._targets.get(name, target)
        now: float | None = (heard := _monotonic() if since is None else since)
        acked = False
        while True:
            reply = self._replies.pop(key, None)
            if reply is not None or target.refused is not None:
                return self._answered(key, reply, target)
            if now is None:
                now = _monotonic()
            if not acked and target.out.acked >= seq:
                acked, heard = True, now
            if self._progress:
                heard = max(heard, self._progress.pop(key, heard))
            if stall is None and now < deadline:    # the common case, inline; no min()
                wait = deadline - now if deadline - now < self.ack_timeout else self.ack_timeout
            else:
                wait = self._patience(target, now, deadline, heard, stall, acked)
            now = None      # read again after the wait, if it is needed
            conn = target.conn
            quiet = target.out.acked + self.generation      # (both only grow)
            try:
                # nothing queued: wait for the descriptor, which fires for the next frame
                # (posa/transport/base.py), or for a driver that read the answer
                if not conn.pending() and not (yield conn, wait):
                    if not acked and self._unheard(target, seq, quiet):
                        yield from self._kept_recovery(
                            name, seq, target, deadline if stall is None
                            else min(deadline, heard + stall), None)
                    continue
                frame = None if key in self._replies else conn.recv_nowait()
            except TransportError as exc:
                if failfast:
                    raise self._lost(name, target, exc) from None
                yield from self._kept_recovery(name, seq, target, deadline, exc)
                continue
            if frame is not None:
                self._absorb(frame)
            target = self._targets.get(name, target)

    def first_wait(self, name: str, seq: int, deadline: float) -> Waited | None:
        """The first wait of ``reply_steps(name, seq, deadline)``, for a driver that
        waits it without the steps (``posa.aio``): the request's target, the
        connection to wait on, for how long, and the mark of its quiet (as
        ``_unheard`` takes it). None if it is not a plain wait (the answer is
        in, frames are read and not taken in, the deadline passed): drive the
        steps. After the wait, ``answer`` takes the answer if it came, else
        ``waited_steps`` goes on as the steps would have."""
        target = self._targets.get(name)
        if target is None or target.refused is not None or (name, seq) in self._replies:
            return None
        now = _monotonic()
        conn = target.conn
        try:
            if now >= deadline or conn.pending():
                return None
        except TransportError:
            return None
        wait = deadline - now if deadline - now < self.ack_timeout else self.ack_timeout
        return target, conn, wait, target.out.acked + self.generation

    def answer(self, name: str, seq: int) -> Message | None:
        """The answer to request ``seq`` to ``name`` if it came (removed), as
        ``reply_steps`` returns it (an ERROR raised); None if not (nor a refusal)."""
        key = (name, seq)
        reply = self._replies.pop(key, None)
        if reply is None:
            return None
        target = self._targets.get(name)
        if target is not None and target.refused is not None:
            self._replies[key] = reply      # the steps raise the refusal
            return None
        if self._progress:
            self._progress.pop(key, None)
        if reply.kind == _ERROR:
            code, kind, text = error_fields(reply.body)
            raise from_wire(code, kind, text)
        return reply

    def waited_steps(self, name: str, seq: int, deadline: float, waited: Waited,
                     ready: bool) -> Steps[Message]:
        """``reply_steps`` after the wait of ``first_wait`` (``waited``) ended with
        no answer taken: ``ready``, whether its connection became readable. A
        wait that ran out with the request unacknowledged and nothing moved
        resends it now, as the steps would have."""
        target, _, _, quiet = waited
        if not ready and target.out.acked < seq and self._unheard(target, seq, quiet):
            yield from self._kept_recovery(name, seq, target, deadline, None)
        return (yield from self.reply_steps(name, seq, deadline, target=target))

    def _lost(self, name: str, target: Target, exc: TransportError) -> TransportError:
        """With ``failfast``: ``target``'s connection broke while a reply was awaited;
        it is dropped (the caller fails over) and this is the error to raise
        (``Closed`` if it broke because this forwarder was closed)."""
        if self.closed:
            return _closed(name)
        self._links.drop(target.address)
        self._drop_target(name)
        return TransportError(f"lost the connection to {name!r} at {target.address} "
                              f"while waiting for a reply: {exc}")

    def _kept_recovery(self, name: str, seq: int, target: Target, deadline: float,
                       cause: BaseException | None) -> Steps[None]:
        """Recover ``target`` for request ``seq``, unless another caller sharing this
        forwarder (an ``aio`` task) gave it up (its request went unacknowledged past
        its deadline): this request went with its backlog and is never sent again
        (a ``Timeout`` is final): ``Timeout``. ``Closed`` if this forwarder was
        closed (from another thread: closing forgets every target)."""
        if self.closed:
            raise _closed(name)
        if self._targets.get(name) is target:
            yield from self._recover_steps(target, deadline, cause)
        else:
            delivered = target.out.acked >= seq
            raise Timeout(f"the stream to {name!r} at {target.address} that this request "
                          "shared with other callers was given up (one of them went "
                          "unacknowledged past its deadline): "
                          + ("it was delivered, but its answer can no longer come back"
                             if delivered else "it is not known to be delivered, and "
                             "posa will not send it again"))

    def _unheard(self, target: Target, seq: int, quiet: int) -> bool:
        """After a wait for the reply to ``seq`` ran out: True if it is to be
        resent (within the stall, if any), being unacknowledged while nothing
        moved (``quiet``, taken before the wait): no acknowledgement of its
        stream came (else the recipient is behind, not gone) and no recovery of
        this forwarder ran (another task waiting on it resent the backlog)."""
        out = target.out
        return bool(out.unacked) and out.first_unacked() <= seq and \
            out.acked + self.generation == quiet

    def _answered(self, key: tuple[str, int], reply: Message | None,
                  target: Target) -> Message:
        """The reply to return, or the error it carries raised; an authentication
        failure of ``target`` is raised at once (``Forwarder._refusal``)."""
        if self._progress:
            self._progress.pop(key, None)
        if target.refused is not None or reply is None:
            raise self._refusal(target)
        if reply.kind == _ERROR:
            code, kind, text = error_fields(reply.body)
            raise from_wire(code, kind, text)
        return reply

    def _patience(self, target: Target, now: float, deadline: float, heard: float,
                  stall: float | None, acked: bool) -> float:
        """How long to wait for input now; raises ``Timeout`` past ``deadline`` and
        ``TransportError`` once the recipient has been silent for ``stall`` s."""
        if now >= deadline:
            if not acked:   # not even received: a Timeout is final, nothing is resent
                raise self._give_up(target, "the request was not acknowledged by its "
                                    "deadline")
            raise Timeout(f"no reply from {target.name!r} within the deadline "
                          f"(at {target.address}); is its handler slow or stuck?")
        wait = deadline - now       # (no min(): it parses keywords on every call)
        if wait > self.ack_timeout:
            wait = self.ack_timeout
        if stall is None:
            return wait
        if now - heard >= stall:
            raise TransportError(
                f"{target.name!r} at {target.address} gave no sign of life for {stall} s "
                f"({'handling' if acked else 'not acknowledging'} the request)")
        alive = heard + stall - now
        return wait if wait < alive else alive

    def take_reply(self, name: str, seq: int) -> Message | None:
        """The reply ``name`` sent to request ``seq``, if it came (removed)."""
        return self._replies.pop((name, seq), None)

    def peek_reply(self, name: str, seq: int) -> Message | None:
        """The reply ``name`` sent to request ``seq``, if it came (kept)."""
        return self._replies.get((name, seq))


def _closed(name: str) -> Closed:
    """The error of a request whose forwarder was closed while it waited."""
    return Closed(f"the peer or client that sent this request to {name!r} was closed "
                  "while it waited for the answer")
