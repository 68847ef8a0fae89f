"""The addresses other hosts can use to reach this one.

A listener bound to a wildcard host (``tcp://0.0.0.0:P``, ``tcp://[::]:P``,
``zmq+tcp://*:P``) receives on every interface, but its address is no use to
another host: there, ``0.0.0.0`` means that host itself.  Before a registry that
other hosts read (zeroconf on the LAN, a dispatcher) records such an address,
``reachable`` puts in its place one address per interface address of its family:
every non-loopback one (IPv6 link-local ones left out: they need a scope), the
loopback address only when there is no other.  Every other address is kept as it
is: a listener on ``127.0.0.1`` is reachable from this host only, and saying
otherwise would be a lie.  Interfaces come in the order the system lists them.
``dispatcher_addresses`` reads the dispatchers a client is given.

``ifaddr`` (which loads ``ctypes``, ``platform`` and ``tempfile``: about 30 ms of
a process's start-up) is imported by the first wildcard address, not by every
process that imports a registry client.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from posa.errors import Rejected
from posa.naming.registration import MAX_ADDRESSES

__all__ = ["reachable", "interface_addresses", "dispatcher_addresses"]

_WILDCARDS = {"0.0.0.0": 4, "::": 6, "*": 4}


def interface_addresses(version: int) -> list[str]:
    """This host's addresses of IP ``version`` (4 or 6): the non-loopback ones
    (without IPv6 link-local ones), else the loopback ones."""
    import ifaddr

    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address.version == version and not address.is_link_local \
                    and address not in found:
                found.append(address)
    outside = [a for a in found if not a.is_loopback]
    return [str(a) for a in (outside or [a for a in found if a.is_loopback])]


def _wildcard(address: str) -> tuple[str, int, int] | None:
    """(scheme, port, IP version) if ``address`` is a tcp-ish URI on a wildcard host."""
    scheme, sep, rest = address.partition("://")
    if not sep or not (scheme == "tcp" or scheme.endswith("+tcp")):
        return None
    host, colon, port = rest.rpartition(":")
    version = _WILDCARDS.get(host.strip("[]")) if colon else None
    if version is None or not port.isdigit():
        return None
    return scheme, int(port), version


def reachable(addresses: Sequence[str], interfaces: Sequence[str] | None = None
              ) -> Sequence[str]:
    """``addresses`` as other hosts can use them: each address on a wildcard host
    becomes one per interface address (``interfaces``, the IP addresses a registry
    was told to use, or else every interface of this host, as ``interface_addresses``
    says); the rest are kept. Duplicates are dropped, at most ``MAX_ADDRESSES``
    kept. Anything that is not a list of strings is returned as it is (the
    registry's checks say what is wrong with it)."""
    if isinstance(addresses, (str, bytes)) or not isinstance(addresses, Sequence) \
            or not all(isinstance(a, str) for a in addresses) \
            or not any(_wildcard(a) for a in addresses):
        return addresses
    out: list[str] = []
    for address in addresses:
        found = _wildcard(address)
        if found is None:
            expanded = [address]
        else:
            scheme, port, version = found
            ips = ([ip for ip in interfaces if _version(ip) == version]
                   if interfaces is not None else interface_addresses(version))
            expanded = [f"{scheme}://{ip if version == 4 else f'[{ip}]'}:{port}"
                        for ip in ips] or [address]
        out += [a for a in expanded if a not in out]
    return out[:MAX_ADDRESSES]


def _version(ip: str) -> int | None:
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return None


def dispatcher_addresses(address: str | Sequence[str]) -> list[str]:
    """The dispatchers of ``address``: one, several comma-separated, or a list."""
    items = [address] if isinstance(address, str) else list(address)
    found = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not found or not all(isinstance(a, str) and "://" in a for a in found):
        raise Rejected(f"dispatcher address {address!r} is not a transport URI or a list "
                       "of them; write e.g. tcp://10.0.0.1:7000,tcp://10.0.0.2:7000")
    return found
