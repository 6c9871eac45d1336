"""A real HTTP/1.1 origin on 127.0.0.1 that records every request it gets.

Tests ask it two things: what reached it (so that "blocked requests never
reach the origin" is an observation, not an assumption) and for bytes of a
known shape (so that "allowed bodies pass unchanged" compares hashes).

Paths it serves:
    /bytes/N        N deterministic bytes (see `payload(N)`)
    /echo           the request body back
    /alt-svc        a small body with `Alt-Svc: h3=":443"; ma=86400`
    anything else   `ok METHOD PATH`
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from dataclasses import dataclass


def payload(size: int) -> bytes:
    """`size` bytes that are not all alike, so truncation and reordering show."""
    block = hashlib.sha256(b"accessgate").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@dataclass(frozen=True)
class Seen:
    """One request as the origin received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    body_sha256: str
    body_length: int

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def header_names(self) -> set[str]:
        return {k for k, _ in self.headers}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._body()
        self.server.record(
            Seen(
                method=self.command,
                path=self.path,
                headers=tuple((k.lower(), v) for k, v in self.headers.items()),
                body_sha256=hashlib.sha256(body).hexdigest(),
                body_length=len(body),
            )
        )
        extra: dict[str, str] = {}
        if self.path.startswith("/bytes/"):
            out = payload(int(self.path.split("/")[2].split("?")[0]))
        elif self.path.startswith("/echo"):
            out = body
        elif self.path.startswith("/alt-svc"):
            out = b"alt-svc"
            extra["Alt-Svc"] = 'h3=":443"; ma=86400, h3-29=":443"'
        else:
            out = f"ok {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(out)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def __getattr__(self, name: str):
        # Every method, including made-up and lower-case ones, is recorded.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[Seen] = []
        self.lock = threading.Condition()

    def record(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)
            self.lock.notify_all()


class Origin:
    """Start with `Origin()`, stop with `.stop()` (or use as a context manager)."""

    def __init__(self) -> None:
        self._server = _Server()
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def requests(self) -> list[Seen]:
        with self._server.lock:
            return list(self._server.seen)

    def clear(self) -> None:
        with self._server.lock:
            self._server.seen.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Seen]:
        """The requests once at least `count` have arrived (or after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._server.lock:
            while len(self._server.seen) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._server.lock.wait(left)
            return list(self._server.seen)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "Origin":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
