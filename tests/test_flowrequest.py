"""scan_request: one pass over a request's raw header fields finds what the
engine reads and whether the headers need sanitizing."""

from __future__ import annotations

import pytest
from mitmproxy.test import tflow

from accessgate.flowrequest import scan_request


def _flow(*fields: tuple[bytes, bytes]):
    flow = tflow.tflow()
    flow.request.host = "example.test"
    flow.request.headers.fields = ((b"Host", b"example.test"), *fields)
    flow.client_conn.sni = "sni.test"
    return flow


@pytest.mark.parametrize(
    "fields, private, folded",
    [
        pytest.param((), (), False, id="a-plain-request-needs-nothing"),
        pytest.param(((b"Accept", b"*/*"), (b"X-Forwarded-Host", b"a.test")), (), False, id="ordinary-headers-are-not-private"),
        pytest.param(((b"Proxy-Authorization", b"Basic eDp5"),), (b"proxy-authorization",), False, id="proxy-credentials-are-private"),
        pytest.param(((b"PROXY-AUTHORIZATION", b"Basic eDp5"),), (b"proxy-authorization",), False, id="in-any-case"),
        pytest.param(((b"X-AccessGate-Decision", b"allow"),), (b"x-accessgate-decision",), False, id="anything-claiming-to-be-accessgate-is-private"),
        pytest.param(((b"X-Note", b"one\r\n two"),), (), True, id="a-value-on-two-lines-is-folded"),
        pytest.param(((b"Host", b"x.test\n y"),), (), True, id="a-folded-host-is-folded"),
    ],
)
def test_scan_says_what_needs_sanitizing(fields, private, folded):
    scan = scan_request(_flow(*fields))
    assert (scan.private, scan.folded) == (private, folded)


def test_scan_reads_every_host_and_only_the_headers_the_engine_reads():
    scan = scan_request(
        _flow((b"host", b"second.test"), (b"Upgrade", b"websocket"), (b"X-HTTP-Method-Override", b"PUT"), (b"Accept", b"*/*")),
        ["tunnel.test"],
    )
    assert scan.host_values == ["example.test", "second.test"]
    assert scan.request.hosts == ("example.test", "second.test", "sni.test", "tunnel.test")
    assert scan.request.headers == (("upgrade", "websocket"), ("x-http-method-override", "PUT"))
