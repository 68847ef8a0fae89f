"""The requests a peer received, from arrival to answer, with no I/O (sans-IO).

The ``Receiver`` holds one ``Requests``; the glue (``posa.delivery.intake``)
passes the time in and sends what it returns.

- ``opened(msg, now)``: a request was handed to the application.  It is *open*
  until answered, with its deadline (its ``ttl`` header, counted from its
  arrival: ``msg.deadline``) and the route its latest copy came by.
- ``repeated``: a copy of a request came again (its sender resent it, maybe by
  another way).  Answered: the cached answer goes back again.  Open: its answer
  will go where the requester waits now.  A request runs at most once per
  (sender, stream, id) however often it is resent.
- ``progress(now)``: a PROGRESS frame for every request open longer than
  ``progress_every`` s, on its route, every ``progress_every`` s: the requester
  tells "received, still working" from "gone" by them (``next_progress`` says
  when the next are due).
- ``answer``: the REPLY or ERROR frame, where it goes, and (for a REPLY) the
  request it settles.  An answer that cannot be encoded becomes an ERROR the
  requester raises as ``RemoteError`` naming the cause: it is told at once.
  The answer is cached, within ``max_replies`` frames and ``max_reply_bytes``
  in all (the oldest go first; an answer larger than the budget is not kept).
- Idempotency keys: a message with a ``key`` header that its sender used before
  (among the latest ``max_keys``) is not delivered again (``duplicate``); a
  repeated keyed request gets the first one's answer, now or when it comes.

``answer`` may be called from any thread (an application's deferred reply); the
cache is guarded by a lock, the rest are single dict steps.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import msgpack

from posa.errors import ProtocolError, Rejected, RemoteError, code_of
from posa.wire.codec import Kind, Message, Pack

__all__ = ["Requests", "Key", "PROGRESS_EVERY"]

Key = tuple[str, int, int]          # (sender, stream, id) of a request
Route = tuple[Any, Hashable]        # (endpoint, route) the requester waits on
PROGRESS_EVERY = 0.25   # seconds between keep-alives of a request being handled
_REPLY, _ERROR, _PROGRESS = Kind.REPLY, Kind.ERROR, Kind.PROGRESS
_NO_HEADERS: dict[str, Any] = {}   # packed for answers (they carry none); never changed
_REMOTE = code_of(RemoteError("", ""))   # the code of an ERROR raised as RemoteError
_REJECTED = code_of(Rejected(""))
_new = object.__new__
_HEADS = 256        # envelope heads packed_reply keeps, one per (recipient, requester)


class Open:
    """A request being handled: where its answer goes, since when it is quiet."""

    __slots__ = ("route", "quiet_since", "recipient", "id")

    def __init__(self, route: Route, now: float, recipient: str, id: int) -> None:
        self.route = route
        self.quiet_since = now
        self.recipient = recipient
        self.id = id


class Keyed:
    """The first message of an idempotency key, and what its repeats get."""

    __slots__ = ("first", "waiting", "answer", "size")

    def __init__(self, first: Key) -> None:
        self.first = first
        self.waiting: list[Message] = []        # repeats waiting for the answer
        self.answer: tuple[int, Any] | None = None
        self.size = -1          # the answer's size; -1 before it came, 0 once dropped


class Requests:
    """Open requests, cached answers and idempotency keys of one peer."""

    def __init__(self, name: str, recipients: frozenset[str], *, pack: Pack,
                 seal: Callable[[bytes], bytes] | None, pack_here: Pack | None = None,
                 max_replies: int = 1024,
                 max_reply_bytes: int = 64 * 1024 * 1024, max_open: int = 65536,
                 max_keys: int = 65536, max_key_bytes: int = 16 * 1024 * 1024,
                 progress_every: float = PROGRESS_EVERY) -> None:
        self.name = name
        self.recipients = recipients
        self._pack = pack             # thread-safe: an answer may come from any thread
        self._pack_here = pack_here or pack     # the receiving thread's own (``here``)
        self._seal = seal             # None: answers go unsealed
        self._heads: dict[tuple[str, str], bytes] = {}     # packed_reply's
        self._pack_int = msgpack.Packer().pack
        self.max_replies = max_replies
        self.max_reply_bytes = max_reply_bytes
        self.max_open = max_open
        self.max_keys = max_keys
        self.max_key_bytes = max_key_bytes
        self._kept_bytes = 0                  # the answers kept for keyed repeats
        self.progress_every = progress_every
        self.reply_bytes = 0                  # the cached answers' size
        self._lock = threading.Lock()
        # the latest answers, oldest first (popitem(last=False) evicts in O(1))
        self.replies: OrderedDict[Key, bytes] = OrderedDict()
        self.open: dict[Key, Open] = {}
        # (sender, idempotency key) -> its first message and what repeats get
        self.keys: OrderedDict[tuple[str, Any], Keyed] = OrderedDict()

    # -- arriving ------------------------------------------------------------
    def opened(self, msg: Message, now: float) -> None:
        """``msg`` (a request) goes to the application now: it is open, with its
        deadline from its ``ttl`` header."""
        ttl = msg.headers.get("ttl")
        if type(ttl) is int and ttl > 0:
            msg.deadline = now + ttl / 1000.0
        if msg.stream:
            opened = self.open
            record = _new(Open)      # (``Open(...)`` without its __init__ frame)
            record.route, record.quiet_since = msg.route, now
            record.recipient, record.id = msg.recipient, msg.id
            opened[(msg.sender, msg.stream, msg.id)] = record
            if len(opened) > self.max_open:     # handlers that never answer: forget the oldest
                del opened[next(iter(opened))]

    def repeated(self, msg: Message, route: Route) -> bytes | None:
        """A copy of request ``msg`` came again by ``route``: the cached answer to
        send back, or None (still open: its answer will go by ``route``)."""
        key = (msg.sender, msg.stream, msg.id)
        frame = self.replies.get(key)
        if frame is None:
            record = self.open.get(key)
            if record is not None:
                record.route = route
        return frame

    def duplicate(self, msg: Message) -> list[tuple[Any, Hashable, bytes, Key | None]] | None:
        """None if ``msg`` is to be delivered; else it carries an idempotency key its
        sender used before and is not delivered again: a keyed request gets the
        first one's answer (the frames returned now, or once it comes)."""
        token = (msg.sender, msg.headers["key"])
        with self._lock:        # ``answer`` (any thread) walks the keys too
            seen = self.keys.get(token)
            if seen is None:
                self.keys[token] = Keyed((msg.sender, msg.stream, msg.id))
                if len(self.keys) > self.max_keys:
                    self._kept_bytes -= max(0, self.keys.popitem(last=False)[1].size)
                return None
            if msg.kind != Kind.REQUEST:
                return []
            answer = seen.answer
            if answer is None and (seen.first in self.open or seen.size < 0):
                seen.waiting.append(msg)     # answered with the first, when it is
                return []
        if answer is not None:
            return [self._answer_one(msg, *answer)]
        return [self._answer_one(msg, _ERROR, [_REJECTED, "Rejected", (
            f"a request with key {token[1]!r} was answered before and its answer is no "
            "longer kept; use a new key to run it again")])]

    # -- keeping requesters informed ---------------------------------------------
    def progress(self, now: float) -> list[tuple[Any, Hashable, bytes]]:
        """PROGRESS frames for the requests quiet for ``progress_every`` s."""
        due = now - self.progress_every
        out = []
        for (sender, _, _), record in list(self.open.items()):
            if record.quiet_since <= due:
                record.quiet_since = now
                endpoint, route = record.route
                frame = self._pack(_PROGRESS, 0, 0, record.recipient, sender, record.id,
                                   _NO_HEADERS, None)
                out.append((endpoint, route, frame if self._seal is None
                             else self._seal(frame)))
        return out

    # -- answering -------------------------------------------------------------
    def answer(self, msg: Message, kind: int, body: Any, here: bool = False
               ) -> list[tuple[Any, Hashable, bytes, Key | None]]:
        """The frames answering request ``msg`` (REPLY or ERROR with ``body``):
        each with its route and, for a REPLY in a stream, the request it settles.
        The first goes to ``msg``'s requester where it waits now; the others to
        later copies of it sent with the same idempotency key. ``here``: the
        caller is on the receiving thread (its own packer then serves)."""
        out = [self._answer_one(msg, kind, body, here)]
        if msg.headers and "key" in msg.headers:
            seen = self.keys.get((msg.sender, msg.headers["key"]))
            if seen is not None and seen.first == (msg.sender, msg.stream, msg.id):
                with self._lock:
                    self._keep(seen, kind, body, len(out[0][2]))
                    waiting, seen.waiting = seen.waiting, []
                out.extend(self._answer_one(copy, kind, body) for copy in waiting)
        return out

    def _keep(self, seen: Keyed, kind: int, body: Any, size: int) -> None:
        """Keep a keyed request's answer for its repeats, within ``max_key_bytes``
        (the oldest kept answers go first)."""
        if size > self.max_key_bytes:
            seen.size = 0
            return
        seen.answer, seen.size = (kind, body), size
        self._kept_bytes += size
        for other in self.keys.values():
            if self._kept_bytes <= self.max_key_bytes:
                break
            if other.answer is not None and other is not seen:
                self._kept_bytes -= other.size
                other.answer, other.size = None, 0

    def frame(self, msg: Message, kind: int, body: Any, here: bool = False
              ) -> tuple[int, bytes]:
        """The answer's kind and frame (sealed): an answer that cannot be encoded
        becomes an ERROR saying why. Nothing is kept (``answer`` keeps it)."""
        me = msg.recipient if msg.recipient in self.recipients else self.name
        seal = self._seal
        try:
            frame = (self._pack_here if here else self._pack)(
                kind, 0, 0, me, msg.sender, msg.id, _NO_HEADERS, body)
            return kind, frame if seal is None else seal(frame)
        except ProtocolError as exc:        # the requester is told why, at once
            frame = self._pack(_ERROR, 0, 0, me, msg.sender, msg.id, {}, [
                _REMOTE, "ProtocolError", f"the answer could not be sent: {exc}"])
            return _ERROR, frame if seal is None else seal(frame)

    def packed_reply(self, msg: Message, body: bytes) -> bytes:
        """The REPLY frame (sealed) to ``msg`` whose body is ``body``, already
        packed (msgpack), as ``frame`` would make it. Nothing is kept. Reactor
        thread only (its packer of correlations is not shared)."""
        me = msg.recipient if msg.recipient in self.recipients else self.name
        key = (me, msg.sender)
        head = self._heads.get(key)
        if head is None:    # the envelope up to its correlation, as the codec packs it
            if len(self._heads) >= _HEADS:
                self._heads.clear()
            # (less the correlation 0, the empty headers and the nil body: one byte each)
            head = self._heads[key] = self._pack(_REPLY, 0, 0, me, msg.sender, 0,
                                                 _NO_HEADERS, None)[:-3]
        frame = b"".join((head, self._pack_int(msg.id), b"\x80", body))
        seal = self._seal
        return frame if seal is None else seal(frame)

    def _answer_one(self, msg: Message, kind: int, body: Any, here: bool = False
                    ) -> tuple[Any, Hashable, bytes, Key | None]:
        kind, frame = self.frame(msg, kind, body, here)
        endpoint, route = msg.route
        settles = None
        if msg.stream:
            key = (msg.sender, msg.stream, msg.id)
            self._cache(key, frame)
            record = self.open.pop(key, None)
            if record is not None:
                endpoint, route = record.route
            if kind == _REPLY:      # the requester takes a REPLY for an ACK
                settles = key
        return endpoint, route, frame, settles

    def _cache(self, key: Key, frame: bytes) -> None:
        """Keep ``frame`` for a repeat of request ``key``, within both bounds."""
        replies, size, most = self.replies, len(frame), self.max_reply_bytes
        with self._lock:
            kept = self.reply_bytes
            old = replies.pop(key, None)
            if old is not None:
                kept -= len(old)
            if size <= most:
                replies[key] = frame
                kept += size
            if len(replies) > self.max_replies:     # a full cache: one in, one out
                kept -= len(replies.popitem(last=False)[1])
            while kept > most and replies:
                kept -= len(replies.popitem(last=False)[1])
            self.reply_bytes = kept
