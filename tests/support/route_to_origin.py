"""A mitmproxy test addon: send every request to the local origin.

Test policies name sites such as facebook.test; nothing resolves them, and
no test may leave 127.0.0.1.  Loaded *after* accessgate (a later `-s`), this
rewrites where a request goes once accessgate has decided it.  It writes
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
    def load(self, loader) -> None:
        loader.add_option("route_to_origin", str, "", "HOST:PORT of the test origin (plain HTTP).")
        loader.add_option(
            "route_raw_to_origin", bool, False, "Send connections this addon did not route to the origin too."
        )

    def _target(self) -> tuple[str, int]:
        host, _, port = ctx.options.route_to_origin.rpartition(":")
        return host, int(port)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        host, port = self._target()
        flow.request.data.host = host
        flow.request.data.port = port
        flow.request.data.scheme = b"http"

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address != self._target() and ctx.options.route_raw_to_origin:
            data.server.address = self._target()
        elif data.server.address != self._target():
            data.server.error = f"test proxy only talks to the origin, not {data.server.address}"


addons = [RouteToOrigin()]
