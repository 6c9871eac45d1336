"""Connections that stay open stay decided: raw relays and bodies that start streaming late.

Issue 14 found three ways to keep a connection open past the policy: a
tunnel mitmproxy relays unread (an operator's ignore_hosts or tcp_hosts
tunnel), an Upgrade other than a version-13 WebSocket answered with 101
(mitmproxy relays the rest raw), and a body of unknown length that mitmproxy
switches to streaming after its headers hooks (stream_large_bodies).  None
was re-decided or charged, and their records said `bytes: 0`.  Each must
be closed within seconds of a reload that revokes it or of its quota
running out, and audited with the bytes it carried.

Real mitmdump, real origin (tests/support/origin.py: /upgrade answers 101
and echoes, /chunked/N trickles a download), raw sockets as clients.
"""

from __future__ import annotations

import select
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from accessgate.stores import open_store
from support.origin import payload
from support.policies import everyone_policy
from support.wire import BioTLS, basic, h2, request

PASSTHROUGH = Path(__file__).resolve().parents[1] / "support" / "passthrough_sni.py"

pytestmark = pytest.mark.e2e


def chat_policy(access: str) -> str:
    return everyone_policy({"chat": access}, unauthenticated="deny", unlisted="allow")


REVOKED_WITHIN = 5.0  # seconds: the policy file is polled every 0.5 s, open flows reviewed every 1 s


@pytest.fixture
def start(proxy_factory, htpasswd, tmp_path):
    def go(access: str = "full", options=None, state: str = "memory:"):
        policy = tmp_path / "policy.yaml"
        policy.write_text(chat_policy(access))
        options = dict(options or {})
        proxy = proxy_factory(
            policy=policy,
            state=state,
            scripts=[PASSTHROUGH] if "passthrough_sni" in options else [],
            options={"proxyauth": f"@{htpasswd}", "route_raw_to_origin": True, "ssl_insecure": True, **options},
        )
        return proxy, policy

    return go


# -- clients ----------------------------------------------------------------------


class Relay:
    """A raw connection through the proxy to the origin's /upgrade echo."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"no 101 from the origin: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.count = 0

    def ping(self) -> bool:
        """Send a few bytes; True when they came back (the relay is open)."""
        self.count += 1
        data = b"ping-%d;" % self.count
        try:
            self.sock.sendall(data)
            self.sock.settimeout(3)
            got = b""
            while len(got) < len(data):
                chunk = self.sock.recv(4096)
                if not chunk:
                    return False
                got += chunk
            return got == data
        except OSError:
            return False

    def closed_within(self, seconds: float) -> float | None:
        """Ping until the relay is closed: the seconds that took, or None if it stayed open."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if not self.ping():
                return time.monotonic() - started
            time.sleep(0.2)
        return None


def _proxy_socket(proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def _tunnel(proxy, target: str) -> socket.socket:
    """A socket through the proxy to `target` (HOST:PORT), the CONNECT answered with 200."""
    sock = _proxy_socket(proxy)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {basic()}\r\n\r\n".encode())
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return sock


UPGRADE = b"GET /upgrade HTTP/1.1\r\nHost: chat.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"


def tunnel_relay(proxy) -> Relay:
    """CONNECT chat.test:80 (relayed unread by ignore_hosts or tcp_hosts), then an Upgrade inside."""
    sock = _tunnel(proxy, "chat.test:80")
    sock.sendall(UPGRADE)
    return Relay(sock)


def upgrade_relay(proxy, version: str = "8") -> Relay:
    """A WebSocket upgrade of another version than 13: the site answers 101, mitmproxy relays it raw."""
    sock = _proxy_socket(proxy)
    sock.sendall(
        b"GET http://chat.test/upgrade HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + f"Sec-WebSocket-Version: {version}\r\nProxy-Authorization: {basic()}\r\n\r\n".encode()
    )
    return Relay(sock)


def passthrough_relay(proxy) -> Relay:
    """CONNECT chat.test:443 with TLS that another addon (loaded after accessgate) passes through unread."""
    conn = BioTLS(_tunnel(proxy, "chat.test:443"), "chat.test")
    conn.sendall(UPGRADE)
    return Relay(conn)


RELAYS = [
    # id, proxy options, how the relay is opened
    ("ignore-hosts-tunnel", {"ignore_hosts": [r"^chat\.test"]}, tunnel_relay),
    ("tcp-hosts-tunnel", {"tcp_hosts": [r"^chat\.test"]}, tunnel_relay),
    ("websocket-version-8", {}, upgrade_relay),
    ("passthrough-another-addon-asks-for", {"passthrough_sni": r"\.test$"}, passthrough_relay),
]  # fmt: skip


def relay_records(proxy) -> list[dict]:
    return [r for r in proxy.audit_records() if r["path"] in ("", "/upgrade")]


# -- raw relays ----------------------------------------------------------------------


@pytest.mark.parametrize("options,open_relay", [r[1:] for r in RELAYS], ids=[r[0] for r in RELAYS])
def test_a_reload_that_revokes_access_closes_a_raw_relay(start, origin, options, open_relay):
    proxy, policy = start(options=options)
    relay = open_relay(proxy)
    assert relay.ping() and relay.ping(), "the relay does not work while allowed"
    policy.write_text(chat_policy("deny"))
    revoked = time.monotonic()

    waited = relay.closed_within(REVOKED_WITHIN + 4)

    assert waited is not None, "the raw relay stayed open after a reload revoked its site"
    assert waited < REVOKED_WITHIN, f"closed only {waited:.1f} s after the reload"
    late = [data for at, data in origin.relayed if at > revoked + REVOKED_WITHIN]
    assert late == [], f"bytes reached the site after the relay should have been closed: {late}"
    proxy.wait_audit(lambda rs: any(r["path"] in ("", "/upgrade") for r in rs))
    [record] = relay_records(proxy)
    assert record["decision"] == "allow" and record["site"] == "chat"
    if "passthrough_sni" not in options:  # that relay runs inside mitmproxy's TLS layer, out of sight
        assert record["bytes_in"] >= len(b"ping-1;ping-2;") and record["bytes_out"] >= len(b"ping-1;ping-2;"), record
    closed = proxy.wait_audit(lambda rs: rs, event="flow_closed")
    assert [(r["site"], r["reason"], r["user"]) for r in closed] == [("chat", "denied", "zoe")]


def test_a_raw_relay_spends_quota_and_is_closed_when_it_runs_out(start, origin, tmp_path):
    """Both kinds of relay at once: one minute a day, charged by their traffic, ends both at the next minute."""
    spec = f"sqlite:{tmp_path / 'state.sqlite'}"
    proxy, _ = start(access="{level: full, daily_minutes: 1}", state=spec,
                     options={"ignore_hosts": [r"^chat\.test"]})
    if time.time() % 60 > 55:  # open and charge both well inside one minute
        time.sleep(61 - time.time() % 60)
    tunnel, upgraded = tunnel_relay(proxy), upgrade_relay(proxy)
    opened_minute = int(time.time()) // 60
    assert tunnel.ping() and upgraded.ping()
    seconds_left = 60 - time.time() % 60

    open_relays, deadline = [tunnel, upgraded], time.monotonic() + seconds_left + REVOKED_WITHIN
    while open_relays and time.monotonic() < deadline:  # both carry traffic all along
        open_relays = [relay for relay in open_relays if relay.ping()]
        time.sleep(0.5)

    assert open_relays == [], "a raw relay outlived its daily quota"
    assert int(time.time()) // 60 == opened_minute + 1, "closed in another minute than the first one unpaid"
    closed = proxy.wait_audit(lambda rs: len(rs) >= 2, event="flow_closed")
    assert sorted(r["reason"] for r in closed) == ["quota-exhausted", "quota-exhausted"]
    assert proxy.stop() == 0
    store = open_store(spec)
    try:
        usage = store.usage("user:zoe", "chat", datetime.now(timezone.utc).date(), opened_minute)
    finally:
        store.close()
    assert (usage.used, usage.current_counted) == (1, True), "the relays' minute was not charged"


def test_a_passthrough_another_addon_asks_for_is_still_decided(start, origin):
    """The addon runs after accessgate's hooks; a passthrough to a denied name is intercepted instead."""
    proxy, _ = start(access="deny", options={"passthrough_sni": r"\.test$"})
    sock = _proxy_socket(proxy)
    sock.sendall(f"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n"
                 f"Proxy-Authorization: {basic()}\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    conn = BioTLS(sock, "chat.test")  # denied; the CONNECT target is unlisted
    conn.sendall(request("GET", "/", [("Host", "example.test")]))
    conn.settimeout(5)
    answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert origin.requests == []


def test_a_version_8_upgrade_on_a_read_only_site_is_refused(start, origin):
    proxy, _ = start(access="read-only")
    sock = _proxy_socket(proxy)
    sock.sendall(
        b"GET http://chat.test/upgrade HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Version: 8\r\nProxy-Authorization: {basic()}\r\n\r\n".encode()
    )
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 403") and b"read-only" in answer, answer
    assert origin.requests == []


def test_a_101_the_site_sends_unasked_on_a_read_only_site_is_killed(start, origin):
    """A read (no Upgrade header) answered with 101 would become a raw connection to write on."""
    proxy, _ = start(access="read-only")
    sock = _proxy_socket(proxy)
    sock.sendall(f"GET http://chat.test/upgrade HTTP/1.1\r\nHost: chat.test\r\nProxy-Authorization: {basic()}\r\n\r\n"
                 .encode())
    sock.settimeout(5)
    try:
        answer = sock.recv(4096)
    except OSError:
        answer = b""
    assert answer == b"", f"the client got {answer[:80]!r}"
    [record] = proxy.wait_audit(lambda rs: rs)
    assert (record["decision"], record["reason"], record["error"]) == ("block", "read-only", "killed")


# -- bodies that mitmproxy starts to stream after their headers ------------------------


def _read_some(sock: socket.socket, until: int, timeout: float = 10) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < until and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_download_that_streams_late_is_closed_when_revoked_and_counted(start, origin):
    proxy, policy = start(options={"stream_large_bodies": "1k"})
    sock = _proxy_socket(proxy)
    sock.sendall(f"GET http://chat.test/chunked/400000 HTTP/1.1\r\nHost: chat.test\r\n"
                 f"Proxy-Authorization: {basic()}\r\n\r\n".encode())
    got = _read_some(sock, 16 * 1024)
    assert got.startswith(b"HTTP/1.1 200"), got[:100]
    policy.write_text(chat_policy("deny"))
    revoked = time.monotonic()
    sock.settimeout(REVOKED_WITHIN + 5)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    waited = time.monotonic() - revoked

    assert waited < REVOKED_WITHIN, f"the download ran on for {waited:.1f} s after its site was revoked"
    assert len(got) < 400_000
    [record] = proxy.wait_audit(lambda rs: rs)
    body = len(got) - len(got.split(b"\r\n\r\n", 1)[0]) - 4
    assert 16 * 1024 - 1024 < record["bytes_out"] <= body, (record, body)
    assert origin.sent >= record["bytes_out"]


def test_an_upload_that_streams_late_is_closed_when_revoked_and_counted(start, origin):
    proxy, policy = start(options={"stream_large_bodies": "1k"})
    sock = _proxy_socket(proxy)
    sock.sendall(f"POST http://chat.test/echo HTTP/1.1\r\nHost: chat.test\r\nTransfer-Encoding: chunked\r\n"
                 f"Proxy-Authorization: {basic()}\r\n\r\n".encode())
    chunk = b"200\r\n" + b"u" * 512 + b"\r\n"
    sent, revoked, closed_after = 0, None, None
    started = time.monotonic()
    while time.monotonic() - started < 20:
        if revoked is None and time.monotonic() - started > 1.0:
            policy.write_text(chat_policy("deny"))
            revoked = time.monotonic()
        try:
            if select.select([sock], [], [], 0)[0] and sock.recv(65536) == b"":
                raise ConnectionError("closed by the proxy")
            sock.sendall(chunk)
            sent += 512
        except OSError:
            closed_after = time.monotonic() - revoked if revoked else 0.0
            break
        time.sleep(0.1)

    assert closed_after is not None, "the upload went on for 20 s after its site was revoked"
    assert closed_after < REVOKED_WITHIN, f"closed only {closed_after:.1f} s after the reload"
    [record] = proxy.wait_audit(lambda rs: rs)
    assert 1024 < record["bytes_in"] <= sent, (record, sent)
    assert origin.requests == []  # the body never ended, so the site never took it as a request


def test_a_blocked_http2_upload_of_unknown_length_is_killed_not_half_answered(start, origin):
    """mitmproxy would switch its body to streaming under a 403 and raise; the record said 403."""
    proxy, _ = start(access="read-only", options={"stream_large_bodies": "1k"})
    reply = h2(proxy, "chat.test:443", [(":method", "POST"), (":scheme", "https"), (":authority", "chat.test"),
                                        (":path", "/echo")], b"x" * 5000)
    assert reply.status == 0
    [record] = proxy.wait_audit(lambda rs: rs)
    assert (record["decision"], record["reason"], record["status"], record["error"]) == \
        ("block", "read-only", None, "killed")
    assert origin.requests == []
    assert "NotImplementedError" not in proxy.output()


@pytest.mark.parametrize("size", [100, 3000])
def test_a_small_chunked_download_still_arrives_whole_and_counted(start, origin, size):
    proxy, _ = start(options={"stream_large_bodies": "1k"})
    sock = _proxy_socket(proxy)
    sock.sendall(f"GET http://chat.test/chunked/{size} HTTP/1.1\r\nHost: chat.test\r\n"
                 f"Proxy-Authorization: {basic()}\r\nConnection: close\r\n\r\n".encode())
    raw = _read_some(sock, 10**6)
    head, _, body = raw.partition(b"\r\n\r\n")
    data, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            break
        data, rest = data + rest[:n], rest[n + 2 :]
    assert head.startswith(b"HTTP/1.1 200") and data == payload(size)
    [record] = proxy.wait_audit(lambda rs: rs)
    assert record["bytes_out"] == size


def test_a_small_chunked_upload_still_arrives_whole_and_counted(start, origin):
    proxy, _ = start(options={"stream_large_bodies": "1k"})
    sock = _proxy_socket(proxy)
    sock.sendall(f"POST http://chat.test/echo HTTP/1.1\r\nHost: chat.test\r\nTransfer-Encoding: chunked\r\n"
                 f"Proxy-Authorization: {basic()}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode())
    raw = _read_some(sock, 10**6)
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"hello"), raw
    [seen] = origin.requests
    assert seen.body_length == 5
    [record] = proxy.wait_audit(lambda rs: rs)
    assert record["bytes_in"] == 5
