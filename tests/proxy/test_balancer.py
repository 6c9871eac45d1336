"""PROXY protocol headers as proxy/balancer.py reads them: every rule a table row.

The end-to-end behaviour (a real mitmdump, a real HAProxy) is in
tests/e2e/test_client_address.py and tests/ops/test_haproxy_client_address.py;
here are the parser's edges, byte by byte.
"""

from __future__ import annotations

import struct

import pytest

from accessgate.proxy.balancer import Header, MalformedHeader, TrustedBalancers, parse_networks, read_header

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(version_command: int, family: int, body: bytes) -> bytes:
    return SIG + struct.pack("!BBH", version_command, family, len(body)) + body


INET = bytes([10, 1, 2, 3, 127, 0, 0, 1]) + struct.pack("!HH", 40000, 3128)
INET6 = bytes.fromhex("fd00" + "00" * 13 + "05") + bytes(15) + b"\x01" + struct.pack("!HH", 40000, 3128)

VALID = [
    ("v1-tcp4", b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 3128\r\n", ("10.1.2.3", 40000)),
    ("v1-tcp6", b"PROXY TCP6 fd00::5 ::1 40000 3128\r\n", ("fd00::5", 40000)),
    ("v1-tcp6-mapped-is-ipv4", b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1 2\r\n", ("10.1.2.3", 1)),
    ("v1-port-zero", b"PROXY TCP4 10.1.2.3 127.0.0.1 0 0\r\n", ("10.1.2.3", 0)),
    ("v1-unknown-keeps-the-peer", b"PROXY UNKNOWN\r\n", None),
    ("v1-unknown-with-addresses", b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", None),
    ("v2-inet", v2(0x21, 0x11, INET), ("10.1.2.3", 40000)),
    ("v2-inet6", v2(0x21, 0x21, INET6), ("fd00::5", 40000)),
    ("v2-with-tlvs", v2(0x21, 0x11, INET + b"\x04\x00\x01\x00"), ("10.1.2.3", 40000)),
    ("v2-local-keeps-the-peer", v2(0x20, 0x00, b""), None),
    ("v2-local-with-addresses", v2(0x20, 0x11, INET), None),
    ("v2-unspec-keeps-the-peer", v2(0x21, 0x00, b""), None),
    ("v2-unix-keeps-the-peer", v2(0x21, 0x31, bytes(216)), None),
]


@pytest.mark.parametrize("header, source", [(h, s) for _, h, s in VALID], ids=[i for i, _, _ in VALID])
def test_a_valid_header_names_the_client_and_its_length(header, source):
    assert read_header(header + b"GET / HTTP/1.1\r\n") == Header(len(header), source)


@pytest.mark.parametrize("header", [h for _, h, _ in VALID], ids=[i for i, _, _ in VALID])
def test_every_prefix_of_a_valid_header_waits_for_more(header):
    for end in range(len(header)):
        assert read_header(header[:end]) is None, end


INVALID = [
    ("http-request", b"GET / HTTP/1.1\r\n"),
    ("tls-record", b"\x16\x03\x01\x00\x05"),
    ("lower-case-proxy", b"proxy TCP4 10.1.2.3 127.0.0.1 1 2\r\n"),
    ("v1-two-spaces", b"PROXY TCP4  10.1.2.3 127.0.0.1 1 2\r\n"),
    ("v1-out-of-range", b"PROXY TCP4 256.1.2.3 127.0.0.1 1 2\r\n"),
    ("v1-leading-zero-address", b"PROXY TCP4 010.1.2.3 127.0.0.1 1 2\r\n"),
    ("v1-ipv6-as-tcp4", b"PROXY TCP4 fd00::5 127.0.0.1 1 2\r\n"),
    ("v1-ipv4-as-tcp6", b"PROXY TCP6 10.1.2.3 ::1 1 2\r\n"),
    ("v1-scoped-ipv6", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
    ("v1-port-too-big", b"PROXY TCP4 10.1.2.3 127.0.0.1 65536 2\r\n"),
    ("v1-port-leading-zero", b"PROXY TCP4 10.1.2.3 127.0.0.1 080 2\r\n"),
    ("v1-port-signed", b"PROXY TCP4 10.1.2.3 127.0.0.1 +80 2\r\n"),
    ("v1-port-unicode-digit", "PROXY TCP4 10.1.2.3 127.0.0.1 ٨٠ 2\r\n".encode()),
    ("v1-extra-field", b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2 3\r\n"),
    ("v1-lf-only", b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2\n"),
    ("v1-no-crlf-within-107", b"PROXY TCP4 " + b"1" * 100),
    ("v1-udp", b"PROXY UDP4 10.1.2.3 127.0.0.1 1 2\r\n"),
    ("v2-version-1", v2(0x11, 0x11, INET)),
    ("v2-version-3", v2(0x31, 0x11, INET)),
    ("v2-command-2", v2(0x22, 0x11, INET)),
    ("v2-family-5", v2(0x21, 0x51, INET)),
    ("v2-udp", v2(0x21, 0x12, INET)),
    ("v2-inet-too-short", v2(0x21, 0x11, INET[:11])),
    ("v2-inet6-too-short", v2(0x21, 0x21, INET)),
    ("v2-broken-signature", b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4)),
]


@pytest.mark.parametrize("data", [d for _, d in INVALID], ids=[i for i, _ in INVALID])
def test_anything_else_is_malformed(data):
    with pytest.raises(MalformedHeader):
        read_header(data)


@pytest.mark.parametrize("values, trusted, untrusted", [
    (["10.0.5.10/32"], ["10.0.5.10", "::ffff:10.0.5.10"], ["10.0.5.11", "fd00::1"]),
    (["10.0.5.0/24", "fd00::/8"], ["10.0.5.200", "fd00::1"], ["10.0.6.1", "fe80::1"]),
    (["127.0.0.1"], ["127.0.0.1"], ["127.0.0.2"]),
    ([], [], ["127.0.0.1"]),
], ids=["one-address", "networks-of-both-families", "bare-address", "empty-trusts-nobody"])
def test_trusted_peers(values, trusted, untrusted):
    balancers = TrustedBalancers()
    balancers.configure(values, ["regular"])
    assert [balancers.trusts((a, 1)) for a in trusted] == [True] * len(trusted)
    assert [balancers.trusts((a, 1)) for a in untrusted] == [False] * len(untrusted)


@pytest.mark.parametrize("values, modes, message", [
    (["10.0.0.5/24"], ["regular"], "write 10.0.0.0/24 for the network or 10.0.0.5/32 for one address"),
    (["haproxy"], ["regular"], "'haproxy' is not an address or a CIDR network"),
    (["10.0.0.0/33"], ["regular"], "is not an address or a CIDR network"),
    (["10.0.0.0/8"], ["regular", "socks5"], "not in socks5"),
    (["10.0.0.0/8"], ["reverse:http://example.com@8081"], "not in reverse:"),
], ids=["host-bits", "a-name", "bad-prefix", "socks5", "reverse"])
def test_option_errors_say_what_to_write(values, modes, message):
    with pytest.raises(ValueError, match=message):
        TrustedBalancers().configure(values, modes)


def test_upstream_mode_reads_headers_too():
    TrustedBalancers().configure(["10.0.0.0/8"], ["upstream:http://parent:3128", "regular@8081"])
    assert parse_networks([" 10.0.0.0/8 "])[0].prefixlen == 8
