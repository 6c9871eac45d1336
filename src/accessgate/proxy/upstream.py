"""The proxy's own host is no destination: no upstream connection to loopback,
link-local or unspecified addresses, or to an address of this host.

A forward proxy connects wherever its clients ask.  Unchecked, an employee
reaches through it whatever listens only on the proxy host (the metrics
endpoint, a local Redis or Grafana) and a cloud's metadata service
(169.254.169.254, link-local), whatever the policy says about sites; Squid's
default configuration denies `to_localhost` for the same reason.

The check runs on the address mitmproxy actually connected to, so a name
that resolves to such an address (or resolves to one the second time, DNS
rebinding) is caught too; the connection is closed before a byte is sent
upstream.  An address literal is refused before connecting.  Operators name
what may still be reached in `accessgate_upstream_allow`.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from mitmproxy.proxy import server_hooks

from accessgate.oplog import get_logger
from accessgate.proxy.gate import connection_io
from accessgate.policy.model import IPAddress, IPNetwork

LOOPBACK = "loopback"
LINK_LOCAL = "link-local"
UNSPECIFIED = "unspecified"
MULTICAST = "multicast"
THIS_HOST = "this-host"
REASONS = (LOOPBACK, LINK_LOCAL, UNSPECIFIED, MULTICAST, THIS_HOST)

log = get_logger("addon")


def parse_allowed(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The networks of `accessgate_upstream_allow`; ValueError names a bad entry."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"accessgate_upstream_allow: {value!r} is not an address or network (CIDR), e.g. 127.0.0.1/32"
            ) from None
    return tuple(networks)


def own_address_reason(ip: IPAddress, is_bound_here: Callable[[IPAddress], bool]) -> str | None:
    """Why `ip` belongs to the proxy's own host (or no host), or None for an address elsewhere."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return LOOPBACK
    if ip.is_link_local:
        return LINK_LOCAL
    if ip.is_unspecified:
        return UNSPECIFIED
    if ip.is_multicast:
        return MULTICAST
    if is_bound_here(ip):
        return THIS_HOST
    return None


class BoundHere:
    """Whether an address is one of this host's own interface addresses.

    Read from the system (psutil) at most every `REFRESH` seconds: addresses
    rarely change, and a busy proxy asks for every new upstream connection.
    """

    REFRESH = 30.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._read_at = float("-inf")
        self._own: frozenset[IPAddress] = frozenset()

    def __call__(self, ip: IPAddress) -> bool:
        now = self._clock()
        if now - self._read_at >= self.REFRESH:
            self._own = interface_addresses()
            self._read_at = now
        return ip in self._own


def interface_addresses() -> frozenset[IPAddress]:
    """Every IP address of every interface of this host."""
    import psutil

    own = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                ip = _address(entry.address)
                if ip is not None:
                    own.add(ip)
    return frozenset(own)


def _address(host: Any) -> IPAddress | None:
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return None


class UpstreamGuard:
    """Refuses upstream connections to the proxy's own host (see the module's docstring).

    `count` is told the reason of each refusal (a metric).
    """

    name = "accessgate_upstream"

    def __init__(self, count: Callable[[str], None]) -> None:
        self._count = count
        self._allowed: tuple[IPNetwork, ...] = ()
        self._bound_here = BoundHere()

    def allow(self, networks: tuple[IPNetwork, ...]) -> None:
        """Set what may still be reached (`accessgate_upstream_allow`, parsed by `parse_allowed`)."""
        self._allowed = networks

    def refusal(self, host: Any) -> str | None:
        """Why a connection to `host` (an address) is refused, or None."""
        ip = _address(host)
        if ip is None:
            return None
        reason = own_address_reason(ip, self._bound_here)
        if reason is None or any(ip in network for network in self._allowed):
            return None
        return reason

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        address = data.server.address
        reason = self.refusal(address[0]) if address else None
        if reason is not None:
            data.server.error = _message(address[0], reason)
            self._refused(address[0], reason)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        peer = data.server.peername
        reason = self.refusal(peer[0]) if peer else None
        if reason is None:
            return
        self._refused(peer[0], reason)
        # mitmproxy sends nothing before this hook returns; closing now keeps every byte from the service.
        io = connection_io(data.client, data.server)
        if io is not None and io.writer is not None:
            io.writer.close()
        data.server.error = _message(peer[0], reason)

    def _refused(self, host: Any, reason: str) -> None:
        log.warning("upstream_refused", address=str(host), reason=reason)
        try:
            self._count(reason)
        except Exception:
            log.exception("ignored_error")


def _message(host: Any, reason: str) -> str:
    return (
        f"accessgate does not connect to {host} ({reason} address of the proxy's own host); "
        "an operator may allow it in accessgate_upstream_allow"
    )
