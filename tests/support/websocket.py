"""A real WebSocket echo origin and a WebSocket client that goes through the proxy.

Both speak the protocol with wsproto (a mitmproxy dependency) over plain
sockets on 127.0.0.1, so what is tested is the bytes a browser would send.
"""

from __future__ import annotations

import base64
import socket
import threading
import time

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)


class WebSocketOrigin:
    """Accepts WebSocket upgrades and echoes every text message back."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.opened = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        conn.settimeout(300)  # longer than any test keeps a socket open
        try:
            while True:
                data = conn.recv(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, Request):
                        self.opened += 1
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage):
                        conn.sendall(ws.send(Message(data=event.data)))
                    elif isinstance(event, Ping):
                        conn.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if ws.state is ConnectionState.REMOTE_CLOSING:  # not when the peer just vanished
                            conn.sendall(ws.send(event.response()))
                        return
                if not data:
                    return
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


class ProxiedWebSocket:
    """A WebSocket client speaking through an HTTP proxy (absolute-form upgrade)."""

    def __init__(self, proxy_port: int, host: str, path: str, user: str, password: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=host,
                    target=f"http://{host}{path}",
                    extra_headers=[(b"proxy-authorization", f"Basic {token}".encode())],
                )
            )
        )
        self.accepted = any(isinstance(e, AcceptConnection) for e in self._events())
        self.closed = False

    def _events(self) -> list:
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        if not data:
            self.closed = True
        return list(self.ws.events())

    def echo(self, text: str) -> str | None:
        """Send `text`; the echoed reply, or None when the connection was closed."""
        try:
            self.sock.sendall(self.ws.send(Message(data=text)))
            while not self.closed:
                for event in self._events():
                    if isinstance(event, TextMessage):
                        return event.data
                    if isinstance(event, CloseConnection):
                        self.closed = True
        except (OSError, Exception):
            self.closed = True
        return None

    def wait_closed(self, timeout: float) -> float | None:
        """Seconds until the proxy closed the connection, or None if it stayed open."""
        start = time.monotonic()
        self.sock.settimeout(0.5)
        while time.monotonic() - start < timeout:
            try:
                for event in self._events():
                    if isinstance(event, CloseConnection):
                        self.closed = True
            except TimeoutError:
                continue
            except OSError:
                self.closed = True
            if self.closed:
                return time.monotonic() - start
        return None

    def close(self) -> None:
        self.sock.close()
