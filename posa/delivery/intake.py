"""The receiving side of a peer on the reactor thread: frames in, answers out.

``Intake`` is the glue between a peer's listeners and its sans-IO ``Receiver``:

    reactor ─▶ drain(endpoint): listener.recv_nowait
      ─▶ Gatekeeper.admit (decode, authenticate, authorize, limit)
      ─▶ Receiver.receive (order, duplicates, BATCH runs)
      ─▶ deliver: a request is opened (its deadline, its route), then the
         handler runs with the request's remaining time as the budget of the
         calls it makes (``posa.delivery.budget``), or the message is queued
         in the Inbox that ``Peer.receive()`` reads
      ◀─ what the Receiver returns to send back: ACKs, cached answers, MOVED
         notices, PROGRESS keep-alives for requests still being handled

After each drained run the due ACKs go out and a reactor timer is armed for the
receiver's ``deadline``; while requests are open a second timer sends their
keep-alives.  If the inbox is full the peer stops reading its listeners:
senders' windows fill and they wait (flow control).

Draining (``drain()``, the first step of a clean shutdown): the listeners are
still read, so acknowledgements and repeats are answered, but every new request
is refused with ``Rejected`` at once (its requester asks another); requests
already open are answered as they finish (``in_flight`` counts them).  A request
whose deadline passed before its handler could start is not started: it is
answered with ``Timeout`` and counted in ``stats["expired"]``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from posa.admission.gatekeeper import Gatekeeper, Rejection
from posa.delivery import budget
from posa.delivery.endpoints import Listening
from posa.delivery.inbox import Inbox
from posa.delivery.quick import DEFERRED, quickly
from posa.delivery.receiver import Endpoint, OnRun, Outgoing, Receiver, unkeyed
from posa.errors import PosaError, ProtocolError, Rejected, Timeout
from posa.runtime import trace
from posa.runtime.reactor import Reactor
from posa.transport.base import Options
from posa.wire.codec import Kind, Message, error_body

__all__ = ["Intake", "DEFERRED"]

log = logging.getLogger("posa.peer")


BATCH = 4096            # frames drained from one listener before others get a turn
HOLD = 0.001            # an answer this long after the run's first held one sends them
_TURN = range(BATCH)    # made once: range(4096) costs ~1k instructions to make (its length)
# kinds as module globals: an enum member lookup costs ~0.1 us before Python 3.12
_SEND, _REQUEST, _REPLY, _ERROR = Kind.SEND, Kind.REQUEST, Kind.REPLY, Kind.ERROR
_monotonic = time.monotonic
Answer = tuple[Endpoint, Any, bytes, Any]   # (endpoint, route, frame, the request it settles)


class Intake:
    """Reads a peer's listeners, delivers, answers (reactor thread; ``answer``
    from any thread)."""

    def __init__(self, name: str, *, reactor: Reactor, gatekeeper: Gatekeeper,
                 options: Options, receiver: Receiver, inbox: Inbox,
                 handler: Callable[[Message], Any] | None,
                 on_run: OnRun | None = None) -> None:
        self.name = name
        self.reactor = reactor
        self.gatekeeper = gatekeeper
        self.receiver = receiver
        self.inbox = inbox
        self.listening = Listening(name, reactor, options, self.drain)
        self.handler = handler
        # stream-less requests, answered at once on the lean lane (posa.delivery.quick)
        self.quick: Callable[[Message], Any] | None = None
        self.on_run = on_run        # sees each turn's deliveries first; may refuse some
        self._run: list[Message] = []
        self.draining = False
        self.stats = {"received": 0, "expired": 0, "refused": 0}
        self._held: list[Answer] | None = None    # answers of the run being delivered
        self._held_at = 0.0
        self._ack_timer: Any = None
        self._keep_alive_timer: Any = None
        # observe(seconds from a request's arrival to its answer): posa.ops.Monitor's
        self.observe: Callable[[float], None] | None = None

    # -- reading -----------------------------------------------------------------
    def drain(self, endpoint: Endpoint) -> None:
        """Read up to ``BATCH`` frames of ``endpoint``: admit, hand to the receiver,
        deliver what it returns, then send what it has to send back. The hot path:
        names are bound to locals once per run."""
        listener = endpoint.listener
        many = hasattr(listener, "send_many")   # answers of a run held only if it helps
        admit, receive = self.gatekeeper.admit, self.receiver.receive
        deliver = self.deliver if self.on_run is None else self._run.append
        qsize, limit = self.inbox.qsize, self.inbox.size
        queued = qsize if self.on_run is None else lambda: qsize() + len(self._run)
        more, quick = listener.pending, self.quick
        for i in _TURN:
            if self.handler is None and queued() >= limit:
                self.listening.pause(endpoint, self.inbox.low)
                break
            try:
                # after a frame, stop once nothing is queued: the descriptor fires for
                # the next one (posa/transport/base.py); a receive finding none costs more
                if i and not more():
                    break
                item = listener.recv_nowait()
            except PosaError:
                if self._run:
                    self._end_run()
                return  # closed under us during a migration
            if item is None:
                break
            route, frame = item
            try:
                msg = admit(frame, route)
            except Rejection as rejection:
                self._rejected(rejection, endpoint, route)
                continue
            if quick is not None and not msg.stream and msg.kind == _REQUEST \
                    and quickly(self, quick, msg, endpoint, route):
                continue
            run = receive(msg, endpoint, route)
            if len(run) > 1:
                self._deliver_run(run, deliver, many)
            else:
                for ready in run:
                    deliver(ready)
        if self._run:
            self._end_run()
        receiver = self.receiver
        if receiver.pending or receiver.outbox or receiver.requests.open:
            self.send_pending()

    def _rejected(self, rejection: Rejection, endpoint: Endpoint, route: Any) -> None:
        """A frame the gatekeeper refused: its stream told of a rate limit, a
        request answered with the error, a frame that failed to open refused."""
        refused = rejection.msg
        if refused is not None and rejection.reason == "rate-limited" and (
                refused.kind == _SEND or refused.kind == _REQUEST):
            self.receiver.refused(refused.sender, refused.stream, refused.id)
        if rejection.answerable:
            assert rejection.msg is not None
            rejection.msg.route = (endpoint, route)
            self.answer(rejection.msg, _ERROR, error_body(rejection.error))
        elif rejection.frame is not None:       # failed to open: say so
            self.refuse(endpoint, route, rejection)

    def _deliver_run(self, run: Sequence[Message], deliver: Callable[[Message], None],
                     hold: bool) -> None:
        """Deliver a run that came in one frame: a SEND without headers straight to the
        handler while it is in force (counted after); with ``hold``, answers held."""
        handler, straight, self._held = self.handler or deliver, 0, [] if hold else None
        send = _SEND if self.handler is not None and self.on_run is None else -1  # -1: none
        try:
            for msg in run:
                if msg.kind != send or msg.headers or self.handler is not handler:
                    deliver(msg)
                    continue
                straight += 1
                try:
                    handler(msg)
                except Exception:
                    log.exception("peer %s: handler raised on %r", self.name, msg)
        finally:
            self.stats["received"] += straight
            held, self._held = self._held, None
            if held:
                self._send_answers(held)

    def _end_run(self) -> None:
        """Show ``on_run`` the turn's deliveries (a repeated key not) before any is
        delivered or acknowledged. What it returns (could not take: not stored) is
        not, and is taken again when its sender resends (``Inbound.forget``)."""
        run, self._run = self._run, []
        try:
            refused = self.on_run(unkeyed(run, self.receiver.requests.keys))  # type: ignore[misc]
        except Exception:
            log.exception("peer %s: on_run raised", self.name)
            refused = None
        for msg in self.receiver.forget(run, refused) if refused else run:
            self.deliver(msg)

    def deliver(self, msg: Message) -> None:
        """Hand ``msg`` to the handler (or the inbox); a request is opened first,
        or refused while draining, or skipped as a repeat of an idempotency key."""
        request = msg.kind == _REQUEST
        if msg.headers and "key" in msg.headers and self.receiver.duplicate(msg):
            return
        if request:
            gatekeeper = self.gatekeeper     # (no call unless it counts requests)
            refused = None if gatekeeper.in_flight is None else gatekeeper.enter(msg)
            if refused is None and self.draining:
                self.stats["refused"] += 1
                refused = Rejected(f"{self.name!r} is shutting down and takes no new "
                                   "requests; ask again (another server, or after it "
                                   "restarts)")
            if refused is not None:
                self.answer(msg, _ERROR, error_body(refused))
                return
            self.receiver.requests.opened(msg, _monotonic())
        self.stats["received"] += 1
        handler = self.handler
        if handler is None:
            self.inbox.put(msg)
            return
        if msg.headers and "traceparent" in msg.headers:    # continue the sender's trace
            handler = trace.within(msg.headers, self.name, request, handler)
        if request:             # ``handle``, inline: this is the hot path
            self.run(handler, msg)
            return
        try:
            handler(msg)
        except Exception:
            log.exception("peer %s: handler raised on %r", self.name, msg)

    def run(self, handler: Callable[[Message], Any], msg: Message) -> None:
        """Run ``handler`` on the request ``msg`` within its deadline and answer
        with what it returns or raises (unless it returns ``DEFERRED``). A
        request past its deadline is answered with ``Timeout`` and not run."""
        deadline = msg.deadline
        try:
            if deadline is None:
                result = handler(msg)
            elif _monotonic() >= deadline and self.expired(msg):
                return
            else:
                result = budget.call(deadline, handler, msg)
        except Exception as exc:
            self.answer(msg, _ERROR, error_body(exc))
            return
        if result is not DEFERRED:
            self.answer(msg, _REPLY, result)

    def expired(self, msg: Message) -> bool:
        """If request ``msg``'s deadline passed (it waited too long to start):
        answer it with ``Timeout``, count it, and return True."""
        deadline = msg.deadline
        if deadline is None or _monotonic() < deadline:
            return False
        self.stats["expired"] += 1
        self.answer(msg, _ERROR, error_body(Timeout(
            f"the request waited past its deadline at {self.name!r} before it could "
            "start; it was not run")))
        return True

    def deliver_queued(self) -> None:
        """A handler was set: hand it what the inbox holds (counted when queued)."""
        for msg in self.inbox.take_all():
            self.handle(msg)

    def handle(self, msg: Message) -> None:
        """Run the handler on ``msg`` (a request is answered with its result)."""
        handler = self.handler
        assert handler is not None
        if msg.headers and "traceparent" in msg.headers:
            handler = trace.within(msg.headers, self.name, msg.kind == _REQUEST, handler)
        if msg.kind == _REQUEST:
            self.run(handler, msg)
            return
        try:
            handler(msg)
        except Exception:
            log.exception("peer %s: handler raised on %r", self.name, msg)

    def in_flight(self) -> int:
        """Requests handed to the application and not yet answered."""
        return len(self.receiver.requests.open)

    # -- answering -----------------------------------------------------------------
    def answer(self, msg: Message, kind: int, body: Any) -> None:
        """Answer the request ``msg`` (any thread): the frame goes back on the
        reactor thread, where the requester waits now."""
        if msg.kind != _REQUEST:
            raise ProtocolError(f"{msg!r} is not a request; only requests get replies")
        gatekeeper = self.gatekeeper
        if gatekeeper.in_flight is not None:
            gatekeeper.leave(msg)
        observe, deadline = self.observe, msg.deadline
        if observe is not None and deadline is not None:   # arrival = deadline - ttl
            observe(_monotonic() - deadline + msg.headers["ttl"] / 1000.0)
        here = self.reactor.in_reactor_thread()
        answers = self.receiver.requests.answer(msg, kind, body, here)
        if here:
            if self._held is None:      # (send_back's first case, without the call)
                self._send_each(answers)
            else:
                self.send_back(answers)
        else:
            self.reactor.call_soon(self.send_back, answers)

    def send_back(self, answers: list[Answer]) -> None:
        """Send answers; a REPLY to the newest request of a stream may stand for
        that stream's pending ACK (``Receiver.replied``). While a run of
        requests that came in one frame is being delivered, the answers given
        meanwhile are held and go out together after it (``_send_answers``), or
        with an answer given ``HOLD`` s or more after the first held one (over a
        listener with ``send_many``; a handler on the reactor thread, which must be
        short, delays the answers held before it by as long as it runs)."""
        held = self._held
        if held is None:        # (not in a run: at once, as one by one)
            self._send_each(answers)
            return
        now = _monotonic()
        if not held:
            self._held_at = now
        held.extend(answers)
        if now - self._held_at >= HOLD:
            self._held = []
            self._send_answers(held)

    def _send_each(self, answers: list[Answer]) -> None:
        """Send ``answers`` one by one."""
        for endpoint, route, frame, settles in answers:
            try:
                endpoint.listener.send(route, frame)
            except PosaError as exc:
                log.info("peer %s: reply not sent (%s); the requester will retry",
                         self.name, exc)
                continue
            if settles is not None:
                out = self.receiver.replied(endpoint, route, settles)
                if out:
                    self.send(out)

    def _send_answers(self, answers: list[Answer]) -> None:
        """Send ``answers``; those for one connection in a row go in one call of
        its listener's ``send_many`` (one write, not one each)."""
        i, count = 0, len(answers)
        while i < count:
            endpoint, route = answers[i][0], answers[i][1]
            j = i + 1
            while j < count and answers[j][1] == route and answers[j][0] is endpoint:
                j += 1
            send_many = getattr(endpoint.listener, "send_many", None)
            if j == i + 1 or send_many is None:
                self._send_each(answers[i:j])
                i = j
                continue
            try:
                send_many(route, [answer[2] for answer in answers[i:j]])
            except PosaError as exc:
                log.info("peer %s: %d answers not sent (%s); the requester will retry",
                         self.name, j - i, exc)
                i = j
                continue
            for endpoint, route, _, settles in answers[i:j]:
                if settles is not None:
                    out = self.receiver.replied(endpoint, route, settles)
                    if out:
                        self.send(out)
            i = j

    def refuse(self, endpoint: Endpoint, route: Any, rejection: Rejection) -> None:
        """Tell the sender of a frame that failed authentication why (unsealed,
        rate-limited: ``posa.admission.unverified``)."""
        refusal = self.gatekeeper.refusal(rejection, self.receiver.recipients)
        if refusal is not None:
            self.send([(endpoint, route, refusal)])

    @staticmethod
    def send(out: list[Outgoing]) -> None:
        """Send what the receiver returned, each on its route (reactor thread)."""
        for endpoint, route, frame in out:
            try:
                endpoint.listener.send(route, frame)
            except PosaError:
                continue  # that connection is gone; its sender resends

    def send_pending(self) -> None:
        """After a run: the receiver's answers, the ACKs due, and timers for the
        rest and for the keep-alives of open requests."""
        receiver = self.receiver
        if receiver.outbox:
            self.send(receiver.take_outbox())
        if receiver.pending:
            now = _monotonic()
            self.send(receiver.collect(now))
            if receiver.deadline is not None and self._ack_timer is None:
                self._ack_timer = self.reactor.call_later(receiver.deadline - now,
                                                          self.acknowledge_all)
        if receiver.requests.open and self._keep_alive_timer is None:
            self._keep_alive_timer = self.reactor.call_later(
                receiver.requests.progress_every, self._keep_alive)

    def acknowledge_all(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self._ack_timer = None
        self.send(self.receiver.acknowledge_all())

    def _keep_alive(self) -> None:
        self._keep_alive_timer = None
        requests = self.receiver.requests
        self.send(requests.progress(_monotonic()))
        if requests.open:
            self._keep_alive_timer = self.reactor.call_later(requests.progress_every,
                                                             self._keep_alive)
