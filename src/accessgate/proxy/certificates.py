"""What a server's certificate names, read before a connection to it is passed through unread.

A passed-through connection can carry requests for any site its server
serves: a browser reuses an HTTP/2 connection for every name the
certificate covers, and a client can front a domain (a harmless SNI, a
governed `Host` inside).  So before accessgate passes a connection through
it reads the certificate that the server shows for that SNI, as a browser
would (its own short TLS handshake, no request), and the engine decides
every name in it (`decision.inspection.serves_more`).

- Where: the address the connection will go to.  With mitmproxy's eager
  connection strategy that is the server it is already connected to;
  otherwise the addons' `server_connect` hooks are asked, as mitmproxy asks
  them before it connects (routing addons, its own loop check), the name is
  resolved once, and the connection is pinned to that address, so that it
  goes to the server whose certificate was read.  An address the upstream
  guard refuses (upstream.py: the proxy's own host) is not read at all.
- Kept for `KEEP_SECONDS` per (name, port, SNI); a server that cannot be
  read is "unknown" (its connection is decrypted) and asked again after
  `RETRY_SECONDS`.  At most `MAX_PENDING` reads run at once, each bounded
  by `TIMEOUT_SECONDS`; a connection that finds no room is decrypted.
- Upstream-proxy mode (`via`) is not read: such connections are decrypted.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any, Callable, NamedTuple

from mitmproxy import connection, ctx
from mitmproxy.proxy import server_hooks

from accessgate.decision.inspection import Server
from accessgate.oplog import get_logger

KEEP_SECONDS = 300.0
RETRY_SECONDS = 60.0
TIMEOUT_SECONDS = 5.0
MAX_PENDING = 64
MAX_KEPT = 10_000

log = get_logger("addon")

Key = tuple[str, int, str]  # (server name as the client gave it, port, SNI)


class Known(NamedTuple):
    expires: float  # time.monotonic()
    address: tuple[str, int] | None  # where the connection goes (None: not pinned)
    server: Server | None  # None: could not be read


class ServerCertificates:
    """Certificates read from servers, kept a while, read at most once at a time per server."""

    def __init__(self, may_connect: Callable[[str], bool] = lambda ip: True) -> None:
        self._may_connect = may_connect  # the upstream guard: this proxy connects to this address
        self._known: dict[Key, Known] = {}
        self._pending: dict[Key, asyncio.Future] = {}
        self.reads = 0  # handshakes made (for tests and the log)

    def key(self, context: Any, sni: str) -> Key | None:
        address = context.server.address
        if not address:
            return None
        return (str(address[0]).lower(), int(address[1]), sni)

    def known(self, context: Any, sni: str) -> Known | None:
        """A recent read of the server this connection goes to; None when there is none or it failed."""
        key = self.key(context, sni)
        found = self._known.get(key) if key is not None else None
        if found is None or found.expires < time.monotonic() or found.server is None:
            return None
        return found if _same_peer(context, found) else None

    async def read(self, context: Any, sni: str) -> Known | None:
        """Read the certificate of the server this connection goes to (None: it could not be read)."""
        key = self.key(context, sni)
        if key is None:
            return None
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= MAX_PENDING:
                return None
            pending = asyncio.ensure_future(self._read(context, key))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        found = await asyncio.shield(pending)
        return found if found.server is not None and _same_peer(context, found) else None

    async def _read(self, context: Any, key: Key) -> Known:
        try:
            address = await asyncio.wait_for(_destination(context), TIMEOUT_SECONDS)
            server = None
            if address is not None and not self._may_connect(address[0]):
                address = None  # the proxy's own host: not read, so decrypted, and refused when connected
            if address is not None:
                server = await asyncio.wait_for(_handshake(address, key[2]), TIMEOUT_SECONDS)
        except Exception as exc:  # any failure: the server is unknown, and its connection decrypted
            log.info("server_certificate_unread", port=key[1], error=type(exc).__name__)
            address, server = None, None
        self.reads += 1
        keep = KEEP_SECONDS if server is not None else RETRY_SECONDS
        found = Known(time.monotonic() + keep, address, server)
        if len(self._known) >= MAX_KEPT:
            self._known.clear()
        self._known[key] = found
        return found


async def _destination(context: Any) -> tuple[str, int] | None:
    """The address the connection will go to, as mitmproxy would connect it."""
    server = context.server
    if server.connected and server.peername:
        return (str(server.peername[0]), int(server.peername[1]))
    if server.via is not None:
        return None  # an upstream proxy connects it: its certificate is not ours to read
    probe = connection.Server(address=server.address, transport_protocol="tcp")
    data = server_hooks.ServerConnectionHookData(client=context.client, server=probe)
    await ctx.master.addons.handle_lifecycle(server_hooks.ServerConnectHook(data))
    if probe.error or not probe.address or probe.via is not None:
        return None
    host, port = str(probe.address[0]), int(probe.address[1])
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return (str(infos[0][4][0]), port)


async def _handshake(address: tuple[str, int], sni: str) -> Server:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # the names are what matters here, not whom the CA vouches for
    tls.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.open_connection(*address, ssl=tls, server_hostname=sni or None)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return Server(certificate_names(der) if der else (), address[0])


def certificate_names(der: bytes) -> tuple[str, ...]:
    """The DNS names and addresses a certificate is for (its subject's CN when it has none)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID, NameOID

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
        if names:
            return tuple(dict.fromkeys(names))
    return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def _same_peer(context: Any, found: Known) -> bool:
    """An eagerly opened connection is to the server read, or the read does not apply."""
    server = context.server
    if not (server.connected and server.peername) or found.address is None:
        return True
    return str(server.peername[0]) == found.address[0]


def pin(context: Any, found: Known) -> None:
    """Send a connection not yet opened to the address whose certificate was read
    (it is passed through: another address could be another server)."""
    server = context.server
    if not server.connected and found.address is not None:
        server.address = found.address
