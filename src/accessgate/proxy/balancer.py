"""The client's real address behind a load balancer: the PROXY protocol, from trusted balancers only.

Behind HAProxy (deploy/haproxy) every connection comes from the balancer,
so `net:` members and the audit record's `client_ip` would name it.  HAProxy
(`send-proxy-v2`) starts each connection with a PROXY protocol header that
names the client; mitmproxy reads no such header, so accessgate does:

- `accessgate_trusted_proxies` lists the balancers' addresses (CIDRs).  A
  connection from one of them must start with a PROXY header, version 1
  (text) or 2 (binary); the client address it names becomes the
  connection's `peername`, which identities, audit records and mitmproxy's
  own log lines read.  The rest of the bytes go to the layer mitmproxy
  chooses as if the header had never been there.  A trusted peer that sends
  anything else, or a header that does not parse, has its connection closed
  (logged as `proxy_header_refused`, counted in
  `accessgate_proxy_header_refused_total`).  A header that says LOCAL or
  UNKNOWN (HAProxy's health checks) keeps the balancer's own address.
- From any other peer a PROXY header is not believed: mitmproxy reads it
  as the start of an HTTP request, which it is not, and refuses it.

The header is read only in the explicit proxy modes (regular, upstream),
where no layer reads the client's bytes before the first `next_layer`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import modes

from accessgate.oplog import get_logger
from accessgate.proxy.identity import client_ip

log = get_logger("addon")

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest version 1 header, CRLF included (the specification's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and transport, length
# Address block sizes by family (INET, INET6, UNIX), for the PROXY command.
_V2_ADDRESSES = {0x1: 12, 0x2: 36, 0x3: 216}
MODES = ("regular", "upstream")  # where the header can be read first

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class MalformedHeader(ValueError):
    """The bytes are not a PROXY protocol header accessgate accepts; the message says why."""


class Header(NamedTuple):
    length: int  # bytes the header takes at the start of the stream
    source: tuple[str, int] | None  # the client; None: LOCAL / UNKNOWN, keep the peer's own address


def read_header(data: bytes) -> Header | None:
    """The PROXY header at the start of `data`; None while more bytes are needed; MalformedHeader if none can come."""
    if data[:1] == b"P" or not data:
        return _read_v1(data)
    if data[:1] == b"\r":
        return _read_v2(data)
    raise MalformedHeader("the connection does not start with a PROXY protocol header")


def _read_v1(data: bytes) -> Header | None:
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise MalformedHeader("the connection does not start with a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise MalformedHeader("a version 1 PROXY header without CRLF within 107 bytes")
        return None
    parts = data[:end].split(b" ")
    if parts[1:2] == [b"UNKNOWN"]:
        return Header(end + 2, None)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise MalformedHeader("a version 1 PROXY header is PROXY TCP4|TCP6 SOURCE DEST SPORT DPORT")
    family = ipaddress.IPv4Address if parts[1] == b"TCP4" else ipaddress.IPv6Address
    try:
        if b"%" in parts[2] + parts[3]:
            raise ValueError("a scope is no part of a client address")
        source = family(parts[2].decode("ascii"))
        family(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise MalformedHeader(f"a version 1 PROXY header with an address that is not {parts[1].decode()}") from None
    ports = [_port(p) for p in parts[4:6]]
    return Header(end + 2, (_plain(source), ports[0]))


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise MalformedHeader("a version 1 PROXY header with a port that is not 0-65535")
    return int(text)


def _read_v2(data: bytes) -> Header | None:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise MalformedHeader("the connection does not start with a PROXY protocol header")
    if len(data) < V2_FIXED:
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise MalformedHeader(f"a binary PROXY header of version {version_command >> 4}, not 2")
    command, family, transport = version_command & 0xF, family_transport >> 4, family_transport & 0xF
    if command not in (0x0, 0x1):
        raise MalformedHeader(f"a binary PROXY header with command {command}, neither LOCAL nor PROXY")
    if len(data) < V2_FIXED + length:
        return None
    total = V2_FIXED + length
    if command == 0x0 or family in (0x0, 0x3):  # LOCAL (a health check), UNSPEC, UNIX: the peer itself
        return Header(total, None)
    needed = _V2_ADDRESSES.get(family)
    if needed is None:
        raise MalformedHeader(f"a binary PROXY header with address family {family}")
    if transport != 0x1:
        raise MalformedHeader("a binary PROXY header for another transport than TCP")
    if length < needed:
        raise MalformedHeader("a binary PROXY header shorter than its addresses")
    body = data[V2_FIXED:]
    if family == 0x1:
        source = ipaddress.IPv4Address(body[:4])
        (port,) = struct.unpack_from("!H", body, 8)
    else:
        source = ipaddress.IPv6Address(body[:16])
        (port,) = struct.unpack_from("!H", body, 32)
    return Header(total, (_plain(source), port))


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """IPv4-mapped IPv6 as IPv4, as identity.client_ip reads it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """`accessgate_trusted_proxies` as networks; ValueError naming the value and what to write instead."""
    networks = []
    for value in values:
        text = value.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):
                net = ipaddress.ip_network(text, strict=False)
                hint = f"; write {net} for the network or {text.split('/')[0]}/{net.max_prefixlen} for one address"
            raise ValueError(f"accessgate_trusted_proxies: {value!r} is not an address or a CIDR network{hint}") \
                from None
    return tuple(networks)


class ReadProxyHeader(layer.Layer):
    """Reads the PROXY header that starts a trusted balancer's connection, then hands the rest on.

    It leaves the context's stack at once (as a NextLayer does), so the
    layer chosen after it sees the proxy mode's layer alone, as it would
    without a balancer in front.
    """

    def __init__(self, context, refused) -> None:
        super().__init__(context)
        self.context.layers.remove(self)
        self._buffer = b""
        self._refused = refused

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        client = self.context.client
        if isinstance(event, events.DataReceived) and event.connection is client:
            self._buffer += event.data
            try:
                header = read_header(self._buffer)
            except MalformedHeader as exc:
                self._refused(client, str(exc))
                self._handle_event = self._done  # type: ignore[method-assign]
                yield commands.CloseConnection(client)
                return
            if header is None:
                return  # more of the header is on its way
            if header.source is not None:
                client.peername = header.source
            rest, self._buffer = self._buffer[header.length:], b""
            child = layer.NextLayer(self.context)  # what mitmproxy would have chosen without the header
            self._handle_event = child.handle_event  # type: ignore[method-assign]
            yield from child.handle_event(events.Start())
            if rest:
                yield from child.handle_event(events.DataReceived(client, rest))
        elif isinstance(event, events.ConnectionClosed) and event.connection is client:
            self._handle_event = self._done  # type: ignore[method-assign]
            yield commands.CloseConnection(client)
        else:
            yield from ()  # Start: the header comes with the first bytes

    def _done(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from ()


class TrustedBalancers:
    """`accessgate_trusted_proxies`: which peers must, and alone may, say who the client is."""

    def __init__(self, metrics=None) -> None:
        self.networks: tuple[Network, ...] = ()
        self._metrics = metrics
        self._read: set[str] = set()  # trusted connections whose header is read (or being read), by id

    def configure(self, values: Sequence[str], modes_in_use: Sequence[str]) -> None:
        networks = parse_networks(values)
        if networks:
            other = [m for m in modes_in_use if m.split(":", 1)[0].split("@", 1)[0] not in MODES]
            if other:
                raise ValueError(
                    f"accessgate_trusted_proxies: the PROXY protocol is read only in regular and upstream mode, "
                    f"not in {', '.join(other)}; leave the option empty for those modes")
        self.networks = networks

    def trusts(self, peername) -> bool:
        address = client_ip(peername)
        return address is not None and any(address in network for network in self.networks)

    def claim(self, nextlayer: layer.NextLayer) -> bool:
        """Read the header first if this is a trusted balancer's new connection; True if so.

        A trusted connection's first `next_layer` is claimed here, so any
        later one on it comes after the header.  The stack cannot tell: the
        layer mitmproxy chose on the header's bytes (one, or TLS's two) has
        already added itself to it.
        """
        if not self.networks:
            return False
        context = nextlayer.context
        client = context.client
        if client.id in self._read or not isinstance(context.layers[0], (modes.HttpProxy, modes.HttpUpstreamProxy)):
            return False
        if not self.trusts(client.peername):
            return False
        self._read.add(client.id)
        chosen = nextlayer.layer
        if chosen is not None:
            # Chosen on the header's bytes: it and the layers it made leave the stack.
            del context.layers[1:]
        nextlayer.layer = ReadProxyHeader(context, self._refused)
        return True

    def forget(self, client_id: str) -> None:
        """The connection ended."""
        self._read.discard(client_id)

    def _refused(self, client, why: str) -> None:
        log.warning("proxy_header_refused", peer=str(client_ip(client.peername)), error=why)
        if self._metrics is not None:
            try:
                self._metrics.proxy_header_refused.inc()
            except Exception:
                log.exception("ignored_error")
