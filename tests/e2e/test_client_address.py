"""The client's real address from a trusted balancer's PROXY header (accessgate_trusted_proxies).

A real mitmdump trusts 127.0.0.1; this test, connecting from 127.0.0.1,
plays the balancer and writes the header itself (the real HAProxy is in
tests/ops/test_haproxy_client_address.py).  The policy grants intranet.test
only to `net:10.1.2.0/24` and `net:fd00::/8`; everyone else is anonymous and
blocked (`unauthenticated: deny`).  So the decision, the origin's record and
the audit record's client_ip all show whose address accessgate believed.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import pytest

from support.policies import everyone_policy
from support.proxy import ProxyFailed, start_proxy

pytestmark = pytest.mark.e2e

POLICY = everyone_policy({"intranet": "full"}, role="office", members='["net:10.1.2.0/24", "net:fd00::/8"]',
                         unauthenticated="deny", unlisted="deny")
GET = b"GET http://intranet.test/ HTTP/1.1\r\nHost: intranet.test\r\nConnection: close\r\n\r\n"
BALANCER = "127.0.0.1"
OUTSIDER = "127.0.0.2"  # another loopback address: a client the proxy does not trust


def v1(source: str, family: str = "TCP4", dest: str = "127.0.0.1", ports: str = "40000 3128") -> bytes:
    return f"PROXY {family} {source} {dest} {ports}\r\n".encode()


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(source: str | None, *, version_command: int = 0x21, tlv: bytes = b"") -> bytes:
    """A binary header: PROXY (0x21) or LOCAL (0x20) with an INET/INET6 address block, as HAProxy sends."""
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", version_command, 0x00, len(tlv)) + tlv
    ip = ipaddress.ip_address(source)
    if ip.version == 4:
        body = ip.packed + ipaddress.IPv4Address("127.0.0.1").packed + struct.pack("!HH", 40000, 3128)
        family = 0x11
    else:
        body = ip.packed + ipaddress.IPv6Address("::1").packed + struct.pack("!HH", 40000, 3128)
        family = 0x21
    body += tlv
    return V2_SIGNATURE + struct.pack("!BBH", version_command, family, len(body)) + body


@pytest.fixture(scope="module")
def balanced(mitm_confdir, session_origin, tmp_path_factory):
    """A proxy that trusts 127.0.0.1 as its balancer."""
    work = tmp_path_factory.mktemp("balanced")
    (work / "policy.yaml").write_text(POLICY)
    proxy = start_proxy(policy=work / "policy.yaml", confdir=mitm_confdir, origin=session_origin, workdir=work,
                        options={"accessgate_trusted_proxies": [f"{BALANCER}/32", "::1"]})
    yield proxy
    proxy.stop()


def send(proxy, pieces: list[bytes], source: str = BALANCER, timeout: float = 5.0) -> bytes:
    """Each piece in its own write (a moment apart), then everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout, source_address=(source, 0)) as sock:
        for n, piece in enumerate(pieces):
            if n:
                time.sleep(0.05)
            try:
                sock.sendall(piece)
            except OSError:
                break  # closed on us: what it answered is the result
        reply = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            reply += chunk
    return reply


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


def record_of(proxy, count_before: int) -> dict:
    records = proxy.wait_audit(lambda rs: len(rs) > count_before)
    assert len(records) == count_before + 1, records[count_before:]
    return records[-1]


# -- the header names the client --------------------------------------------------------

BELIEVED = [
    pytest.param([v1("10.1.2.3") + GET], "10.1.2.3", id="v1-tcp4"),
    pytest.param([v1("fd00::5", "TCP6", "::1") + GET], "fd00::5", id="v1-tcp6"),
    pytest.param([v1("::ffff:10.1.2.3", "TCP6", "::1") + GET], "10.1.2.3", id="v1-tcp6-ipv4-mapped-is-ipv4"),
    pytest.param([v2("10.1.2.3") + GET], "10.1.2.3", id="v2-inet"),
    pytest.param([v2("fd00::5") + GET], "fd00::5", id="v2-inet6"),
    pytest.param([v2("10.1.2.3", tlv=b"\x04\x00\x01\x00") + GET], "10.1.2.3", id="v2-with-a-tlv-after-the-addresses"),
    pytest.param([v2("10.1.2.3")[:5], v2("10.1.2.3")[5:20], v2("10.1.2.3")[20:], GET], "10.1.2.3",
                 id="v2-in-pieces-then-the-request"),
    pytest.param([b"PRO", v1("10.1.2.3")[3:] + GET[:10], GET[10:]], "10.1.2.3", id="v1-in-pieces"),
]


@pytest.mark.parametrize("pieces, client", BELIEVED)
def test_a_trusted_balancer_names_the_client_for_net_members_and_the_audit_record(balanced, origin, pieces, client):
    before = len(balanced.audit_records())
    reply = send(balanced, pieces)
    assert status(reply) == 200, reply[:300]
    assert [s.path for s in origin.wait_for(1)] == ["/"]
    record = record_of(balanced, before)
    assert (record["client_ip"], record["decision"], record["role"]) == (client, "allow", "office")


def test_a_health_check_header_local_keeps_the_balancers_own_address(balanced, origin):
    before = len(balanced.audit_records())
    reply = send(balanced, [v2(None, version_command=0x20) + GET])
    assert status(reply) == 403 and b"unauthenticated" in reply
    assert origin.wait_for(1, timeout=0.3) == []
    assert record_of(balanced, before)["client_ip"] == BALANCER


def test_v1_unknown_keeps_the_balancers_own_address(balanced, origin):
    before = len(balanced.audit_records())
    reply = send(balanced, [b"PROXY UNKNOWN\r\n" + GET])
    assert status(reply) == 403
    assert record_of(balanced, before)["client_ip"] == BALANCER


def test_the_real_address_holds_for_every_request_of_a_keep_alive_connection(balanced, origin):
    keep = GET.replace(b"Connection: close\r\n", b"")
    before = len(balanced.audit_records())
    reply = send(balanced, [v2("10.1.2.9") + keep, keep, GET])
    assert reply.count(b"HTTP/1.1 200") == 3, reply[:500]
    records = balanced.wait_audit(lambda rs: len(rs) >= before + 3)[before:]
    assert [r["client_ip"] for r in records] == ["10.1.2.9"] * 3


# -- a trusted balancer without a valid header: closed ---------------------------------------

REFUSED = [
    pytest.param([GET], id="no-header-at-all"),
    pytest.param([b"\x16\x03\x01\x00\x05hello"], id="tls-instead-of-a-header"),
    pytest.param([v1("999.1.2.3") + GET], id="v1-address-out-of-range"),
    pytest.param([v1("010.1.2.3") + GET], id="v1-address-with-leading-zero"),
    pytest.param([v1("fd00::5") + GET], id="v1-tcp4-with-an-ipv6-address"),
    pytest.param([v1("10.1.2.3", ports="40000 70000") + GET], id="v1-port-out-of-range"),
    pytest.param([v1("10.1.2.3", ports="40000") + GET], id="v1-a-field-missing"),
    pytest.param([v1("10.1.2.3", family="TCP5") + GET], id="v1-unknown-family"),
    pytest.param([b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 3128\n" + GET], id="v1-lf-without-cr"),
    pytest.param([b"PROXY TCP4 " + b"1" * 120 + b"\r\n" + GET], id="v1-longer-than-107-bytes"),
    pytest.param([v2("10.1.2.3", version_command=0x11) + GET], id="v2-version-1-in-a-binary-header"),
    pytest.param([v2("10.1.2.3", version_command=0x22) + GET], id="v2-unknown-command"),
    pytest.param([V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 4) + b"\x0a\x01\x02\x03" + GET],
                 id="v2-shorter-than-its-addresses"),
    pytest.param([V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x12, 12) + bytes(12) + GET], id="v2-udp"),
    pytest.param([V2_SIGNATURE[:6] + b"X" + GET], id="v2-signature-broken"),
]


@pytest.mark.parametrize("pieces", REFUSED)
def test_a_trusted_peer_without_a_valid_header_is_closed_and_nothing_passes(balanced, origin, pieces):
    refused, before = _refused(balanced), len(balanced.audit_records())
    reply = send(balanced, pieces)
    assert reply == b""
    assert origin.wait_for(1, timeout=0.3) == []
    assert balanced.audit_records()[before:] == []
    assert _refused(balanced) == refused + 1
    assert [r["error"] for r in balanced.oplog() if r.get("event") == "proxy_header_refused"][-1]


def _refused(proxy) -> float:
    for line in proxy.metrics().splitlines():
        if line.startswith("accessgate_proxy_header_refused_total "):
            return float(line.split()[1])
    raise AssertionError("accessgate_proxy_header_refused_total is not exported")


def test_a_refusal_is_counted_once_per_connection(balanced, origin):
    before = _refused(balanced)
    send(balanced, [GET])
    send(balanced, [v1("999.1.2.3")])
    assert _refused(balanced) == before + 2


def test_a_trusted_peer_that_hangs_up_before_its_header_is_not_counted_as_refused(balanced, origin):
    before = _refused(balanced)
    send(balanced, [v2("10.1.2.3")[:10]])
    send(balanced, [])
    assert _refused(balanced) == before
    assert balanced.alive()


# -- anyone else: a PROXY header is not believed --------------------------------------------

@pytest.mark.parametrize("header", [v1("10.1.2.3"), v2("10.1.2.3")], ids=["v1", "v2"])
def test_a_client_that_sends_its_own_header_directly_is_not_believed(balanced, origin, header):
    before = len(balanced.audit_records())
    reply = send(balanced, [header + GET], source=OUTSIDER)
    assert status(reply) != 200, reply[:300]
    assert origin.wait_for(1, timeout=0.3) == []
    assert all(r["client_ip"] != "10.1.2.3" for r in balanced.audit_records()[before:])


def test_an_outsider_is_decided_on_its_own_address(balanced, origin):
    before = len(balanced.audit_records())
    reply = send(balanced, [GET], source=OUTSIDER)
    assert status(reply) == 403 and b"unauthenticated" in reply
    assert record_of(balanced, before)["client_ip"] == OUTSIDER


def test_without_the_option_a_header_is_not_read(mitm_confdir, session_origin, tmp_path, origin):
    (tmp_path / "policy.yaml").write_text(POLICY)
    proxy = start_proxy(policy=tmp_path / "policy.yaml", confdir=mitm_confdir, origin=session_origin,
                        workdir=tmp_path)
    try:
        reply = send(proxy, [v1("10.1.2.3") + GET])
        assert status(reply) != 200
        assert origin.wait_for(1, timeout=0.3) == []
        assert all(r["client_ip"] != "10.1.2.3" for r in proxy.audit_records())
    finally:
        proxy.stop()


# -- the option ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, options, message", [
    ("10.0.0.5/24", {}, "write 10.0.0.0/24 for the network or 10.0.0.5/32"),
    ("haproxy.internal", {}, "is not an address or a CIDR network"),
    ("10.0.0.0/8", {"mode": "socks5"}, "read only in regular and upstream mode"),
], ids=["host-bits-set", "a-name", "socks5-mode"])
def test_a_bad_trusted_proxies_value_stops_the_proxy_with_what_to_write(mitm_confdir, tmp_path, value, options,
                                                                       message):
    (tmp_path / "policy.yaml").write_text(POLICY)
    with pytest.raises(ProxyFailed, match=message):
        start_proxy(policy=tmp_path / "policy.yaml", confdir=mitm_confdir, workdir=tmp_path,
                    options={"accessgate_trusted_proxies": value, **options})
