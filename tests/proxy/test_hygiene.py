"""Header hygiene: private headers never reach the site, folded ones are unfolded, Alt-Svc never reaches the client.

In-process, through the addons as the script loads them (tests/support/inprocess.py);
tests/e2e/test_bodies_and_headers.py and the adversarial suite show the same through mitmdump.
"""

from __future__ import annotations

import pytest

from support.inprocess import loaded, request, respond

HOST = ("Host", "www.example.org")  # unlisted: allowed, so the request goes on to the site

SENT = [
    # id, the request's header fields, the fields the site gets
    ("nothing-to-clean", [HOST, ("Accept", "*/*"), ("Authorization", "Bearer site-token")],
     [HOST, ("Accept", "*/*"), ("Authorization", "Bearer site-token")]),
    ("proxy-credentials-are-removed", [HOST, ("Proxy-Authorization", "Basic em9lOnB3")], [HOST]),
    ("every-copy-of-them", [("Proxy-Authorization", "Basic a"), HOST, ("proxy-authorization", "Basic b")], [HOST]),
    ("accessgate-headers-a-client-sends-are-removed",
     [HOST, ("X-Accessgate-Decision", "allow"), ("x-ACCESSGATE-user", "alice"), ("X-Accessgatex", "kept")],
     [HOST, ("X-Accessgatex", "kept")]),
    ("a-folded-value-is-unfolded", [HOST, ("X-Note", "first\r\n second")], [HOST, ("X-Note", "first second")]),
    ("a-fold-with-tabs-and-a-bare-newline", [HOST, ("X-Note", "a\n\t\tb\r\n c")], [HOST, ("X-Note", "a b c")]),
    ("both-at-once", [HOST, ("Proxy-Authorization", "Basic a"), ("X-Note", "a\r\n b")], [HOST, ("X-Note", "a b")]),
]  # fmt: skip


@pytest.mark.parametrize("fields,forwarded", [c[1:] for c in SENT], ids=[c[0] for c in SENT])
def test_what_the_site_gets_of_the_request_headers(tmp_path, fields, forwarded):
    with loaded(tmp_path) as proxy:
        flow = request("GET", "http://www.example.org/", fields, user="zoe")
        proxy.hook("requestheaders", flow)
        assert flow.response is None and flow.error is None  # allowed, on its way
        assert [(k.decode(), v.decode()) for k, v in flow.request.headers.fields] == forwarded


RECEIVED = [
    # id, the response's header fields, the fields the client gets
    ("no-alt-svc-no-change", [("Content-Type", "text/html"), ("Cache-Control", "no-store")],
     [("Content-Type", "text/html"), ("Cache-Control", "no-store")]),
    ("alt-svc-is-removed", [("Content-Type", "text/html"), ("Alt-Svc", 'h3=":443"; ma=86400')],
     [("Content-Type", "text/html")]),
    ("in-any-case-and-every-copy", [("ALT-SVC", 'h3=":443"'), ("X-A", "1"), ("alt-svc", "clear")], [("X-A", "1")]),
    ("a-longer-name-is-another-header", [("Alt-Svc-Used", "1")], [("Alt-Svc-Used", "1")]),
]  # fmt: skip


@pytest.mark.parametrize("fields,delivered", [c[1:] for c in RECEIVED], ids=[c[0] for c in RECEIVED])
def test_what_the_client_gets_of_the_response_headers(tmp_path, fields, delivered):
    with loaded(tmp_path) as proxy:
        flow = request("GET", "http://www.example.org/", user="zoe")
        proxy.hook("requestheaders", flow)
        respond(flow, headers=fields)
        proxy.hook("responseheaders", flow)
        assert flow.error is None
        assert [(k.decode(), v.decode()) for k, v in flow.response.headers.fields] == delivered
