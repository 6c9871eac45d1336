"""Header hygiene: what must not pass the proxy as the client or the site sent it.

Towards the site: no proxy credentials, no `X-Accessgate-*` headers, no
folded header lines (`sanitize`, run by the request hook before anything
reads the headers; `flows.scan_request` finds what needs it in the pass
that reads the request anyway).  Towards the client: no `Alt-Svc`
(`StripAltSvc`, an addon of its own, as mitmproxy's `update_alt_svc` is).
"""

from __future__ import annotations

import re
from typing import Callable

from mitmproxy import http

# Alt-Svc advertises HTTP/3 over UDP, which a browser may then use around the
# proxy; without it the browser stays on the TCP connection that we decide.
ALT_SVC = "alt-svc"
_ALT_SVC_B = ALT_SVC.encode()
_FOLD = re.compile(rb"\r?\n[ \t]*")


def sanitize(headers: http.Headers, private: tuple[bytes, ...], folded: bool) -> None:
    """Before anything reads the headers: strip what is private, unfold what is folded.

    Nothing about the user reaches the site: no proxy credentials, no
    X-Accessgate-*.  `private` and `folded` are what `scan_request` found
    (the lower-case names of the private headers, and whether any value is
    folded); unfolding cannot make a new header, so the names stay complete.
    """
    for name in dict.fromkeys(private):
        del headers[name.decode("utf-8", "surrogateescape")]
    if folded:
        unfold(headers)


def unfold(headers: http.Headers) -> None:
    """Replace each obs-fold with one space (RFC 9112 5.2), as a proxy must.

    mitmproxy keeps a folded value as it came, line break included, and
    forwards it; a server that reads the continuation as a line of its own
    would see a header, e.g. a second Host, that accessgate never decided.
    """
    headers.fields = tuple((name, _FOLD.sub(b" ", value)) for name, value in headers.fields)


def drop_alt_svc(headers: http.Headers) -> None:
    """No Alt-Svc: it would invite the browser to HTTP/3 over UDP, past the proxy."""
    # A scan of the raw names: pop() of an absent header raises and catches
    # a KeyError inside mitmproxy, on nearly every response.
    for name, _ in headers.fields:
        if len(name) == 7 and name.lower() == _ALT_SVC_B:
            del headers[ALT_SVC]
            return


class StripAltSvc:
    """Removes Alt-Svc from every response, before it reaches the client.

    `fail` is accessgate's fail-closed handler: a response this addon could
    not clean is withheld, counted and audited like any failure in a hook.
    """

    name = "accessgate_alt_svc"

    def __init__(self, fail: Callable[[http.HTTPFlow, str, BaseException], None]) -> None:
        self._fail = fail

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            drop_alt_svc(flow.response.headers)
        except Exception as exc:
            self._fail(flow, "responseheaders", exc)
