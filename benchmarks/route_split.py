"""A mitmproxy addon for benchmarks/inspection.py: every upstream connection to nginx's TLS port.

Loaded after accessgate in both of the benchmark's proxies, so that both pay
the same for it.  A request mitmproxy decrypted (and accessgate allowed) is
sent over HTTPS, as it would be to the real site: the proxy makes its second
TLS handshake, upstream, as interception does (the proxies run with
ssl_insecure: the origin's certificate names the unlisted hosts only).  Any
other upstream connection (a TLS tunnel passed through unread, the short
handshake in which accessgate reads a server's certificate) goes there too.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

from mitmproxy import ctx, http
from mitmproxy.proxy import server_hooks


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


class RouteSplit:
    def __init__(self) -> None:
        self.tls: tuple[str, int] = ("127.0.0.1", 0)

    def load(self, loader) -> None:
        loader.add_option("bench_tls_origin", str, "", "HOST:PORT of the origin's TLS port.")

    def configure(self, updated: set[str]) -> None:
        if "bench_tls_origin" in updated and ctx.options.bench_tls_origin:
            self.tls = _address(ctx.options.bench_tls_origin)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        flow.request.data.host, flow.request.data.port = self.tls
        flow.request.data.scheme = b"https"

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        data.server.address = self.tls


addons = [RouteSplit()]
