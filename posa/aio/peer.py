"""``posa.aio.Peer``: a peer whose every call is awaitable and none blocks the loop.

It wraps a ``posa.Peer`` and sends through the loop thread's forwarder, whose
protocol steps (``request_steps``, ``flush_steps``, ``send_steps``) it
drives on the event loop through the loop's hub (``posa.aio.hub``): any number
of tasks share the peer, their requests are in flight together, and a send to
a recipient whose window is full waits for acknowledgements as a task, not as
the loop.  Requests that several tasks make in one turn of the loop while
others wait go out in one BATCH frame (``Forwarder.queue_request``); a lone request
goes out at once.  Sends and requests of one task keep their order.

Handlers: ``serve(fn)`` runs a plain function on posa's reactor thread (like
``posa.Peer``'s: it must not block); a coroutine function, or a function that
returns an awaitable, runs on the loop, one task per message, and the reply
goes out when it finishes.  Without a handler, ``receive()`` reads an
``asyncio.Queue`` the reactor fills.  Calls that are rare and may wait on the
network (the first lookup of a name, ``migrate``, closing) run on a worker
thread of the peer's own.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from posa import peer as peer_module
from posa.aio.hub import Awaited, Hub, drive
from posa.delivery.budget import LONGEST, bounded, seconds, until, wrong_timeout
from posa.delivery.forwarder import Forwarder
from posa.delivery.waiting import Steps
from posa.errors import Closed, InvalidName, PosaError, Timeout
from posa.naming.pages import registrations
from posa.runtime.pools import Pool
from posa.wire.codec import Kind, Message
from posa.wire.names import is_pattern

__all__ = ["Peer", "Handler", "call_handler"]

log = logging.getLogger("posa.aio")

Handler = Callable[[Message], Any]


class Peer:
    """``posa.Peer`` for asyncio. Create it inside a running event loop with
    ``await Peer.open(name, ...)``, which registers without blocking the loop
    (``Peer(name, ...)`` does the same but blocks it while the name registers);
    it takes ``posa.Peer``'s arguments (``window`` must be at least 2)."""

    def __init__(self, name: str, *, handler: Handler | None = None, **kwargs: Any) -> None:
        self._prepare(name, handler, kwargs)
        self._attach(peer_module.Peer(name, handler=self._from_reactor, **kwargs))

    @classmethod
    async def open(cls, name: str, *, handler: Handler | None = None,
                   **kwargs: Any) -> Peer:
        """``Peer(name, ...)`` without blocking the loop: binding the listener and
        registering the name (a round trip to the dispatcher, however long it
        takes) run on the peer's worker thread while the loop goes on."""
        self = cls.__new__(cls)
        self._prepare(name, handler, kwargs)
        make = functools.partial(peer_module.Peer, name, handler=self._from_reactor, **kwargs)
        try:
            sync = await self._loop.run_in_executor(self._worker, make)
        except BaseException:
            self._worker.shutdown(wait=False)
            raise
        self._attach(sync)
        return self

    def _prepare(self, name: str, handler: Handler | None, kwargs: dict[str, Any]) -> None:
        self._loop = asyncio.get_running_loop()
        if kwargs.get("window", 2) < 2:
            raise ValueError("posa.aio.Peer needs window=2 or more: with a window of 1 "
                             "every send waits for its acknowledgement")
        self._worker = Pool(1, thread_name_prefix=f"posa-aio-{name}")
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._handler = handler
        self._tasks: set[asyncio.Future[Any]] = set()
        self._corked: set[Forwarder] = set()
        self._hub = Hub.of(self._loop)
        self.name = name
        self._closed = False
        # handler tasks for messages that arrived while ``open`` registered
        self._early: list[tuple[Awaitable[Any], Message]] | None = []

    def _attach(self, sync: peer_module.Peer) -> None:
        self._sync = sync
        self.name = sync.name
        early, self._early = self._early or [], None
        for awaitable, msg in early:
            self._start(awaitable, msg)

    @property
    def address(self) -> str:
        return self._sync.address

    @property
    def sync(self) -> peer_module.Peer:
        """The ``posa.Peer`` underneath (for what has no awaitable form)."""
        return self._sync

    # -- receiving -------------------------------------------------------------
    def _from_reactor(self, msg: Message) -> Any:
        """Reactor thread: a plain handler runs here; an awaitable goes to the loop."""
        handler = self._handler
        if handler is None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, msg)
            return peer_module.DEFERRED
        result = handler(msg)
        if not inspect.isawaitable(result):
            return result
        try:
            self._loop.call_soon_threadsafe(self._start, result, msg)
        except RuntimeError:
            if inspect.iscoroutine(result):
                result.close()
            raise Closed(f"the event loop of {self.name!r} is closed") from None
        return peer_module.DEFERRED

    def _start(self, awaitable: Awaitable[Any], msg: Message) -> None:
        if self._early is not None:     # ``open`` has not attached the peer yet
            self._early.append((awaitable, msg))
            return
        with until(msg.deadline):   # calls it makes inherit the request's time left
            task = asyncio.ensure_future(call_handler(self._sync, awaitable, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message; waits up to ``timeout`` as ``posa.Peer.receive`` does
        (None, or longer than a thread can wait: until a message comes; 0 or less:
        no wait, a message already here is taken). Raises ``Timeout`` if none came;
        ``Closed`` once the peer is closed and what came before is taken;
        ``ValueError`` for ``nan`` or what is no number, saying what is taken."""
        wait = _receive_wait(timeout)
        try:
            if wait is not None and wait <= 0:
                msg = self._queue.get_nowait()
            else:
                msg = await asyncio.wait_for(self._queue.get(), wait)
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            raise Timeout(f"no message for {self.name!r} within {timeout} s") from None
        if msg is _CLOSED:
            self._queue.put_nowait(msg)     # for every later reader too
            raise Closed(f"peer {self.name!r} is closed")
        return msg

    def serve(self, handler: Handler) -> None:
        """Hand every message to ``handler``: a function (on the reactor thread) or
        a coroutine function (on the loop; its return value is the reply)."""
        self._handler = handler

    def reply(self, msg: Message, body: Any = None) -> None:
        self._sync.reply(msg, body)

    def reply_error(self, msg: Message, exc: BaseException) -> None:
        self._sync.reply_error(msg, exc)

    # -- sending ----------------------------------------------------------------
    async def send(self, name: str, body: Any = None, *, timeout: float = 5.0,
                   headers: dict[str, Any] | None = None) -> int:
        """Send ``body`` to ``name`` (or to every member of a group); returns the
        number of recipients. Waits, without blocking the loop, while ``window``
        messages to a recipient are unacknowledged. ``ValueError`` for a timeout
        that is no number of seconds from 0 to ``posa.delivery.budget.LONGEST``
        (``budget.seconds``, made inline here as in ``posa.Peer.send``)."""
        try:
            if not 0.0 <= timeout <= LONGEST:   # nan, negative, infinite, too large
                raise wrong_timeout(timeout, "a send's timeout")
        except TypeError:                       # not a number
            raise wrong_timeout(timeout, "a send's timeout") from None
        deadline = time.monotonic() + timeout
        if is_pattern(name):
            recipients = [r for r in await self._run(self._members, name) if r != self.name]
        else:
            recipients = [name]
        fwd = self._sync.sender.forwarder()
        for recipient in recipients:
            if fwd not in self._hub.waiting and fwd.has_room(recipient):
                failed: list[BaseException | None] = []
                with fwd.lock:      # the common case: no wait, no other task to wake
                    fwd.send_locked(recipient, body, Kind.SEND, headers, deadline, failed)
                if failed:          # the link must be recovered: back off on the loop
                    await drive(fwd.recovery_steps(recipient, deadline, failed[0]), fwd,
                                hub=self._hub)
            else:
                await self._first_contact(fwd, recipient)
                await drive(fwd.send_steps(recipient, body, Kind.SEND, headers, deadline),
                            fwd, hub=self._hub)
            self._sync.stats["sent"] += 1
        return len(recipients)

    def _members(self, pattern: str) -> list[str]:
        return [r.name for r in registrations(self._sync.registry, pattern)]  # by pages

    async def request(self, name: str, body: Any = None, *, timeout: float = 5.0,
                      headers: dict[str, Any] | None = None) -> Any:
        """Send a request to ``name`` and return its reply's body; any number of
        tasks may have requests in flight at once. Inside a handler the timeout
        is cut to the handled request's remaining time."""
        if is_pattern(name):
            raise InvalidName(f"request goes to one peer, not to the group {name!r}; "
                              "use send() for groups")
        fwd = self._sync.sender.forwarder()
        deadline = time.monotonic() + bounded(timeout)
        if not fwd.knows(name):
            await self._first_contact(fwd, name)
        hub = self._hub
        if fwd in hub.waiting and fwd.has_room(name):
            return (await self._joined(fwd, hub, name, body, deadline, headers)).body
        awaited = Awaited()
        reply = await drive(request_steps(fwd, name, body, deadline, headers, awaited,
                                          self._cork),
                            fwd, awaited, self._hub)
        return reply.body

    async def _joined(self, fwd: Forwarder, hub: Hub, name: str, body: Any,
                      deadline: float, headers: dict[str, Any] | None) -> Message:
        """``request_steps`` where other tasks of ``fwd`` wait (the request joins
        this turn's batch: ``_cork``) and the window has room, without driving
        steps: the request is queued and its task waits for its answer by key
        once (``Forwarder.first_wait``); an answer not in after that wait goes
        on as the steps would (``Forwarder.waited_steps``)."""
        with fwd.lock:
            self._cork(fwd)
            seq = fwd.queue_request(name, body, deadline, headers)
            waited = fwd.first_wait(name, seq, deadline)
        key = (name, seq)
        if waited is None:
            return await drive(fwd.reply_steps(name, seq, deadline), fwd, _keyed(key), hub)
        held = hub.hold(waited[1], waited[2], fwd, key)
        ready = True
        if held is not None:
            try:
                ready = await held[0]
            finally:
                hub.release(held)
        with fwd.lock:
            reply = fwd.answer(name, seq)
        if reply is not None:
            return reply
        return await drive(fwd.waited_steps(name, seq, deadline, waited, ready), fwd,
                           _keyed(key), hub)

    def _cork(self, fwd: Forwarder) -> bool:
        """If other tasks wait on ``fwd`` (requests travel together): write its open
        batches once the tasks running in this turn of the loop, and those their
        steps woke, have made their requests, and return True. A lone request
        goes out at once (False)."""
        if fwd in self._corked:
            return True
        if fwd not in self._hub.waiting:
            return False
        self._corked.add(fwd)
        self._loop.call_soon(self._loop.call_soon, self._uncork, fwd)
        return True

    def _uncork(self, fwd: Forwarder) -> None:
        self._corked.discard(fwd)
        with fwd.lock:
            fwd.write_open()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything sent from the event loop is acknowledged.
        ``ValueError`` for a timeout that is no number of seconds (``budget.seconds``)."""
        deadline = time.monotonic() + seconds(timeout, "a flush's timeout")
        fwd = self._sync.sender.forwarder()
        await drive(fwd.flush_steps(deadline), fwd)

    async def _first_contact(self, fwd: Forwarder, name: str) -> None:
        """Look a name up on the worker thread the first time (the registry may be
        across the network); the forwarder then finds it in the registry's cache."""
        try:
            fwd.connection(name)
        except KeyError:
            await self._run(self._sync.registry.lookup, name)

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._loop.run_in_executor(
            self._worker, functools.partial(fn, *args, **kwargs))

    # -- moving and closing ---------------------------------------------------------
    async def migrate(self, listen: str, **kwargs: Any) -> str:
        return await self._run(self._sync.migrate, listen, **kwargs)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Deliver what the event loop sent (up to ``linger``), then close. Idempotent.

        In a forked child the worker thread (and its pool's lock, which a thread of
        the parent may have held at the fork) and the event loop are the parent's:
        the close runs on a worker of the child's own, in the running loop, and
        closes what ``posa.Peer.close`` closes in a child (the child's copies)."""
        if self._closed:
            return
        self._closed = True
        if self._worker.inherited:
            self._loop, self._worker = asyncio.get_running_loop(), self._worker.here()
        try:
            await self.flush(self._sync.linger)
        except PosaError:
            pass  # close() goes on; what was not acknowledged is logged by the peer
        await self._run(self._sync.close)
        self._worker.shutdown(wait=False)
        self._queue.put_nowait(_CLOSED)     # wakes every receive(), now and later

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def request_steps(fwd: Forwarder, name: str, body: Any, deadline: float,
                  headers: dict[str, Any] | None, awaited: Awaited,
                  cork: Callable[[Forwarder], bool]) -> Steps[Message]:
    """A request that first waits for room in the window (so that its send does
    not block), then is sent, or joins the requests of this turn of the loop if
    ``cork`` says other tasks are at work (it writes them together), and waits
    for the reply (``Forwarder.reply_steps``), by its key (``awaited``: the hub
    wakes the task when its reply is read, and for nothing else)."""
    if not fwd.has_room(name):
        yield from fwd.room_steps(name, deadline)
    if cork(fwd):
        seq = fwd.queue_request(name, body, deadline, headers)
    else:
        seq = fwd.send_request(name, body, deadline, headers)
    awaited.key = (name, seq)
    return (yield from fwd.reply_steps(name, seq, deadline))


_CLOSED: Any = object()     # what receive() finds once the peer is closed


def _receive_wait(timeout: float | None) -> float | None:
    """``receive``'s wait for ``timeout``, taken as ``posa.Peer.receive`` takes it
    (``posa.delivery.inbox``): None for one longer than any wait."""
    if timeout is None:
        return None
    try:
        if timeout <= LONGEST:      # nan compares False
            return timeout
        if timeout > LONGEST:
            return None
    except TypeError:               # not a number
        pass
    raise ValueError("receive's timeout must be a number of seconds or None (wait until "
                     f"a message comes), not {timeout!r}")


def _keyed(key: tuple[str, int]) -> Awaited:
    awaited = Awaited()
    awaited.key = key
    return awaited


async def call_handler(peer: peer_module.Peer, awaitable: Awaitable[Any],
                       msg: Message) -> None:
    """Await a handler's result on the loop and answer ``msg`` with it (a request:
    the reply or the error; else an error is logged)."""
    request = msg.kind == Kind.REQUEST
    if request and peer.expired(msg):      # answered with Timeout: not started
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        return
    try:
        result = await awaitable
    except Exception as exc:
        if request:
            peer.reply_error(msg, exc)
        else:
            log.exception("peer %s: handler raised on %r", peer.name, msg)
        return
    if request and result is not peer_module.DEFERRED:
        peer.reply(msg, result)
