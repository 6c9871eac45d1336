"""The client's address as the policy sees it, from a socket peername."""

import ipaddress

import pytest

from accessgate.proxy.identity import client_ip


@pytest.mark.parametrize(
    "peername, expected",
    [
        pytest.param(("127.0.0.1", 50000), "127.0.0.1", id="ipv4"),
        pytest.param(("::ffff:10.0.0.1", 50000, 0, 0), "10.0.0.1", id="ipv4-mapped-ipv6-is-ipv4"),
        pytest.param(("fe80::1%eth0", 50000, 0, 2), "fe80::1", id="ipv6-scope-dropped"),
        pytest.param(("2001:db8::1", 443, 0, 0), "2001:db8::1", id="ipv6"),
        pytest.param("192.0.2.7", "192.0.2.7", id="bare-address"),
        pytest.param(None, None, id="no-peername"),
        pytest.param(("not an address", 1), None, id="garbage-is-no-address"),
    ],
)
def test_client_address_from_peername(peername, expected):
    got = client_ip(peername)
    assert got == (ipaddress.ip_address(expected) if expected is not None else None)


def test_every_connection_from_one_address_shares_one_address_object():
    # The proxy remembers the text of an address by the object; one object
    # per address keeps that memory to one entry per client, not per connection.
    assert client_ip(("198.51.100.9", 1)) is client_ip(("198.51.100.9", 2))
