"""A request names its host in many places; the strictest decision over all of them stands.

zoe may not use facebook.test; example.test is not governed.  Every case
hides facebook.test in one place and shows example.test in the others: the
CONNECT target, the TLS SNI, the absolute-form URL, the Host header.  Each
must be blocked, and nothing may reach the origin.
"""

from __future__ import annotations

import pytest

from support.clients import curl, get, tunnel

pytestmark = pytest.mark.e2e

DENIED, FREE = "facebook.test", "example.test"

# id, CONNECT target, SNI, Host header
TUNNELS = [
    ("denied-host-header-inside-harmless-tunnel", FREE, FREE, DENIED),
    ("denied-sni-inside-harmless-connect", FREE, DENIED, FREE),
    ("denied-connect-with-harmless-sni-and-host", DENIED, FREE, FREE),
    ("denied-name-with-port-and-upper-case", FREE, FREE, "FACEBOOK.test:443"),
    ("denied-name-in-idna-and-trailing-dot", FREE, FREE, "www.facebook.test."),
    ("name-that-is-no-host-name", FREE, FREE, "face book.test"),
]  # fmt: skip


@pytest.mark.parametrize("connect,sni,host", [c[1:] for c in TUNNELS], ids=[c[0] for c in TUNNELS])
def test_strictest_name_decides_inside_tunnels(auth_proxy, origin, connect, sni, host):
    result = tunnel(auth_proxy, f"{connect}:443", user="zoe", sni=sni, send=get(host))
    assert result.connect_status == 200  # intercepted: the block page comes from inside
    assert result.status == 403, result.reply[:200]
    assert result.header("x-accessgate-reason") == "denied"
    assert origin.requests == []


def test_harmless_names_everywhere_pass(auth_proxy, origin):
    result = tunnel(auth_proxy, f"{FREE}:443", user="zoe", sni=FREE, send=get(FREE, "/ok"))
    assert result.status == 200
    assert [s.header("host") for s in origin.wait_for(1)] == [FREE]


@pytest.mark.parametrize(
    "url,host",
    [
        (f"http://{FREE}/", DENIED),  # absolute-form harmless, Host denied
        (f"http://{DENIED}/", FREE),  # absolute-form denied, Host harmless
    ],
    ids=["denied-host-header-with-absolute-form", "denied-absolute-form-with-harmless-host"],
)
def test_absolute_form_and_host_header_both_decide(auth_proxy, origin, url, host):
    result = curl(auth_proxy, url, user="zoe", headers={"Host": host})
    assert (result.status, result.reason) == (403, "denied")
    assert origin.requests == []


def test_raw_tcp_tunnel_to_denied_site_is_closed(auth_proxy, origin):
    # Not TLS, not HTTP: mitmproxy would relay it as raw TCP, unseen.
    result = tunnel(auth_proxy, f"{DENIED}:443", user="zoe", tls=False, send=b"\x00\x01HELLO\n")
    assert result.connect_status == 200
    assert result.reply == b""
    assert origin.requests == []
    records = auth_proxy.wait_audit(lambda rs: any(r["method"] == "CONNECT" for r in rs))
    refused = [r for r in records if r["method"] == "CONNECT"]
    assert refused, records
    assert (refused[-1]["decision"], refused[-1]["user"], refused[-1]["site"]) == ("block", "zoe", "facebook")
    assert refused[-1]["error"] == "tunnel refused"


@pytest.fixture(scope="module")
def ignoring_proxy(module_proxy, htpasswd):
    return module_proxy("ignoring-proxy", proxyauth=f"@{htpasswd}", ignore_hosts=[r"^bank\.test"])


def test_spoofed_sni_cannot_force_an_uninspected_tunnel(ignoring_proxy, origin):
    # With ignore_hosts, an SNI of bank.test would make mitmproxy pass the
    # tunnel through unread; only the CONNECT names the real target.
    result = tunnel(ignoring_proxy, f"{DENIED}:443", user="zoe", sni="bank.test", send=get(DENIED))
    assert result.connect_status == 403
    assert result.connect_headers["x-accessgate-reason"] == "denied"
    assert origin.requests == []


def test_ignored_host_itself_still_tunnels(ignoring_proxy, origin):
    result = tunnel(ignoring_proxy, "bank.test:443", user="zoe", sni="bank.test", send=get("bank.test"))
    assert result.connect_status == 200  # accessgate does not refuse what it may pass


def test_http2_first_of_two_host_headers_is_decided_too(auth_proxy, origin):
    # h2 4.1 (mitmproxy 11) validates only the last `host` against
    # `:authority`; the first one is what some servers route by.  h2 4.2+
    # (mitmproxy 12) refuses the request itself before any hook: then the
    # connection closes, mitmproxy logs why, and nothing reaches the origin.
    from support.clients import h2_get
    from support.mitmlines import REPEATED_HOST_REFUSED, h2_refuses_repeated_host, logged

    status, headers = h2_get(
        auth_proxy, f"{FREE}:443", user="zoe",
        headers=[(":method", "GET"), (":scheme", "https"), (":authority", FREE), (":path", "/"),
                 ("host", DENIED), ("host", FREE)],
    )  # fmt: skip
    if h2_refuses_repeated_host():
        assert status == 0 and logged(auth_proxy, REPEATED_HOST_REFUSED)
    else:
        assert status == 403 and headers.get("x-accessgate-reason") == "denied"
    assert origin.wait_for(1, timeout=0.3) == []


def test_http2_plain_request_passes(auth_proxy, origin):
    from support.clients import h2_get

    status, _ = h2_get(
        auth_proxy, f"{FREE}:443", user="zoe",
        headers=[(":method", "GET"), (":scheme", "https"), (":authority", FREE), (":path", "/h2")],
    )  # fmt: skip
    assert status == 200
    assert [s.path for s in origin.wait_for(1)] == ["/h2"]
