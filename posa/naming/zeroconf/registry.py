"""LAN discovery: a ``Registry`` on multicast DNS / DNS-SD (python-zeroconf).

Every name this process registers is announced as a DNS-SD service of type
``_posa._tcp.local.``, which standard browsers list (``avahi-browse -r _posa._tcp``,
``dns-sd -B _posa._tcp``). Every posa service announced on the LAN is kept in a
local table, so ``lookup()`` and ``names()`` answer without a network round trip.

    posa.naming.zeroconf.registry  ZeroconfRegistry: the network side (this module)
    posa.naming.zeroconf.wire      the DNS-SD records of a name: TXT codec, instance label
    posa.naming.zeroconf.table     DiscoveryTable: names seen and owned, leases as TTLs,
                            ownership rules

Addresses. An address on a wildcard host (``tcp://0.0.0.0:P``) is announced as one
per interface address, which other hosts can use (``posa.naming.hosts``); a peer
that names no ``listen`` listens on every interface (``default_listen``).

Strategy. ``ZeroconfRegistry`` feeds the table the TXT records python-zeroconf
receives, on python-zeroconf's event-loop thread, runs its operations there, one
at a time, and sends what the table decides: announcements, goodbyes (three times,
as python-zeroconf does) and refresh queries, at the table's next deadline.

Threads. python-zeroconf runs one asyncio loop thread (unless a running Zeroconf is
passed in, which then stays the caller's to close); watch callbacks run on one
thread of this registry, never on the loop, receive the latest state of each
changed name in the order the names changed, and may call any method.
``close`` sends the goodbyes and joins both threads.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from zeroconf import (  # type: ignore[attr-defined]  # (3 names outside its __all__: bounded)
    DNSOutgoing,
    DNSQuestion,
    DNSText,
    InterfaceChoice,
    IPVersion,
    RecordUpdate,
    RecordUpdateListener,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser

from posa.errors import Closed, PosaError, Rejected, Timeout, TransportError
from posa.naming.hosts import reachable
from posa.naming.registration import DEFAULT_LEASE, Change, Registration
from posa.naming.zeroconf.table import DiscoveryTable
from posa.naming.zeroconf.watchers import Watchers
from posa.naming.zeroconf.wire import (
    SERVICE_TYPE,
    Announcement,
    decode_txt,
    encode_txt,
    instance_label,
    record_ttl,
)

__all__ = ["ZeroconfRegistry", "DiscoveryTable", "SERVICE_TYPE", "instance_label",
           "encode_txt", "decode_txt", "Announcement"]

CALL_TIMEOUT = 10.0                 # s to wait for the event loop
GOODBYE_REPEATS = (0.125, 0.25)     # s after the first goodbye, as python-zeroconf does

_CLASS_IN, _FLAGS_QR_QUERY, _TYPE_TXT = 1, 0x0000, 16   # RFC 1035, not zeroconf's private

_log = logging.getLogger(__name__)
_SUFFIX = "." + SERVICE_TYPE
_T = TypeVar("_T")


def _service_info(registration: Registration, txt: bytes) -> ServiceInfo:
    """The DNS-SD service of ``registration``: SRV from its first tcp-ish address."""
    port, host = 0, None
    for address in registration.addresses:
        parts = urlsplit(address)
        if parts.scheme == "tcp" or parts.scheme.endswith("+tcp"):
            try:
                port, host = parts.port or 0, parts.hostname
            except ValueError:
                continue
            break
    tag = f"{registration.name}#{registration.epoch}".encode()
    server = f"posa-{hashlib.sha256(tag).hexdigest()[:16]}.local."
    ips = None
    if host:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            server = host.rstrip(".") + "."     # a host name: its own responder answers
        else:
            ips = None if ip.is_unspecified else [str(ip)]
    ttl = record_ttl(registration.lease)
    return ServiceInfo(SERVICE_TYPE, instance_label(registration.name) + _SUFFIX,
                       port=port, properties=txt, server=server, parsed_addresses=ips,
                       host_ttl=ttl, other_ttl=ttl)


class _RecordListener(RecordUpdateListener):
    """Hands every record batch python-zeroconf receives to the registry."""

    def __init__(self, registry: ZeroconfRegistry) -> None:
        self._registry = registry

    def async_update_records(self, zc: Zeroconf, now: float,
                             records: list[RecordUpdate]) -> None:
        self._registry._on_records(now, records)


class ZeroconfRegistry:
    """A ``Registry`` whose names are DNS-SD services on the LAN (see the module doc).

    ``interfaces``: IP addresses of the interfaces to announce and listen on (None:
    every interface); ``ip_version``: ``"v4"``, ``"v6"`` or ``"all"`` (None: what the
    addresses are, else v4); ``zeroconf``: a running ``zeroconf.Zeroconf`` to share
    instead, which its owner closes after this registry.

    Errors as ``Registry`` says, and: ``Rejected`` when a registration's DNS-SD record
    would exceed 1300 bytes or meta is not JSON data; ``Unauthorized``/``StaleEpoch``
    for a name another host announces (ownership: ``posa.naming.zeroconf.table``);
    ``TransportError`` when the mDNS sockets cannot be opened; ``Timeout`` when the
    event loop does not answer within ``CALL_TIMEOUT`` s. Methods block briefly: do
    not call them on the zeroconf loop.
    """

    default_listen = "tcp://0.0.0.0:0"     # a Peer that names no listen: every interface

    def __init__(self, *, interfaces: Sequence[str] | None = None,
                 ip_version: str | None = None, zeroconf: Zeroconf | None = None) -> None:
        versions = {None: None, "v4": IPVersion.V4Only, "v6": IPVersion.V6Only,
                    "all": IPVersion.All}
        if ip_version not in versions:
            raise Rejected(f"ip_version must be 'v4', 'v6', 'all' or None, not {ip_version!r}")
        if zeroconf is not None and (interfaces is not None or ip_version is not None):
            raise Rejected("pass zeroconf= or interfaces=/ip_version=, not both: a shared "
                           "Zeroconf keeps the interfaces it was opened with")
        self._interfaces = None if interfaces is None else list(interfaces)
        self._table = DiscoveryTable()
        self._lock = threading.Lock()       # the table and _closed
        self._closed = False
        self._watchers = Watchers()
        self._services: dict[str, ServiceInfo] = {}         # loop thread only
        self._announcing: dict[str, asyncio.Future[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._quiet_at = 0.0                # loop time when the last goodbye is out
        self._browser: AsyncServiceBrowser | None = None
        self._listener = _RecordListener(self)
        self._owns_zeroconf = zeroconf is None
        if zeroconf is None:
            choice = InterfaceChoice.All if interfaces is None else list(interfaces)
            try:
                zeroconf = Zeroconf(interfaces=choice, ip_version=versions[ip_version])
            except (OSError, ZeroconfError) as exc:
                raise TransportError(
                    f"cannot open mDNS sockets on {interfaces or 'every interface'}: {exc}; "
                    "pass addresses of this host's interfaces") from None
        self._zc = zeroconf
        try:
            self._op_lock = self._call(self._async_start())
        except BaseException:
            if self._owns_zeroconf:
                zeroconf.close()
            raise

    def __enter__(self) -> ZeroconfRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the Registry interface
    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None = None, lease: float = DEFAULT_LEASE,
                 meta: Mapping[str, Any] | None = None) -> Registration:
        """See ``Registry.register``; announces the name on the LAN (see Addresses)."""
        return self._call(self._async_register(
            name, reachable(addresses, self._interfaces), credential, epoch, lease, meta))

    def renew(self, name: str, *, credential: str) -> Registration:
        """See ``Registry.renew``; announces the name again, refreshing every cache."""
        return self._call(self._async_renew(name, credential))

    def unregister(self, name: str, *, credential: str) -> None:
        """See ``Registry.unregister``; sends goodbyes."""
        self._call(self._async_unregister(name, credential))

    def lookup(self, name: str) -> Registration:
        """See ``Registry.lookup``; answered from the table, without network traffic."""
        with self._lock:
            self._check_open()
            return self._table.lookup(name, time.monotonic())

    def names(self, pattern: str = "**") -> list[Registration]:
        """See ``Registry.names``; answered from the table."""
        with self._lock:
            self._check_open()
            return self._table.names(pattern, time.monotonic())

    def watch(self, callback: Callable[[str, Registration | None], None]
              ) -> Callable[[], None]:
        """See ``Registry.watch``; callbacks run on this registry's watch thread."""
        with self._lock:
            self._check_open()
        return self._watchers.subscribe(callback)

    def close(self) -> None:
        """Send goodbyes for this process's names, stop browsing and join the threads
        (the zeroconf loop's too, unless it was passed in). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._call(self._async_stop())
        except Closed:
            pass                            # a shared Zeroconf closed first: nothing to withdraw
        finally:
            if self._owns_zeroconf:
                self._zc.close()
            self._watchers.close()

    # -- on the event loop
    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._zc.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
            raise Closed("the Zeroconf instance of this registry is closed; create a new "
                         "ZeroconfRegistry")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise PosaError("ZeroconfRegistry's methods wait for the zeroconf event loop: "
                            "call them from another thread than that loop's")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Timeout(f"the mDNS event loop did not answer within {CALL_TIMEOUT}s; "
                          "the host may be overloaded: try again") from None

    async def _async_start(self) -> asyncio.Lock:
        self._zc.async_add_listener(self._listener, None)
        self._browser = AsyncServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_browse])
        return asyncio.Lock()

    async def _async_stop(self) -> None:
        async with self._op_lock:
            if self._timer is not None:
                self._timer.cancel()
            self._zc.async_remove_listener(self._listener)
            if self._browser is not None:
                await self._browser.async_cancel()
            for name in list(self._services):
                self._withdraw(name, goodbye=True)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._quiet_at - loop.time()))

    async def _async_register(self, name: str, addresses: Sequence[str], credential: str,
                              epoch: int | None, lease: float,
                              meta: Mapping[str, Any] | None) -> Registration:
        async with self._op_lock:
            with self._lock:
                self._check_open()
                registration, changes = self._table.register(
                    name, addresses, credential=credential, epoch=epoch, lease=lease,
                    meta=meta, now=time.monotonic())
                info = _service_info(registration, self._table.txt(name))
            announcing = self._announcing.pop(name, None)
            if announcing is not None:
                announcing.cancel()
            try:
                if name in self._services:
                    task = await self._zc.async_update_service(info)
                else:
                    task = await self._zc.async_register_service(
                        info, cooperating_responders=True)   # epochs settle conflicts
            except ZeroconfError as exc:
                raise Closed(f"cannot announce {name!r}: {exc!r}; the Zeroconf instance "
                             "of this registry is shutting down") from None
            self._services[name] = info
            self._announcing[name] = asyncio.ensure_future(task)
            self._after(changes)
            return registration

    async def _async_renew(self, name: str, credential: str) -> Registration:
        async with self._op_lock:
            with self._lock:
                self._check_open()
                registration = self._table.renew(name, credential=credential,
                                                 now=time.monotonic())
            info = self._services.get(name)
            if info is not None:
                self._zc.async_send(self._zc.generate_service_broadcast(info, None))
            self._schedule()
            return registration

    async def _async_unregister(self, name: str, credential: str) -> None:
        async with self._op_lock:
            with self._lock:
                self._check_open()
                changes = self._table.unregister(name, credential=credential,
                                                 now=time.monotonic())
            if changes:
                self._withdraw(name, goodbye=True)
            self._after(changes)

    def _withdraw(self, name: str, *, goodbye: bool) -> None:
        """Stop announcing ``name``; with ``goodbye``, tell the LAN (three times)."""
        announcing = self._announcing.pop(name, None)
        if announcing is not None:
            announcing.cancel()
        info = self._services.pop(name, None)
        if info is None:
            return
        self._zc.registry.async_remove(info)
        if goodbye:
            packet = self._zc.generate_service_broadcast(info, 0)
            self._zc.async_send(packet)
            loop = asyncio.get_running_loop()
            for delay in GOODBYE_REPEATS:
                loop.call_later(delay, self._zc.async_send, packet)
            self._quiet_at = loop.time() + GOODBYE_REPEATS[-1]

    def _on_records(self, now: float, records: list[RecordUpdate]) -> None:
        changes: list[Change] = []
        outbid: list[str] = []
        with self._lock:
            if self._closed:
                return
            for update in records:
                record = update.new
                if (not isinstance(record, DNSText) or (record.ttl and record.is_expired(now))
                        or not record.name.lower().endswith(_SUFFIX)):
                    continue        # not ours, or the cache's cleanup: the table keeps time
                got, lost = self._table.receive(record.name[:-len(_SUFFIX)], record.text,
                                                record.ttl, record.created / 1000)
                changes += got
                outbid += lost
        for name in outbid:
            self._withdraw(name, goodbye=False)
        self._after(changes)

    def _on_browse(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        """A new instance in the browse: ask for its TXT if no answer carried it."""
        if state_change is ServiceStateChange.Added and name.lower().endswith(_SUFFIX):
            with self._lock:
                known = self._table.knows(name[:-len(_SUFFIX)], time.monotonic())
            if not known:
                self._query(name)

    def _on_tick(self) -> None:
        self._timer = None
        with self._lock:
            if self._closed:
                return
            tick = self._table.tick(time.monotonic())
        for name in tick.lapsed:
            self._withdraw(name, goodbye=True)
        for name in tick.queries:
            self._query(instance_label(name) + _SUFFIX)
        self._after(tick.changes)

    def _query(self, instance: str) -> None:
        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(instance, _TYPE_TXT, _CLASS_IN))
        self._zc.async_send(out)

    def _after(self, changes: list[Change]) -> None:
        self._watchers.publish(changes)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            deadline = None if self._closed else self._table.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.monotonic()), self._on_tick)

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this ZeroconfRegistry is closed; create a new one")
