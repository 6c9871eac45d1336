"""The proxy's own host is no destination, through a real mitmdump with real curl.

A client asks the proxy for addresses on the proxy host itself (loopback,
its metrics endpoint, this host's interface address, a name resolving to
loopback) and for the cloud metadata address: each is refused with 502, no
byte reaches the service, the refusal is audited and counted.  The proxies
here do not route to the test origin; they connect where the client asks.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from accessgate.proxy.upstream import interface_addresses
from support.clients import curl
from support.load import metric
from support.proxy import start_proxy

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
sites:
  facebook:
    domains: [facebook.test]
roles:
  everyone:
    members: [all]
    access: {facebook: deny}
unauthenticated: deny
unlisted: allow
"""
BAD_GATEWAY = 502


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, mitm_confdir):
    work = tmp_path_factory.mktemp("upstream")
    (work / "policy.yaml").write_text(POLICY)
    proxy = start_proxy(policy=work / "policy.yaml", confdir=mitm_confdir, workdir=work / "proxy")
    yield proxy
    proxy.stop()


def _this_hosts_other_address() -> str:
    for ip in sorted(interface_addresses(), key=str):
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            return str(ip)
    pytest.skip("this host has no IPv4 interface address but loopback")


# id, URL (ORIGIN: the test origin's port, METRICS: the proxy's metrics port), reason named in the refusal
CASES = [
    ("loopback-address", "http://127.0.0.1:ORIGIN/", "loopback"),
    ("another-loopback-address", "http://127.0.0.2:ORIGIN/", "loopback"),
    ("ipv6-loopback", "http://[::1]:ORIGIN/", "loopback"),
    ("a-name-that-resolves-to-loopback", "http://localhost:ORIGIN/", "loopback"),
    ("decimal-spelling-of-loopback", "http://2130706433:ORIGIN/", "loopback"),
    ("the-proxys-own-metrics", "http://127.0.0.1:METRICS/metrics", "loopback"),
    ("the-cloud-metadata-service", "http://169.254.169.254/latest/meta-data/", "link-local"),
    ("unspecified-address", "http://0.0.0.0:ORIGIN/", "unspecified"),
    ("this-hosts-interface-address", "http://HERE:ORIGIN/", "this-host"),
    ("loopback-inside-a-tls-tunnel", "https://127.0.0.1:ORIGIN/", "loopback"),
]  # fmt: skip


@pytest.mark.parametrize("url,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_proxys_own_host_is_refused(guarded, origin, url, reason):
    url = url.replace("ORIGIN", str(origin.port)).replace("METRICS", str(guarded.metrics_port))
    if "HERE" in url:
        url = url.replace("HERE", _this_hosts_other_address())
    before = metric(guarded.metrics(), "accessgate_upstream_refused_total", reason=reason)

    result = curl(guarded, url, timeout=10)

    if url.startswith("https"):
        assert result.status in (0, BAD_GATEWAY), result  # the TLS handshake to the site cannot complete
    else:
        assert result.status == BAD_GATEWAY, result
        assert b"accessgate_requests_total" not in result.body
    assert origin.wait_for(1, timeout=0.3) == [], "a request reached a service on the proxy's own host"
    deadline = time.monotonic() + 5
    while metric(guarded.metrics(), "accessgate_upstream_refused_total", reason=reason) <= before:
        assert time.monotonic() < deadline, f"no refusal counted for {reason}"
        time.sleep(0.1)


def test_a_tls_tunnel_to_a_name_of_this_host_sends_it_no_byte(guarded):
    """Not even the ClientHello of the short handshake that reads a server's certificate before a
    tunnel is passed through (proxy/certificates.py).  (A connection mitmproxy opens is closed,
    once the guard sees where it went, before a byte is sent: upstream.py.)"""
    family, _, _, _, address = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0]
    with socket.create_server((address[0], 0), family=family) as service:
        port = service.getsockname()[1]

        result = curl(guarded, f"https://localhost:{port}/", timeout=10)

        assert result.status in (0, BAD_GATEWAY), result
        received = b""
        service.settimeout(0.5)
        while True:
            try:
                conn, _ = service.accept()
            except TimeoutError:
                break
            with conn:
                conn.settimeout(2)
                received += conn.recv(4096)
        assert received == b"", "bytes reached a service on the proxy's own host"


def test_a_refusal_is_audited_with_its_reason(guarded, origin):
    result = curl(guarded, f"http://127.0.0.1:{origin.port}/audited", timeout=10)
    assert result.status == BAD_GATEWAY
    records = guarded.wait_audit(lambda rs: any(r["path"] == "/audited" for r in rs))
    (record,) = [r for r in records if r["path"] == "/audited"]
    assert "loopback" in (record.get("error") or ""), record


def test_the_metadata_address_is_refused_without_connecting(guarded):
    started = time.monotonic()
    result = curl(guarded, "http://169.254.169.254/latest/meta-data/", timeout=10)
    assert result.status == BAD_GATEWAY
    assert time.monotonic() - started < 3, "the proxy tried to connect before refusing"


def test_an_address_the_operator_allows_is_reached(tmp_path, mitm_confdir, origin):
    (tmp_path / "policy.yaml").write_text(POLICY)
    proxy = start_proxy(
        policy=tmp_path / "policy.yaml", confdir=mitm_confdir, workdir=tmp_path / "proxy",
        options={"accessgate_upstream_allow": ["127.0.0.1/32"]},
    )  # fmt: skip
    try:
        assert curl(proxy, f"http://127.0.0.1:{origin.port}/allowed").status == 200
        assert [r.path for r in origin.wait_for(1)] == ["/allowed"]
        assert curl(proxy, f"http://127.0.0.2:{origin.port}/beside").status == BAD_GATEWAY
    finally:
        proxy.stop()


def test_a_bad_allowance_stops_the_proxy_with_what_to_write(tmp_path, mitm_confdir):
    from support.proxy import ProxyFailed

    (tmp_path / "policy.yaml").write_text(POLICY)
    with pytest.raises(ProxyFailed, match="accessgate_upstream_allow: 'localhost' is not an address"):
        start_proxy(
            policy=tmp_path / "policy.yaml", confdir=mitm_confdir, workdir=tmp_path / "proxy",
            options={"accessgate_upstream_allow": ["localhost"]},
        )  # fmt: skip
