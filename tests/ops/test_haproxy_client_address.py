"""The shipped HAProxy config in front of real accessgate proxies: each proxy sees the client's own address.

HAProxy (deploy/haproxy/haproxy.cfg, as shipped) connects to the proxies
from 127.0.0.1, which they list in accessgate_trusted_proxies; clients
connect from other loopback addresses (127.0.0.3, 127.0.0.4: all of
127.0.0.0/8 is loopback on Linux).  The policy grants intranet.test only to
`net:127.0.0.3/32`, so a wrong address shows in the decision as well as in
the audit record's client_ip.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.clients import curl
from support.haproxy import running_haproxy
from support.policies import everyone_policy

pytestmark = pytest.mark.e2e

POLICY = everyone_policy({"intranet": "full"}, role="office", members='["net:127.0.0.3/32"]',
                         unauthenticated="deny", unlisted="deny")
OFFICE, OUTSIDER, HAPROXY = "127.0.0.3", "127.0.0.4", "127.0.0.1"
GET = b"GET http://intranet.test/ HTTP/1.1\r\nHost: intranet.test\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Balancer:
    """What support.clients.curl needs of a proxy: where, and which CA."""

    url: str
    ca: Path


@pytest.fixture
def behind_haproxy(proxy_factory, tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    proxies = [proxy_factory(policy=tmp_path / "policy.yaml", options={"accessgate_trusted_proxies": f"{HAPROXY}/32"})
               for _ in range(2)]
    with running_haproxy([f"127.0.0.1:{p.port}" for p in proxies]) as lb:
        yield Balancer(f"http://127.0.0.1:{lb.listen[1]}", proxies[0].ca), proxies


def records(proxies) -> list[dict]:
    time.sleep(1.2)  # the audit writer flushes every second
    return [r for p in proxies for r in p.audit_records()]


def raw(port: int, data: bytes, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except OSError:
            pass
    return reply


@pytest.mark.parametrize("url", ["http://intranet.test/", "https://intranet.test/"], ids=["http", "https-connect"])
def test_net_members_and_client_ip_show_the_real_client(behind_haproxy, origin, url):
    balancer, proxies = behind_haproxy
    office = curl(balancer, url, extra=["--interface", OFFICE])
    outsider = curl(balancer, url, extra=["--interface", OUTSIDER])
    assert office.status == 200, office
    assert (outsider.status, outsider.reason) == (403, "unauthenticated")
    assert len(origin.wait_for(1)) == 1
    seen = {(r["client_ip"], r["decision"]) for r in records(proxies) if r["host"] == "intranet.test"}
    assert seen == {(OFFICE, "allow"), (OUTSIDER, "block")}


def test_a_client_that_sends_its_own_proxy_header_is_not_believed(behind_haproxy, origin):
    balancer, proxies = behind_haproxy
    forged = f"PROXY TCP4 {OFFICE} 127.0.0.1 40000 3128\r\n".encode() + GET
    through_haproxy = raw(int(balancer.url.rsplit(":", 1)[1]), forged, OUTSIDER)
    direct = [raw(p.port, forged, OUTSIDER) for p in proxies]
    for reply in (through_haproxy, *direct):
        assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert origin.wait_for(1, timeout=0.5) == []
    assert all(r["client_ip"] != OFFICE for r in records(proxies))
