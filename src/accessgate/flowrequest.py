"""Turn a mitmproxy flow into `engine.Request`, with every name it gives for its host.

A request can name its host in several places and mitmproxy forwards to one
of them while a site may serve another: the CONNECT target, the TLS SNI, the
absolute-form URL or HTTP/2 `:authority`, and each `Host` header (HTTP/2
lets a client send two; h2 checks only the last).  The engine decides every
name and the strictest stands, so this module's one job is to miss none.
Names are passed raw; the engine normalizes them and blocks one that cannot
be a host name.
"""

from __future__ import annotations

from typing import Iterable

from mitmproxy import http

from .engine import Request

# Connection-level checks (a CONNECT, an uninspected tunnel) have no method.
# "GET" asks "may this client reach the site at all"; "CONNECT" asks "may it
# write there too", which is what a tunnel that we cannot read amounts to.
REACH = "GET"
TUNNEL = "CONNECT"


def host_headers(rq: http.Request) -> list[str]:
    """Every Host header's value, exactly as `rq.headers.get_all("host")` gives them.

    Read from the raw fields: get_all() goes through two layers of key and
    value conversion, and every request asks for these twice (profiled).
    """
    return [v.decode("utf-8", "surrogateescape") for k, v in rq.headers.fields if k.lower() == b"host"]


def _names(flow: http.HTTPFlow, extra: Iterable[str]) -> tuple[str, ...]:
    rq = flow.request
    names: list[str] = []
    if rq.data.host:
        names.append(rq.data.host)
    if rq.data.authority:
        names.append(rq.data.authority.decode("utf-8", "surrogateescape"))
    names.extend(host_headers(rq))
    sni = flow.client_conn.sni
    if sni:
        names.append(sni)
    names.extend(extra)
    # Keep order for messages, drop exact repeats (the engine would too).
    return tuple(dict.fromkeys(n for n in names if n is not None))


def path_without_query(path: str) -> str:
    return path.split("?", 1)[0]


def request_of(flow: http.HTTPFlow, tunnel_names: Iterable[str] = ()) -> Request:
    """The engine's view of an HTTP request; `tunnel_names` are its connection's CONNECT targets."""
    rq = flow.request
    return Request(
        method=rq.method,
        hosts=_names(flow, tunnel_names),
        path=path_without_query(rq.path),
        scheme=rq.scheme,
        # The raw fields, decoded as mitmproxy's Headers would ("utf-8",
        # surrogateescape), without its per-field generator: about half the cost.
        headers=tuple(
            (k.decode("utf-8", "surrogateescape").lower(), v.decode("utf-8", "surrogateescape"))
            for k, v in rq.headers.fields
        ),
    )


def connect_request(flow: http.HTTPFlow) -> Request:
    """A CONNECT, decided as "may reach": the block page comes from the inner request."""
    rq = flow.request
    names = [rq.data.host] if rq.data.host else []
    names.extend(host_headers(rq))
    return Request(method=REACH, hosts=tuple(dict.fromkeys(names)), path="/", scheme="https")


def tunnel_request(names: Iterable[str], method: str = TUNNEL) -> Request:
    """A connection whose contents accessgate will not see (passthrough, raw TCP)."""
    return Request(method=method, hosts=tuple(dict.fromkeys(n for n in names if n)), path="/")
