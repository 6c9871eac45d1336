"""Which upstream addresses belong to the proxy's own host (proxy/upstream.py), by case."""

from __future__ import annotations

import ipaddress

import pytest

from accessgate.proxy.upstream import (
    LINK_LOCAL,
    LOOPBACK,
    MULTICAST,
    THIS_HOST,
    UNSPECIFIED,
    BoundHere,
    UpstreamGuard,
    interface_addresses,
    own_address_reason,
    parse_allowed,
)

HERE = ipaddress.ip_address("198.51.100.10")  # stands for one of this host's interface addresses

# id, address, why it is the proxy's own (None: an address elsewhere)
CASES = [
    ("ipv4-loopback", "127.0.0.1", LOOPBACK),
    ("any-127-address-is-loopback", "127.45.6.7", LOOPBACK),
    ("ipv6-loopback", "::1", LOOPBACK),
    ("ipv4-mapped-loopback", "::ffff:127.0.0.1", LOOPBACK),
    ("cloud-metadata-is-link-local", "169.254.169.254", LINK_LOCAL),
    ("ipv6-link-local", "fe80::1", LINK_LOCAL),
    ("ipv4-mapped-link-local", "::ffff:169.254.169.254", LINK_LOCAL),
    ("unspecified-ipv4-reaches-this-host", "0.0.0.0", UNSPECIFIED),
    ("unspecified-ipv6", "::", UNSPECIFIED),
    ("multicast", "224.0.0.1", MULTICAST),
    ("an-interface-address-of-this-host", str(HERE), THIS_HOST),
    ("ipv4-mapped-interface-address", f"::ffff:{HERE}", THIS_HOST),
    ("an-address-elsewhere", "203.0.113.7", None),
    ("a-private-address-elsewhere-is-not-own", "10.1.2.3", None),
    ("a-global-ipv6-elsewhere", "2001:db8::7", None),
]  # fmt: skip


@pytest.mark.parametrize("address,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_own_addresses_by_class(address, reason):
    assert own_address_reason(ipaddress.ip_address(address), lambda ip: ip == HERE) == reason


def test_this_hosts_interface_addresses_are_read_from_the_system():
    own = interface_addresses()
    assert ipaddress.ip_address("127.0.0.1") in own
    assert ipaddress.ip_address("203.0.113.7") not in own


def test_interface_addresses_are_read_again_after_the_refresh_interval(monkeypatch):
    now = [0.0]
    reads = []
    monkeypatch.setattr("accessgate.proxy.upstream.interface_addresses", lambda: reads.append(1) or frozenset({HERE}))
    bound = BoundHere(clock=lambda: now[0])
    assert bound(HERE) and bound(HERE)
    assert len(reads) == 1
    now[0] += BoundHere.REFRESH
    assert bound(HERE)
    assert len(reads) == 2


@pytest.mark.parametrize(
    "allowed,address,refused",
    [
        ([], "127.0.0.1", LOOPBACK),
        (["127.0.0.1"], "127.0.0.1", None),
        (["127.0.0.1/32"], "127.0.0.2", LOOPBACK),
        (["127.0.0.0/8"], "127.0.0.2", None),
        (["127.0.0.0/8"], "169.254.169.254", LINK_LOCAL),
        ([], "a-name.example", None),  # names are checked on the address connected to
    ],
    ids=["nothing-allowed", "an-allowed-address", "an-address-beside-it", "an-allowed-network",
         "allowing-loopback-is-not-allowing-metadata", "a-name-is-not-an-address"],
)  # fmt: skip
def test_only_what_the_operator_allows_is_reached(allowed, address, refused):
    guard = UpstreamGuard(count=lambda reason: None)
    guard.allow(parse_allowed(allowed))
    assert guard.refusal(address) == refused


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1/33", "not an address", ""])
def test_a_bad_allowance_is_refused_with_what_to_write(value):
    with pytest.raises(ValueError, match="accessgate_upstream_allow: .* e.g. 127.0.0.1/32"):
        parse_allowed([value])
