"""``NatsRegistry``: the ``Registry`` interface on a NATS JetStream key-value bucket.

Several processes (and several ``posa dispatcher --store nats://…``) given the
same servers and bucket share one registry, replicated by JetStream (R3 on a
cluster of three or more: it survives the loss of one server).

Writes are compare-and-set: read the name's record and its revision, apply the
rules on it (``posa.naming.nats.records.apply``, the code ``LocalRegistry``
runs, so the errors are the same), write with ``last=revision``, and start
again if another writer came first. Leases are a field of the record
(wall-clock ``expires_at``) checked on every read; a record past it is dead for
everyone, and every registry's sweep (every ``sweep_interval`` s) tells its
watchers and writes a tombstone ``{"e": epoch}`` (compare-and-set again: one
writer wins), so epochs never go back and no per-message TTL is needed (that
needs nats-server 2.11 and ``allow_msg_ttl``). Hosts' clocks must agree to well
within a lease (NTP does).

Each registry mirrors the bucket through a key-value watch (an ordered
consumer): lookups and ``names`` read the mirror (a miss asks the bucket), and
``watch`` callbacks hear its changes on a thread of the registry's own. The
mirror is milliseconds behind, about 10 s while the server carrying the watch is
lost; ``forget(name)`` sends the next lookup to the bucket. nats-py runs on one
asyncio loop per process (``posa.naming.nats.loop``); docs/scale.md.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from posa.errors import Closed, NameNotFound, PosaError, Timeout, Unreachable
from posa.naming.nats import loop as nats_loop
from posa.naming.nats import records
from posa.naming.nats.records import Record
from posa.naming.pages import PAGE_ENTRIES, walk
from posa.naming.registration import DEFAULT_LEASE, Registration
from posa.naming.table import RegistryTable
from posa.wire.names import Pattern, validate_name

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import KeyValueConfig
    from nats.js.kv import KeyValue
except ImportError as exc:      # the optional extra is missing
    raise ImportError("NatsRegistry needs nats-py: pip install 'posa-messaging[nats]'"
                      ) from exc

__all__ = ["NatsRegistry", "DEFAULT_BUCKET"]

DEFAULT_BUCKET = "posa-names"
_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_TRANSIENT = (nats.errors.TimeoutError, nats.errors.NoRespondersError,
              nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError,
              nats.errors.OutboundBufferLimitError, nats.js.errors.ServiceUnavailableError,
              nats.js.errors.ServerError, nats.js.errors.NoStreamResponseError)
Watcher = Callable[[str, Registration | None], None]


class NatsRegistry:
    """``Registry`` on the key-value bucket ``bucket`` of the NATS ``servers``
    (created on first use, R3 when three servers or more are known). A write waits
    up to ``timeout`` s for the bucket (its leader election after a server is lost
    takes 4-10 s). Thread-safe."""

    def __init__(self, servers: str | Sequence[str] = "nats://127.0.0.1:4222", *,
                 bucket: str = DEFAULT_BUCKET, replicas: int | None = None,
                 timeout: float = 20.0, cache: bool = True,
                 sweep_interval: float = 0.5) -> None:
        self.servers = records.server_list(servers)
        self.bucket, self.timeout, self._caching = bucket, timeout, cache
        self._lock = threading.Lock()
        self._mirror: dict[str, tuple[int, Record | None]] = {}
        self._told: dict[str, tuple[Any, ...] | None] = {}
        self._watchers: dict[int, Watcher] = {}
        self._next_watcher = 0
        self._events: queue.SimpleQueue[tuple[str, Registration | None] | None] = (
            queue.SimpleQueue())
        self._closed = False
        self._ready = threading.Event()
        self._call(self._open(replicas, sweep_interval))
        if not self._ready.wait(timeout):
            self.close()
            raise Timeout(f"the bucket {bucket!r} was not read within {timeout} s")
        self._delivery = threading.Thread(target=self._deliver, daemon=True,
                                          name=f"posa-nats-watch-{bucket}")
        self._delivery.start()

    def __enter__(self) -> NatsRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the Registry interface ----------------------------------------------------
    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None = None, lease: float = DEFAULT_LEASE,
                 meta: Mapping[str, Any] | None = None) -> Registration:
        """See ``Registry.register``."""
        def op(table: RegistryTable) -> Registration:
            return table.register(name, addresses, credential=credential, epoch=epoch,
                                  lease=lease, meta=meta)[0]
        return self._write(name, op)

    def renew(self, name: str, *, credential: str) -> Registration:
        """See ``Registry.renew``."""
        return self._write(name, lambda table: table.renew(name, credential=credential))

    def unregister(self, name: str, *, credential: str) -> None:
        """See ``Registry.unregister``."""
        self._write(name, lambda table: table.unregister(name, credential=credential))

    def lookup(self, name: str) -> Registration:
        """See ``Registry.lookup``: from the mirror, else from the bucket."""
        found = self._mirror.get(name) if self._caching and not self._closed else None
        now = time.time()
        if found is not None and records.is_live(found[1], now):
            assert found[1] is not None
            return records.registration(name, found[1], now)
        self._check_open()
        validate_name(name)
        key = records.key_of(name)
        revision, record = self._call(self._retrying(lambda: self._read(key),
                                                     f"read {name!r} from"))
        if revision:
            self._seen(name, revision, record)
        now = time.time()
        if record is None or not records.is_live(record, now):
            raise NameNotFound(f"no live registration for {name!r}; is the peer running, "
                               "and registered with this registry?")
        return records.registration(name, record, now)

    def names(self, pattern: str = "**") -> list[Registration]:
        """See ``Registry.names`` (read from the mirror)."""
        match = Pattern(pattern).match
        self._check_open()
        now = time.time()
        with self._lock:
            live = [(n, r) for n, (_, r) in self._mirror.items()
                    if r is not None and records.is_live(r, now) and match(n)]
        live.sort(key=lambda item: item[0])
        return [records.registration(n, r, now) for n, r in live]

    def page(self, pattern: str = "**", after: str | None = None, *,
             limit: int = PAGE_ENTRIES, keep: Callable[[Mapping[str, Any]], bool] | None = None
             ) -> tuple[list[Registration], str | None]:
        """One page of ``names(pattern)`` above the cursor ``after`` (see
        ``posa.naming.pages``), at most ``limit`` and ``PAGE_BYTES``."""
        return records.page(self.names(pattern), after, limit, keep)

    def pages(self, pattern: str = "**", *, limit: int = PAGE_ENTRIES
              ) -> Iterator[list[Registration]]:
        """Every page of ``names(pattern)``, first to last."""
        return walk(lambda after: self.page(pattern, after, limit=limit))

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """See ``Registry.watch``: callbacks run on this registry's delivery thread."""
        with self._lock:
            self._check_open()
            key = self._next_watcher
            self._next_watcher += 1
            self._watchers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._watchers.pop(key, None)
        return unsubscribe

    def forget(self, name: str) -> None:
        """Drop ``name`` from the mirror: the next lookup asks the bucket."""
        with self._lock:
            self._mirror.pop(name, None)

    def expire(self) -> float | None:
        """Report the registrations whose lease ran out (and tombstone them); the
        seconds until the next one dies (None if no registration is live)."""
        self._check_open()
        self._call(self._reap())
        now = time.time()
        with self._lock:
            left = [r["x"] - now for _, r in self._mirror.values()
                    if r is not None and records.is_live(r, now)]
        return max(0.0, min(left)) if left else None

    def __len__(self) -> int:
        """Live registrations in the mirror."""
        now = time.time()
        with self._lock:
            return sum(records.is_live(r, now) for _, r in self._mirror.values())

    def close(self) -> None:
        """Stop the watch and the connection; later calls raise ``Closed``. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._watchers.clear()
        self._events.put(None)
        try:
            nats_loop.call(self._shut(), 5.0)
        except (PosaError, OSError):
            pass

    # -- the bucket (loop thread) ----------------------------------------------------
    async def _open(self, replicas: int | None, sweep_interval: float) -> None:
        async def quiet(exc: Exception) -> None:    # nats-py prints tracebacks otherwise
            _log.debug("NATS connection of the registry: %r", exc)
        try:
            self._nc = await asyncio.wait_for(nats.connect(
                servers=self.servers, name="posa-registry", connect_timeout=2,
                reconnect_time_wait=0.25, max_reconnect_attempts=-1, allow_reconnect=True,
                error_cb=quiet), self.timeout / 2)
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            raise Unreachable(f"no NATS server answered at {', '.join(self.servers)} "
                              f"({exc!r}); start nats-server with -js, or fix the address"
                              ) from None
        deadline = time.monotonic() + self.timeout
        try:
            while True:     # a cluster just formed, creators racing: bounded retries
                try:
                    await self._bucket(replicas)
                    break
                except (nats.errors.Error, asyncio.TimeoutError):
                    if time.monotonic() + 0.25 >= deadline:
                        raise
                    await asyncio.sleep(0.25)
            self._watch = await self._kv.watch(records.PREFIX + ">")
        except BaseException as exc:
            await self._nc.close()
            if isinstance(exc, (nats.errors.Error, asyncio.TimeoutError)):
                raise Unreachable(f"the NATS servers at {', '.join(self.servers)} gave no "
                                  f"bucket {self.bucket!r} ({exc!r}); is JetStream on "
                                  "(nats-server -js) and a majority of them up?") from None
            raise
        self._tasks = [asyncio.ensure_future(self._follow()),
                       asyncio.ensure_future(self._sweep(sweep_interval))]

    async def _bucket(self, replicas: int | None) -> None:
        """Open the bucket, or create it (R3 when three servers are known)."""
        js = self._nc.jetstream(timeout=2.0)
        try:
            self._kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            count = replicas or (3 if len(self._nc.servers) >= 3 else 1)
            self._kv = await js.create_key_value(KeyValueConfig(
                bucket=self.bucket, history=1, replicas=count,
                description="posa name registry"))
        # compare-and-set reads through the stream's leader: a direct get may be
        # answered by a replica that lags (after a leader was lost, for seconds),
        # and a write on its revision would be refused again and again
        self._leader_kv = KeyValue(name=self.bucket, stream=f"KV_{self.bucket}",
                                   pre=f"$KV.{self.bucket}.", js=js, direct=False)

    async def _shut(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            await self._nc.close()
        except nats.errors.Error:
            pass

    async def _follow(self) -> None:
        """Feed the mirror from the bucket's watch."""
        async for entry in self._watch:
            if entry is None:
                self._ready.set()
                continue
            name = records.name_of(entry.key)
            if name is None or entry.revision is None:
                continue
            try:
                record = None if entry.operation else records.unpack(entry.value)
            except PosaError:
                continue
            self._seen(name, entry.revision, record)

    async def _sweep(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reap()
            except (PosaError, nats.errors.Error):
                pass            # the next sweep tries again

    async def _reap(self) -> None:
        """Tell watchers of the dead; tombstone each (one registry wins each)."""
        now = time.time()
        with self._lock:
            dead = [(n, rev, r) for n, (rev, r) in self._mirror.items()
                    if r is not None and "o" in r and r["x"] <= now]
        for name, revision, record in dead:
            self._tell(name, None)
            try:
                await self._kv.update(records.key_of(name), records.pack({"e": record["e"]}),
                                      last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass            # renewed, re-registered or reaped by another meanwhile

    async def _read(self, key: str, leader: bool = False) -> tuple[int, Record | None]:
        try:
            entry = await (self._leader_kv if leader else self._kv).get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            gone = getattr(exc, "entry", None)
            return (gone.revision or 0) if gone is not None else 0, None
        return entry.revision or 0, records.unpack(entry.value)

    async def _cas(self, name: str, op: Callable[[RegistryTable], _T]
                   ) -> tuple[_T, int, Record | None]:
        """Apply ``op`` to ``name``'s record and write the result if it changed,
        again until no other writer comes first (or the deadline passes)."""
        key = records.key_of(name)

        async def attempt() -> tuple[_T, int, Record | None]:
            revision, record = await self._read(key, leader=True)
            result, new = records.apply(name, record, op)
            now = time.time()
            if new is None or (new == record) or (
                    not records.is_live(new, now) and not records.is_live(record, now)):
                return result, 0, None
            return result, await self._kv.update(key, records.pack(new), last=revision), new
        return await self._retrying(attempt, f"write {name!r} to")

    async def _retrying(self, attempt: Callable[[], Coroutine[Any, Any, _T]], what: str) -> _T:
        """``attempt()``, again after a lost race or a lost server, until ``timeout``."""
        deadline, pause = time.monotonic() + self.timeout, 0.01
        while True:
            try:
                return await attempt()
            except nats.js.errors.KeyWrongLastSequenceError:
                pause = 0.001                   # another writer came first
            except _TRANSIENT:
                pause = min(pause * 2, 0.25)    # a server lost: its peers elect anew
            if time.monotonic() + pause > deadline:
                raise Timeout(f"could not {what} the bucket {self.bucket!r} within "
                              f"{self.timeout} s; is a majority of its servers up?")
            await asyncio.sleep(pause)

    # -- the mirror and the watchers -------------------------------------------------
    def _write(self, name: str, op: Callable[[RegistryTable], _T]) -> _T:
        self._check_open()
        validate_name(name)
        result, revision, record = self._call(self._cas(name, op))
        if revision:
            self._seen(name, revision, record)
        return result

    def _seen(self, name: str, revision: int, record: Record | None) -> None:
        """A revision of ``name`` read or written: keep it if newer; tell watchers."""
        with self._lock:
            old = self._mirror.get(name)
            if old is not None and old[0] >= revision:
                return
            self._mirror[name] = (revision, record)
        now = time.time()
        self._tell(name, records.registration(name, record, now)
                   if record is not None and records.is_live(record, now) else None)

    def _tell(self, name: str, registration: Registration | None) -> None:
        """Queue ``registration`` for the watchers unless it is what they last heard
        of ``name`` (a renewal changes nothing they see)."""
        heard = None if registration is None else (
            registration.epoch, registration.addresses, dict(registration.meta))
        with self._lock:
            if self._told.get(name) == heard:
                return
            if heard is None:
                self._told.pop(name, None)
            else:
                self._told[name] = heard
            self._events.put((name, registration))

    def _deliver(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            with self._lock:
                watchers = tuple(self._watchers.values())
            for callback in watchers:
                try:
                    callback(*event)
                except Exception:   # a watcher must not stop the others
                    _log.exception("registry watcher %r raised on %r; it stays "
                                   "subscribed", callback, event[0])

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            return nats_loop.call(coro, 1.5 * self.timeout + 3.0)
        except nats.errors.Error as exc:    # none retried: say it in posa's words
            raise Unreachable(f"NATS failed the registry's call: {exc!r}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this NatsRegistry is closed; create a new one")
