"""A TCP backend for HAProxy tests that reads the PROXY v2 header and says who connected.

    with WhoAmI("proxy1") as backend:      # backend.port on 127.0.0.1
        ...  # a client through HAProxy writes a line, reads "proxy1 127.0.0.7\\n"

It stands in for an accessgate proxy where only the routing matters, and
parses the header on its own (not with accessgate's code), so that the
shipped haproxy.cfg is checked against the specification.  Connections
that carry a LOCAL header (HAProxy's health checks) are counted in
`checks`; a connection without a valid header gets "no-proxy-header".
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _read_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_v2(conn: socket.socket) -> str | None:
    """The client address of the v2 header at the start of `conn`; None for LOCAL; ValueError if none."""
    head = _read_exactly(conn, 16)
    if head[:12] != SIGNATURE or head[12] >> 4 != 2:
        raise ValueError("no PROXY v2 header")
    (length,) = struct.unpack("!H", head[14:16])
    body = _read_exactly(conn, length)
    if head[12] & 0xF == 0:
        return None
    if head[13] == 0x11:
        return str(ipaddress.IPv4Address(body[:4]))
    if head[13] == 0x21:
        return str(ipaddress.IPv6Address(body[:16]))
    raise ValueError(f"address family {head[13]:#x}")


class WhoAmI:
    def __init__(self, name: str) -> None:
        self.name = name
        self.checks = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> WhoAmI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                client = read_v2(conn)
            except ValueError:
                conn.sendall(b"no-proxy-header\n")
                return
            except OSError:
                return
            if client is None:
                self.checks += 1
                return
            try:
                conn.recv(64)  # the client's line
                conn.sendall(f"{self.name} {client}\n".encode())
            except OSError:
                pass
