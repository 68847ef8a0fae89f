"""Registry lookups for a channel's delivery thread, made by a helper so that the
thread never waits for the registry.

Strategy. The delivery thread serves every subscriber (``posa.channel.delivery``);
the registry it resolves subscribers' names with may be a remote dispatcher, and
a lookup may take seconds (a slow dispatcher, one that does not answer until the
client's timeout). Were the thread to ask itself, every subscriber would wait
for the one whose name is asked about. So ``Lookups`` hands each lookup to at
most ``THREADS`` helper threads (started when needed and ended after ``IDLE``
seconds without work, whatever the number of subscribers) and keeps the
answers, a registration or the ``PosaError`` the lookup raised, by name:

- ``resolve`` is the forwarder's ``Resolve`` that never waits: the answer if
  one is in, else the name is asked about and ``Unanswered`` raised, which the
  forwarder's steps treat as a back-off (``posa.delivery.links``);
- ``ask`` and ``answer`` let a lane's steps wait for a verdict (is the name
  gone?) the same way;
- when an answer comes in, ``wake`` is called and ``answered`` says for which
  names, so the thread resumes the steps waiting for it at once.

One lookup per name is in flight at a time; a name asked about again while one
runs shares its answer. An answer is used once, by the steps that wait for it
when it comes in; the delivery thread discards one nobody took then.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from posa.delivery.links import Unanswered
from posa.errors import PosaError
from posa.naming.registration import Registration, Registry

__all__ = ["Lookups", "THREADS"]

log = logging.getLogger("posa.channel.lookups")

THREADS = 2     # helper threads of a channel at most: one hung lookup leaves one free
IDLE = 10.0     # seconds a helper with nothing to look up waits for work, then ends

Answer = Registration | PosaError
Start = Callable[[Callable[[], None], str], threading.Thread]


class Lookups:
    """Lookups in ``registry`` made by helper threads (started with ``start``);
    ``wake`` is called when an answer is in. Thread-safe."""

    def __init__(self, registry: Registry, *, wake: Callable[[], None], start: Start,
                 threads: int = THREADS) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self._registry = registry
        self._forget: Callable[[str], None] | None = getattr(registry, "forget", None)
        self._wake, self._start, self._max = wake, start, threads
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, bool]] = deque()
        self._asking: set[str] = set()          # queued or being looked up
        self._answers: dict[str, Answer] = {}
        self._answered: set[str] = set()        # answers in since ``answered``
        self._threads = self._idle = 0
        self._closed = False

    def ask(self, name: str, fresh: bool) -> None:
        """Have ``name`` looked up (``fresh``: past any cache, and not answered by
        an answer that came in before), unless a lookup of it is under way."""
        with self._cond:
            if self._closed:
                return
            if fresh:
                self._answers.pop(name, None)
            if name in self._asking or name in self._answers:
                return
            self._asking.add(name)
            self._queue.append((name, fresh))
            if self._idle:
                self._cond.notify()
                return
            if self._threads >= self._max:
                return                          # a busy helper takes it next
            self._threads += 1
        self._start(self._work, "lookup")

    def answer(self, name: str) -> Answer | None:
        """The answer about ``name`` if one is in (it is used up), else None."""
        with self._cond:
            return self._answers.pop(name, None)

    def answered(self) -> set[str]:
        """The names answered about since the last call."""
        with self._cond:
            names, self._answered = self._answered, set()
        return names

    def resolve(self, name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
        """A ``Resolve`` that never waits: ``name``'s addresses and epoch if the
        answer is in (the error the lookup raised if it failed); else it is asked
        about and ``Unanswered`` raised."""
        answer = self.answer(name)
        if answer is None:
            self.ask(name, fresh)
            raise Unanswered(f"the registry is being asked about {name!r}")
        if isinstance(answer, PosaError):
            raise answer
        return answer.addresses, answer.epoch

    def discard(self, name: str) -> None:
        """Forget an answer about ``name`` that nobody used (a later resolve must
        not take an old answer for a fresh one)."""
        with self._cond:
            self._answers.pop(name, None)

    def close(self) -> None:
        """Let the helpers end (one in a lookup ends when it returns)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()

    def _work(self) -> None:
        """A helper: look up what is asked, one name at a time, until closed or
        idle for ``IDLE`` seconds."""
        while True:
            with self._cond:
                self._idle += 1
                while not self._queue and not self._closed:
                    if not self._cond.wait(IDLE):
                        break
                self._idle -= 1
                if self._closed or not self._queue:
                    self._threads -= 1
                    return
                name, fresh = self._queue.popleft()
            answer: Answer
            try:
                if fresh and self._forget is not None:
                    self._forget(name)
                answer = self._registry.lookup(name)
            except PosaError as exc:
                answer = exc
            except Exception as exc:        # a registry's own bug: the lane retries
                log.exception("a lookup of %r failed", name)
                answer = PosaError(f"the lookup of {name!r} failed: {exc!r}")
            self._put(name, answer)

    def _put(self, name: str, answer: Answer) -> None:
        with self._cond:
            self._asking.discard(name)
            if self._closed:
                return
            self._answers[name] = answer
            self._answered.add(name)
        self._wake()
