"""Turn a mitmproxy flow into `engine.Request`, with every name it gives for its host.

A request can name its host in several places and mitmproxy forwards to one
of them while a site may serve another: the CONNECT target, the TLS SNI, the
absolute-form URL or HTTP/2 `:authority`, and each `Host` header (HTTP/2
lets a client send two; h2 checks only the last).  The engine decides every
name and the strictest stands, so this module's one job is to miss none.
Names are passed raw; the engine normalizes them and blocks one that cannot
be a host name.  It also blocks a request that gives more than
`MAX_HOST_NAMES` names without deciding any, and this module passes it no
more than one over that (`_capped`), so no request costs more than a few
normalizations however many Host headers it carries.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from mitmproxy import http

from accessgate.decision import HEADERS_READ, MAX_HOST_NAMES, Request

_new_request = tuple.__new__  # Request's own constructor is Python code

# Connection-level checks (a CONNECT, an uninspected tunnel) have no method.
# "GET" asks "may this client reach the site at all"; "CONNECT" asks "may it
# write there too", which is what a tunnel that we cannot read amounts to.
REACH = "GET"
TUNNEL = "CONNECT"


# Host headers kept and read: one more than the engine decides, so that it
# sees a request that gives too many names as one.
_HOSTS_KEPT = MAX_HOST_NAMES + 1


def host_headers(rq: http.Request) -> list[str]:
    """The Host headers' values, as `rq.headers.get_all("host")` gives them,
    but at most `_HOSTS_KEPT` of them (see `drop_surplus_hosts`).

    Read from the raw fields: get_all() goes through two layers of key and
    value conversion, on a path every request takes.
    """
    values = []
    for k, v in rq.headers.fields:
        if k.lower() == b"host":
            if len(values) == _HOSTS_KEPT:
                break
            values.append(v.decode("utf-8", "surrogateescape"))
    return values


def drop_surplus_hosts(rq: http.Request) -> None:
    """Keep the first `_HOSTS_KEPT` Host headers of a request that has more.

    Such a request is blocked for giving too many names, but mitmproxy's own
    addons still read it after accessgate: they join every Host value into
    one and IDNA-encode the whole (onboarding and maplocal, in the `request`
    hook), on the event loop, for as long as the client made the list.
    """
    kept = 0
    fields = []
    for name, value in rq.headers.fields:
        if name.lower() == b"host":
            kept += 1
            if kept > _HOSTS_KEPT:
                continue
        fields.append((name, value))
    rq.headers.fields = tuple(fields)


def _capped(names: list[str]) -> tuple[str, ...]:
    """`names` without exact repeats, when they are few enough for the engine
    to decide each; else the first `_HOSTS_KEPT` as they are, which it
    blocks on their count.  Counted with repeats, as RFC 9112 counts Host
    headers: a thousand copies of one name cost as much to parse."""
    if len(names) > MAX_HOST_NAMES:
        return tuple(names[:_HOSTS_KEPT])
    return tuple(dict.fromkeys(names))


def _names(flow: http.HTTPFlow, host_values: list[str], extra: Iterable[str]) -> tuple[str, ...]:
    data = flow.request.data
    names: list[str] = []
    if data.host:
        names.append(data.host)
    if data.authority:
        names.append(data.authority.decode("utf-8", "surrogateescape"))
    names.extend(host_values)
    sni = flow.client_conn.sni
    if sni:
        names.append(sni)
    names.extend(extra)
    # Keep order for messages, drop exact repeats (the engine would too).
    # Every entry is a non-empty str: `extra` holds CONNECT targets, never None.
    return _capped(names)


def path_without_query(path: str) -> str:
    return path.split("?", 1)[0]


_HEADERS_READ_B = {name.encode(): name for name in HEADERS_READ}
# Headers that must not reach the site: the proxy credentials, and anything
# that claims to come from accessgate.  The addon strips them.
PRIVATE_HEADER = b"proxy-authorization"
PRIVATE_PREFIX = b"x-accessgate-"


class ScannedRequest(NamedTuple):
    """What one pass over a request's raw header fields found."""

    request: Request  # the engine's view
    host_values: list[str]  # every Host header's value
    private: tuple[bytes, ...]  # lower-case names of headers the site must not see; almost always none
    folded: bool  # a value continues on another line (obs-fold)


def request_of(flow: http.HTTPFlow, tunnel_names: Iterable[str] = ()) -> Request:
    """The engine's view of an HTTP request; `tunnel_names` are its connection's CONNECT targets."""
    return scan_request(flow, tunnel_names).request


def scan_request(flow: http.HTTPFlow, tunnel_names: Iterable[str] = ()) -> ScannedRequest:
    """`request_of(flow)`, the Host headers' values, and whether the headers
    need sanitizing, from one pass over the raw fields.

    Only the headers the engine reads are decoded (as mitmproxy's Headers
    would: utf-8, surrogateescape), since decoding every header is a large
    part of a request's cost.  bytes.lower() folds only
    ASCII, and no non-ASCII character lower-cases into those names.  A
    request that has private or folded headers is sanitized and scanned
    again; almost none has.  One with more Host headers than the engine
    decides loses the surplus here (`drop_surplus_hosts`): it is blocked.
    """
    # From mitmproxy's raw request data: its str properties (method, path,
    # scheme, headers) are Python functions that decode on every access.
    data = flow.request.data
    host_values: list[str] = []
    headers: list[tuple[str, str]] = []
    private: list[bytes] = []
    folded = False
    surplus = False
    for name, value in data.headers.fields:
        lowered = name.lower()
        if lowered == b"host":
            if len(host_values) < _HOSTS_KEPT:
                host_values.append(value.decode("utf-8", "surrogateescape"))
            else:
                surplus = True
        elif lowered in _HEADERS_READ_B:
            headers.append((_HEADERS_READ_B[lowered], value.decode("utf-8", "surrogateescape")))
        elif lowered == PRIVATE_HEADER or lowered.startswith(PRIVATE_PREFIX):
            private.append(lowered)
        if b"\n" in value:
            folded = True
    if surplus:
        drop_surplus_hosts(flow.request)
    request = _new_request(
        Request,
        (
            data.method.decode("utf-8", "surrogateescape").upper(),
            _names(flow, host_values, tunnel_names),
            data.path.split(b"?", 1)[0].decode("utf-8", "surrogateescape"),
            data.scheme.decode("utf-8", "surrogateescape"),
            tuple(headers),
            None,  # what it says it does: read only where a rule asks (proxy/operations.py)
        ),
    )
    return ScannedRequest(request, host_values, tuple(private), folded)


def all_headers(rq: http.Request) -> tuple[tuple[str, str], ...]:
    """Every header of `rq` as (lower-case name, value), decoded as mitmproxy's Headers would."""
    return tuple(
        (name.decode("utf-8", "surrogateescape").lower(), value.decode("utf-8", "surrogateescape"))
        for name, value in rq.headers.fields
    )


def connect_request(flow: http.HTTPFlow) -> Request:
    """A CONNECT, decided as "may reach": the block page comes from the inner request."""
    rq = flow.request
    names = [rq.data.host] if rq.data.host else []
    values = host_headers(rq)
    if len(values) == _HOSTS_KEPT:
        drop_surplus_hosts(rq)  # if there are more
    names.extend(values)
    return Request(method=REACH, hosts=_capped(names), path="/", scheme="https")


def tunnel_request(names: Iterable[str], method: str = TUNNEL) -> Request:
    """A connection whose contents accessgate will not see (passthrough, raw TCP)."""
    return Request(method=method, hosts=_capped([n for n in names if n]), path="/")
