"""What a tunnel's first bytes are, read as a server reads them (accessgate.proxy.firstbytes)."""

from __future__ import annotations

import pytest

from accessgate.proxy.firstbytes import Hello, could_become_http, http_hosts, read_hello, tls_prefix
from support.wire import client_hello

HELLO = client_hello(["facebook.test"])
TWO_NAMES = client_hello(["bank.test", "facebook.test"])


def odd_version(hello: bytes) -> bytes:
    return hello[:1] + b"\x03\x04" + hello[3:]


def two_records(hello: bytes, cut: int = 20) -> bytes:
    """The same handshake message in two records, as a client may fragment it."""
    message = hello[5:]
    return (b"\x16\x03\x01" + len(message[:cut]).to_bytes(2, "big") + message[:cut]
            + b"\x16\x03\x01" + len(message[cut:]).to_bytes(2, "big") + message[cut:])  # fmt: skip


HELLOS = [
    # id, bytes so far, what they are, the names they carry
    ("first-byte-alone", HELLO[:1], Hello.PARTIAL, ()),
    ("first-two-bytes", HELLO[:2], Hello.PARTIAL, ()),
    ("record-header-only", HELLO[:5], Hello.PARTIAL, ()),
    ("all-but-the-last-byte", HELLO[:-1], Hello.PARTIAL, ()),
    ("whole", HELLO, Hello.COMPLETE, ("facebook.test",)),
    ("record-version-0304-is-read-all-the-same", odd_version(HELLO), Hello.COMPLETE, ("facebook.test",)),
    ("record-version-0304-still-coming", odd_version(HELLO)[:40], Hello.PARTIAL, ()),
    ("two-names-in-one-extension-both-read", TWO_NAMES, Hello.COMPLETE, ("bank.test", "facebook.test")),
    ("fragmented-over-two-records", two_records(HELLO), Hello.COMPLETE, ("facebook.test",)),
    ("second-record-still-coming", two_records(HELLO)[:40], Hello.PARTIAL, ()),
    ("bytes-after-the-hello-are-left-alone", HELLO + b"\x17\x03\x03\x00\x01x", Hello.COMPLETE, ("facebook.test",)),
    ("empty-record", b"\x16\x03\x01\x00\x00", Hello.INVALID, ()),
    ("handshake-that-is-no-client-hello", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", Hello.INVALID, ()),
    ("garbage-inside-a-whole-hello", b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff", Hello.INVALID, ()),
    ("second-record-of-another-type", two_records(HELLO)[:25] + b"\x17" + two_records(HELLO)[26:],
     Hello.INVALID, ()),
    ("major-version-2-is-not-tls", b"\x16\x02\x00" + HELLO[3:], Hello.NONE, ()),
    ("plain-http", b"GET / HTTP/1.1\r\n", Hello.NONE, ()),
    ("application-data-record", b"\x17\x03\x03\x00\x01x", Hello.NONE, ()),
]  # fmt: skip


@pytest.mark.parametrize("data,state,names", [h[1:] for h in HELLOS], ids=[h[0] for h in HELLOS])
def test_a_client_hello_is_read_as_a_server_reads_it(data, state, names):
    assert read_hello(data)[:2] == (state, names)


@pytest.mark.parametrize("data,ech", [
    (HELLO, False),
    (client_hello(["example.test"], ech=True), True),
    (two_records(client_hello(["example.test"], ech=True)), True),
    (client_hello([], ech=True), True),
], ids=["plain-hello", "encrypted-client-hello", "encrypted-client-hello-over-two-records", "ech-without-outer-sni"])
def test_an_encrypted_client_hello_is_told_apart(data, ech):
    got = read_hello(data)
    assert got.state is Hello.COMPLETE and got.ech is ech


@pytest.mark.parametrize("data,prefix", [
    (b"\x16", True), (b"\x16\x03", True), (b"\x16\x03\x04", False), (b"\x16\x02", False), (b"G", False), (b"", False),
])  # fmt: skip
def test_only_the_first_one_or_two_bytes_of_a_handshake_record_are_a_prefix(data, prefix):
    assert tls_prefix(data) is prefix


REQUEST_STARTS = [
    # id, bytes so far, whether mitmproxy may still read them as HTTP once more come
    ("first-letter", b"G", True),
    ("method-and-space", b"GET ", True),
    ("request-line-without-its-end", b"GET / HTTP/1.1", True),
    ("lower-case-method", b"get /", True),
    ("line-end-came", b"GET / HTTP/1.1\r\n", False),
    ("line-end-before-anything", b"\r\nGET / HTTP/1.1", False),
    ("binary", b"\x00\x01", False),
    ("digit-first", b"1GET", False),
    ("ssh-greeting", b"SSH-2.0-OpenSSH", False),
]  # fmt: skip


@pytest.mark.parametrize("data,possible", [r[1:] for r in REQUEST_STARTS], ids=[r[0] for r in REQUEST_STARTS])
def test_a_request_line_still_coming_could_become_http(data, possible):
    assert could_become_http(data) is possible


HOSTS = [
    ("one-host", b"GET / HTTP/1.1\r\nHost: facebook.test\r\n\r\n", ["facebook.test"]),
    ("every-host", b"GET / HTTP/1.1\r\nHost: a.test\r\nX: y\r\nhOsT:b.test \r\n\r\n", ["a.test", "b.test"]),
    ("absolute-form-url", b"GET http://c.test:8080/x HTTP/1.1\r\nHost: a.test\r\n\r\n", ["c.test:8080", "a.test"]),
    ("only-the-first-head", b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: b.test\r\n\r\n",
     ["a.test"]),
    ("a-host-in-the-body-is-no-header", b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\n\r\nHost: b.test\r\n",
     []),
]  # fmt: skip


@pytest.mark.parametrize("data,hosts", [h[1:] for h in HOSTS], ids=[h[0] for h in HOSTS])
def test_the_first_request_head_names_its_hosts(data, hosts):
    assert http_hosts(data) == hosts
