"""The `accessgate_metrics` endpoint: a registry served over HTTP on its own thread."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    # stop() joins the threads of scrapes in progress (bounded by the
    # handler's timeout), so no thread or socket outlives it.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # seconds a silent scraper may hold a connection (and stop())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # a scrape every 15 s is not news


class MetricsServer:
    """Serves `registry` over HTTP at http://HOST:PORT/metrics (any path works).

    `start()` returns the bound port (give port 0 for a free one); `stop()`
    closes the socket and joins the thread, after which `start()` may be
    called again - on a new address when the option changed.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        if self._server is not None:
            return self._server.server_address[1]
        server_class = type("_Server", (_Server,), {"address_family": _family(self.host)})
        server = make_server(
            self.host,
            self.port,
            make_wsgi_app(self.registry),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"accessgate-metrics:{self.host}:{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return server.server_address[1]

    @property
    def bound_port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5)


def _family(host: str) -> int:
    if ":" in host:
        return socket.AF_INET6
    try:
        return socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        return socket.AF_INET


def parse_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:9464`) of the `accessgate_metrics` option."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(
            f"accessgate_metrics must be HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464), "
            f"not {value!r}; leave it empty to turn metrics off"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)
