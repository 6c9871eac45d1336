"""scan_request: one pass over a request's raw header fields finds what the
engine reads and whether the headers need sanitizing."""

from __future__ import annotations

import pytest
from mitmproxy.test import tflow

from accessgate.proxy.flows import scan_request


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


# -- at most MAX_HOST_NAMES names per request (issue 14, hole 7) ----------------

MAX = 8


def _hosts(*values: bytes):
    return _flow(*((b"Host", v) for v in values))


@pytest.mark.parametrize(
    "extra_hosts, names",
    [
        pytest.param(0, ("example.test", "sni.test"), id="one-host-header-is-deduplicated-with-the-url"),
        pytest.param(5, ("example.test", "sni.test"), id="eight-names-in-all-are-decided-one-by-one"),
        pytest.param(6, ("example.test",) * 8 + ("sni.test",), id="nine-are-passed-as-they-are-for-the-engine-to-block"),
        pytest.param(20_000, ("example.test",) * 9, id="twenty-thousand-are-cut-to-nine"),
    ],
)
def test_a_request_gives_the_engine_at_most_nine_names(extra_hosts, names):
    # The flow names its host in its URL, one Host header, the extra ones and its SNI.
    scan = scan_request(_hosts(*[b"example.test"] * extra_hosts))
    assert scan.request.hosts == names
    assert len(scan.host_values) <= MAX + 1


def test_surplus_host_headers_are_dropped_and_everything_else_kept():
    flow = _hosts(*[b"h%d.test" % i for i in range(1000)], b"x")
    flow.request.headers.fields += ((b"Accept", b"*/*"),)
    scan_request(flow)
    fields = flow.request.headers.fields
    assert [v for k, v in fields if k == b"Host"] == [b"example.test"] + [b"h%d.test" % i for i in range(8)]
    assert fields[-1] == (b"Accept", b"*/*")


def test_nine_host_headers_are_kept_as_they_are():
    flow = _hosts(*[b"example.test"] * 8)
    before = flow.request.headers.fields
    scan_request(flow)
    assert flow.request.headers.fields == before


def test_a_connect_with_many_host_headers_gives_nine_names_and_keeps_nine_headers():
    from accessgate.proxy.flows import connect_request

    flow = _hosts(*[b"example.test:443"] * 5000)
    request = connect_request(flow)
    assert request.hosts == ("example.test",) + ("example.test",) + ("example.test:443",) * 7
    assert len([k for k, _ in flow.request.headers.fields if k == b"Host"]) == MAX + 1


def test_an_uninspected_tunnel_with_many_server_names_gives_nine():
    from accessgate.proxy.flows import tunnel_request

    assert len(tunnel_request([f"h{i}.test" for i in range(5000)]).hosts) == MAX + 1
    assert tunnel_request(["a.test", "a.test", "b.test"]).hosts == ("a.test", "b.test")


def test_the_engine_blocks_a_request_that_names_its_host_more_than_eight_times():
    from datetime import datetime, timezone
    from pathlib import Path

    from accessgate.decision import MAX_HOST_NAMES, Identity, decide
    from accessgate.policy.loader import load_policy

    assert MAX_HOST_NAMES == MAX
    policy = load_policy(Path(__file__).parents[1] / "adversarial" / "policy.yaml")
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    eight = decide(scan_request(_hosts(*[b"example.test"] * 5)).request, Identity(user="zoe"), policy, now)
    nine = decide(scan_request(_hosts(*[b"example.test"] * 6)).request, Identity(user="zoe"), policy, now)
    assert (eight.decision, eight.reason) == ("allow", "unlisted")
    assert (nine.decision, nine.reason, nine.rule) == ("block", "denied", "invalid-host")
    assert "send one Host header" in nine.message
