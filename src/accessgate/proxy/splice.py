"""A passed-through TLS tunnel, relayed by accessgate itself once it is decided.

Passing a tunnel through saves the two TLS handshakes and the HTTP parsing,
but a relay inside mitmproxy still costs what every connection costs: the
server connection's three hooks (each offered to every addon), its layer
stack and tasks, and a trip through the layers for every chunk each way.
For a connection that carries one request that is a good part of its cost.
So once a tunnel is decided to pass through to a server whose address is
known (the one whose certificate was read, certificates.py), accessgate
takes the client's socket over, as Squid's splice hands a connection to the
kernel:

1. mitmproxy's reading of the client socket is paused and the socket
   duplicated; the bytes mitmproxy read already (the ClientHello, and any
   that came with or after it) reach `HandOff`, the layer put where
   mitmproxy's relay would have gone, which passes them on in order;
2. mitmproxy then sees its end of the client close, as if the client had
   hung up, and closes its descriptor; the duplicate keeps the connection;
3. `Splice` copies bytes between client and server with two asyncio
   protocols: counted for the session (`on_data`, which refuses them once
   the tunnel is closed), half-closes passed on, reading paused while the
   other side cannot keep up, an idle tunnel closed after `tcp_timeout`.

Where any of this is not as expected (no asyncio socket behind the client,
a server connection mitmproxy opened already), mitmproxy relays the tunnel
as before (`take_over` returns None).  mitmproxy's server hooks do not run
for a spliced tunnel: the address was decided on, guarded and read before.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, Callable

from mitmproxy import ctx
from mitmproxy.proxy import commands, events, layer

from accessgate.oplog import get_logger
from accessgate.proxy.gate import connection_io

log = get_logger("addon")

OnData = Callable[[bool, int], bool]  # (from the client, size) -> keep relaying
OnEnd = Callable[["Splice"], None]

HIGH_WATER = 256 * 1024  # bytes queued towards one side before the other side's reading pauses
CONNECT_TIMEOUT = 30.0  # seconds to connect the server; the client is not read meanwhile
IDLE = "idle"
TCP_TIMEOUT_11 = 600.0  # mitmproxy 11's fixed idle timeout for TCP; 12 has the tcp_timeout option


class Splice:
    """One tunnel's two sockets and the bytes between them.

    Pure asyncio: made inside a running loop; `connect_server` and
    `take_client` start it, `close` ends it, `on_end` is told once.
    """

    def __init__(self, client: socket.socket, address: tuple[str, int], on_data: OnData, on_end: OnEnd,
                 idle_timeout: float) -> None:
        self._client_sock: socket.socket | None = client  # until it is taken
        self.address = address
        self._on_data = on_data
        self._on_end = on_end
        self._idle_timeout = idle_timeout
        self.client = _End(self, from_client=True)
        self.server = _End(self, from_client=False)
        self._loop = asyncio.get_running_loop()
        self._last_active = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self.ended = False
        self.error: str | None = None  # why it ended, when not by either side closing

    # -- starting -----------------------------------------------------------------------

    def connect_server(self) -> None:
        asyncio.ensure_future(self._connect_server())

    async def _connect_server(self) -> None:
        try:
            await asyncio.wait_for(self._loop.create_connection(lambda: self.server, *self.address),
                                   CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            self.server.expected = False
            self._fail(f"server connection failed: {type(exc).__name__}")

    def held(self, data: bytes) -> None:
        """Bytes mitmproxy read from the client before the hand-off: they go first."""
        self._pass(self.client, data)

    @property
    def client_taken(self) -> bool:
        """The client is the splice's to read (or gone): mitmproxy has let go of it."""
        return self._client_sock is None

    def take_client(self) -> None:
        """mitmproxy has let go of the client: read it from here on."""
        sock, self._client_sock = self._client_sock, None
        if sock is not None:
            asyncio.ensure_future(self._take_client(sock))

    async def _take_client(self, sock: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: self.client, sock)
        except OSError as exc:
            sock.close()
            self.client.expected = False
            self._fail(f"client lost: {type(exc).__name__}")
            return
        self._idle = self._loop.call_later(self._idle_timeout, self._check_idle)

    # -- relaying ------------------------------------------------------------------------

    def _pass(self, source: _End, data: bytes) -> None:
        self._last_active = self._loop.time()
        if not self._on_data(source.from_client, len(data)):
            self.close()  # closed by accessgate: these bytes go nowhere
            return
        self._other(source).write(data)

    def _other(self, end: _End) -> _End:
        return self.server if end is self.client else self.client

    def connected(self, end: _End) -> None:
        if self.ended or not end.expected:
            end.transport.abort()  # the splice was closed while this side was connecting
            return
        other = self._other(end)
        if end is self.client and other.transport is None:
            end.transport.pause_reading()  # until the server is there to take it
        elif end is self.server and other.transport is not None and not other.closed:
            other.transport.resume_reading()
        end.flush()
        if other.closed:
            end.transport.close()  # the other side is gone: what it sent is passed on, then this one goes

    def eof(self, end: _End) -> None:
        """`end` will send no more: tell the other side, keep the other way open."""
        self._other(end).write_eof()

    def lost(self, end: _End) -> None:
        other = self._other(end)
        if other.transport is not None and not other.closed:
            other.transport.close()  # what it still has to send goes first
        if self.client.done and self.server.done:
            self._finish()

    def pause(self, end: _End, paused: bool) -> None:
        """`end` has too much queued to write: stop reading the other side until it drains."""
        other = self._other(end)
        if other.transport is not None and not other.closed:
            (other.transport.pause_reading if paused else other.transport.resume_reading)()

    def _check_idle(self) -> None:
        idle = self._loop.time() - self._last_active
        if idle >= self._idle_timeout:
            self._fail(IDLE)
        elif not self.ended:
            self._idle = self._loop.call_later(self._idle_timeout - idle, self._check_idle)

    # -- ending -------------------------------------------------------------------------------

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.close()

    def close(self) -> None:
        """End the tunnel now, both sides, what is queued unsent."""
        if self._client_sock is not None:
            self._client_sock.close()
            self._client_sock = None
        for end in (self.client, self.server):
            if end.transport is None:
                end.expected = False  # a late connection is aborted when it comes (connected)
            elif not end.closed:
                end.transport.abort()
        if self.client.done and self.server.done:
            self._finish()

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._idle is not None:
            self._idle.cancel()
        try:
            self._on_end(self)
        except Exception:
            log.exception("ignored_error")


class _End(asyncio.Protocol):
    """One side of a splice: its transport, and what waits to be written to it."""

    def __init__(self, splice: Splice, from_client: bool) -> None:
        self.splice = splice
        self.from_client = from_client
        self.transport: Any = None  # asyncio.Transport once connected
        self.expected = True  # not connected yet, but it will be
        self.closed = False
        self._pending: list[bytes] = []  # written before it was connected
        self._eof_pending = False
        self._eof_sent = False
        self._eof_received = False

    @property
    def done(self) -> bool:
        """Closed, or never to be connected: nothing more will pass through it."""
        return self.closed or (self.transport is None and not self.expected)

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self._pending.append(data)
        elif not self.closed:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is None:
            self._eof_pending = True
            return
        if self.closed or self._eof_sent or self.transport.is_closing():
            return
        self.transport.write_eof()
        self._eof_sent = True
        if self._eof_received:
            self.transport.close()  # both ways are done

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for data in pending:
            self.transport.write(data)
        if self._eof_pending:
            self.write_eof()

    # asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.splice.connected(self)

    def data_received(self, data: bytes) -> None:
        self.splice._pass(self, data)

    def eof_received(self) -> bool:
        self._eof_received = True
        self.splice.eof(self)
        if self._eof_sent:
            return False  # both ways are done: asyncio closes it
        return True  # half-closed: the other way may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.splice.lost(self)

    def pause_writing(self) -> None:
        self.splice.pause(self, True)

    def resume_writing(self) -> None:
        self.splice.pause(self, False)


class HandOff(layer.Layer):
    """Where mitmproxy's relay would be: passes on what mitmproxy holds, then lets the client go."""

    def __init__(self, context, splice: Splice) -> None:
        super().__init__(context)
        self.splice = splice

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        client = self.context.client
        if isinstance(event, events.DataReceived) and event.connection is client:
            self.splice.held(event.data)
        elif isinstance(event, events.ConnectionClosed) and event.connection is client:
            # Everything mitmproxy read has been passed on: the rest is the splice's to read.
            self.splice.take_client()
            yield commands.CloseConnection(client)
        yield from ()


def take_over(context, address: tuple[str, int], on_data: OnData, on_end: OnEnd) -> HandOff | None:
    """The layer that hands `context`'s client to a new `Splice` to `address`; None: mitmproxy keeps it."""
    if context.server.connected:
        return None  # mitmproxy connected the server already (connection_strategy=eager): it relays
    io = connection_io(context.client)
    reader, writer = (io.reader, io.writer) if io is not None else (None, None)
    if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
        return None  # not a socket mitmproxy reads through asyncio (WireGuard, local mode)
    transport = writer.transport
    raw = transport.get_extra_info("socket")
    if raw is None or transport.is_closing() or transport.get_write_buffer_size():
        return None  # (bytes mitmproxy still has to send would go out after the server's)
    if getattr(reader, "_paused", False):
        return None  # a reader paused by its own buffer resumes its transport when read: two readers
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    sock.setblocking(False)
    transport.pause_reading()
    reader.feed_eof()  # mitmproxy reads what it holds, then sees the client "close"
    splice = Splice(sock, address, on_data, on_end, float(getattr(ctx.options, "tcp_timeout", TCP_TIMEOUT_11)))
    splice.connect_server()
    return HandOff(context, splice)
