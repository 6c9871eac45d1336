"""A mitmproxy test addon: send every request to the local origin.

Test policies name sites such as facebook.test, benchmarks real ones such
as www.linkedin.com; nothing may leave 127.0.0.1.  Loaded *after* accessgate
(a later `-s`), and in a benchmark's bare mitmdump too, so that both pay the
same for it, this rewrites where a request goes once accessgate has decided it.  It writes
`request.data` directly so that the Host header, `:authority` and the
request line reach the origin exactly as the client sent them: the origin
then sees what a real site would see, which is what the tests check.

With `connection_strategy=lazy`, mitmproxy opens no upstream connection for
a CONNECT, so the only connections are the ones this addon points at the
origin.  Anything this addon has not routed is refused in `server_connect`,
unless `route_raw_to_origin` is set: then a connection that mitmproxy opens
on its own (a tunnel it relays without reading) goes to the origin too,
which speaks TLS and plain HTTP, so that whatever such a relay carries is
seen and recorded there.
"""

from __future__ import annotations

from mitmproxy import ctx, http
from mitmproxy.proxy import server_hooks


class RouteToOrigin:
    def __init__(self) -> None:
        self.target: tuple[str, int] = ("127.0.0.1", 0)
        self.raw = False

    def load(self, loader) -> None:
        loader.add_option("route_to_origin", str, "", "HOST:PORT of the test origin (plain HTTP).")
        loader.add_option(
            "route_raw_to_origin", bool, False, "Send connections this addon did not route to the origin too."
        )

    def configure(self, updated: set[str]) -> None:
        # Kept here, not read per request: mitmproxy copies an option's value on every read.
        if "route_to_origin" in updated and ctx.options.route_to_origin:
            host, _, port = ctx.options.route_to_origin.rpartition(":")
            self.target = (host, int(port))
        if "route_raw_to_origin" in updated:
            self.raw = ctx.options.route_raw_to_origin

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        flow.request.data.host, flow.request.data.port = self.target
        flow.request.data.scheme = b"http"

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address != self.target and self.raw:
            data.server.address = self.target
        elif data.server.address != self.target:
            data.server.error = f"test proxy only talks to the origin, not {data.server.address}"


addons = [RouteToOrigin()]
