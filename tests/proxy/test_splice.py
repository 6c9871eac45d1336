"""accessgate's own relay of a passed-through tunnel (proxy/splice.py), on real sockets on 127.0.0.1.

Each case hands one end of a real TCP connection to a `Splice` as mitmproxy
would, with bytes "held" (read by mitmproxy before the hand-off), towards a
real asyncio server; the other end is the test's client.  The end-to-end
tests (tests/e2e/test_decrypt_or_pass.py) drive the same code through
mitmdump.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from dataclasses import dataclass, field

import pytest

from accessgate.proxy.splice import HIGH_WATER, IDLE, Splice


@dataclass
class Tally:
    """What the splice told the session: bytes each way, and its end."""

    from_client: int = 0
    to_client: int = 0
    refuse_after: int | None = None  # refuse the client's bytes once this many have passed
    ended: list[str | None] = field(default_factory=list)

    def on_data(self, from_client: bool, size: int) -> bool:
        if from_client:
            if self.refuse_after is not None and self.from_client + size > self.refuse_after:
                return False
            self.from_client += size
        else:
            self.to_client += size
        return True

    def on_end(self, splice: Splice) -> None:
        self.ended.append(splice.error)


@dataclass
class Run:
    splice: Splice
    tally: Tally
    reader: asyncio.StreamReader  # the test's client
    writer: asyncio.StreamWriter
    server_got: bytearray


async def start(serve, *, held: bytes = b"", idle: float = 30.0, refuse_after: int | None = None,
                port: int | None = None) -> Run:
    """A server running `serve(reader, writer, got)`, a client, and a splice between them."""
    got = bytearray()
    if port is None:
        server = await asyncio.start_server(lambda r, w: serve(r, w, got), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
    accepted, _ = await loop.sock_accept(listener)
    listener.close()
    tally = Tally(refuse_after=refuse_after)
    splice = Splice(accepted, ("127.0.0.1", port), tally.on_data, tally.on_end, idle)
    splice.connect_server()
    if held:
        splice.held(held)
    splice.take_client()
    return Run(splice, tally, reader, writer, got)


async def record_then_answer(reader, writer, got: bytearray) -> None:
    """Reads to the client's EOF, answers with a digest of what came, then closes."""
    got += await reader.read()
    writer.write(b"got " + hashlib.sha256(bytes(got)).hexdigest().encode())
    await writer.drain()
    writer.close()


async def record(reader, writer, got: bytearray) -> None:
    """Records what comes until the client's EOF (or the splice closing it)."""
    got += await reader.read()


async def rest_until_ended(run: Run, settle: float = 0.1) -> bytes:
    """What the client still reads until its connection closes, once the splice has ended and settled."""
    rest = await asyncio.wait_for(run.reader.read(), 5)
    await ended(run)
    await asyncio.sleep(settle)
    return rest


async def ended(run: Run, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not run.tally.ended and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert run.tally.ended, "the splice never ended"


def test_held_bytes_go_first_and_a_client_half_close_still_gets_its_answer():
    async def case():
        run = await start(record_then_answer, held=b"hello from mitmproxy's buffer, ")
        run.writer.write(b"then from the client")
        run.writer.write_eof()  # the client is done sending, and waits for the answer
        answer = await asyncio.wait_for(run.reader.read(), 5)
        await ended(run)
        return run, answer

    run, answer = asyncio.run(case())
    sent = b"hello from mitmproxy's buffer, then from the client"
    assert bytes(run.server_got) == sent
    assert answer == b"got " + hashlib.sha256(sent).hexdigest().encode()
    assert (run.tally.from_client, run.tally.to_client) == (len(sent), len(answer))
    assert run.tally.ended == [None], "ended once, by both sides closing"


def test_a_server_half_close_leaves_the_client_able_to_send():
    async def serve(reader, writer, got):
        writer.write(b"greeting")
        writer.write_eof()  # the server will send no more, but still reads
        got += await reader.read()
        writer.close()

    async def case():
        run = await start(serve)
        greeting = await asyncio.wait_for(run.reader.read(), 5)  # up to the server's EOF
        run.writer.write(b"late words")
        await run.writer.drain()
        run.writer.write_eof()
        await ended(run)
        return run, greeting

    run, greeting = asyncio.run(case())
    assert greeting == b"greeting"
    assert bytes(run.server_got) == b"late words"


def test_bytes_the_session_refuses_do_not_reach_the_server_and_both_sides_close():
    async def case():
        run = await start(record_then_answer, held=b"12345", refuse_after=8)
        run.writer.write(b"67890")  # 10 bytes in all: past the limit
        await run.writer.drain()
        return run, await rest_until_ended(run)

    run, rest = asyncio.run(case())
    assert rest == b"", "the client got nothing back"
    assert bytes(run.server_got) == b"12345", "the refused bytes reached the server"
    assert run.tally.ended == [None]


def test_closing_a_splice_ends_both_connections_once():
    async def case():
        run = await start(record, held=b"x")
        run.writer.write(b"y")
        await run.writer.drain()
        await asyncio.sleep(0.1)
        run.splice.close()
        run.splice.close()
        return run, await rest_until_ended(run)

    run, rest = asyncio.run(case())
    assert rest == b"" and bytes(run.server_got) == b"xy"
    assert run.tally.ended == [None], "on_end is told once"


def test_an_idle_tunnel_is_closed_after_the_timeout():
    async def case():
        run = await start(record, idle=0.4)
        started = time.monotonic()
        run.writer.write(b"ping")
        rest = await asyncio.wait_for(run.reader.read(), 5)
        return run, rest, time.monotonic() - started

    run, rest, waited = asyncio.run(case())
    assert rest == b"" and run.tally.ended == [IDLE]
    assert 0.35 < waited < 2.0, waited


def test_a_server_that_cannot_be_reached_closes_the_client():
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead_port = s.getsockname()[1]  # closed again: nothing listens there

    async def case():
        run = await start(record_then_answer, held=b"hello", port=dead_port)
        rest = await asyncio.wait_for(run.reader.read(), 5)
        await ended(run)
        return run, rest

    run, rest = asyncio.run(case())
    assert rest == b""
    assert run.tally.ended and run.tally.ended[0].startswith("server connection failed"), run.tally.ended


def test_a_slow_client_pauses_the_server_instead_of_filling_memory():
    size = 24 * 1024 * 1024

    async def serve(reader, writer, got):
        block = bytes(range(256)) * 256  # 64 KiB
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    async def case():
        run = await start(serve)
        digest, received, most_queued = hashlib.sha256(), 0, 0
        while True:
            chunk = await asyncio.wait_for(run.reader.read(65536), 10)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            transport = run.splice.client.transport
            if transport is not None and not transport.is_closing():
                most_queued = max(most_queued, transport.get_write_buffer_size())
            await asyncio.sleep(0.0005)  # a client slower than the server
        run.writer.close()  # the server half-closed; the client closes its half as it is done
        await ended(run)
        return run, received, digest.hexdigest(), most_queued

    run, received, digest, most_queued = asyncio.run(case())
    expected = hashlib.sha256((bytes(range(256)) * 256) * (size // 65536)).hexdigest()
    assert (received, digest) == (size, expected)
    assert run.tally.to_client == size
    # One read of the server (asyncio reads up to 256 KiB) past the high-water mark at most.
    assert most_queued <= HIGH_WATER + 256 * 1024, most_queued


@pytest.mark.parametrize("held", [b"", b"early"], ids=["nothing-held", "bytes-held"])
def test_a_client_that_hangs_up_at_once_ends_the_splice(held):
    async def serve(reader, writer, got):
        got += await reader.read()
        writer.close()

    async def case():
        run = await start(serve, held=held)
        run.writer.close()
        await ended(run)
        await asyncio.sleep(0.1)
        return run

    run = asyncio.run(case())
    assert bytes(run.server_got) == held
    assert run.tally.ended == [None]


def test_a_splice_closed_while_its_server_is_connecting_sends_the_server_nothing():
    async def case():
        run = await start(record, held=b"never sent")
        run.splice.close()  # before the server connection (scheduled, not yet made) completes
        return run, await rest_until_ended(run, settle=0.2)

    run, rest = asyncio.run(case())
    assert rest == b"" and bytes(run.server_got) == b""
    assert run.tally.ended == [None]
