"""A benchmark addon: send every request to the local origin, whatever site it names.

The benchmarks name real sites (www.linkedin.com, x.com ...) so that the
policy governs them, yet nothing may leave 127.0.0.1.  Loaded *after*
accessgate (a later `-s`) in every configuration, bare mitmdump included, so
both pay the same for it: it rewrites where a request goes once accessgate
has decided.  `connection_strategy=lazy` keeps a CONNECT from opening an
upstream connection of its own; anything not routed here is refused.
"""

from __future__ import annotations

from mitmproxy import ctx, http
from mitmproxy.proxy import server_hooks


class RouteToOrigin:
    def __init__(self) -> None:
        self.target: tuple[str, int] = ("127.0.0.1", 0)

    def load(self, loader) -> None:
        loader.add_option("route_to_origin", str, "", "HOST:PORT of the benchmark origin (plain HTTP).")

    def configure(self, updated: set[str]) -> None:
        if "route_to_origin" in updated and ctx.options.route_to_origin:
            host, _, port = ctx.options.route_to_origin.rpartition(":")
            self.target = (host, int(port))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        # Write request.data directly: the Host header stays as the client sent it.
        flow.request.data.host, flow.request.data.port = self.target
        flow.request.data.scheme = b"http"

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address != self.target:
            data.server.error = f"benchmark proxy only talks to the origin, not {data.server.address}"


addons = [RouteToOrigin()]
