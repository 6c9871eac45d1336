"""Decrypt only what the policy needs to see (issue 18), through a real mitmdump with real TLS clients.

curl and Python's ssl speak TLS through the proxy to the test origin, which
speaks TLS itself (tests/support/origin.py, certificate CN=origin.test).
A client that sees the origin's own certificate was passed through; one
that sees a certificate from the mitmproxy CA was decrypted.  The origin's
record says what reached the site, the audit log what the proxy recorded.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from mitmproxy import version as mitmproxy_version

from accessgate.stores import open_store
from support.clients import PASSWORD, curl
from support.origin import payload
from support.wire import basic

pytestmark = pytest.mark.e2e

CLOSED_WITHIN = 5.0  # seconds: the policy file is polled every 0.5 s, open connections reviewed every 1 s


def policy_text(chat: str = "full", extra: str = "") -> str:
    return f"""\
version: 1
timezone: UTC
sites:
  chat: {{domains: [chat.test]}}
  news: {{domains: [news.test]}}
  games: {{domains: [games.test]}}
  intranet: {{domains: [intranet.test]}}
roles:
  everyone:
    members: [all]
    access:
      chat: {chat}
      news: read-only
      games: deny
      "*": read-only
never_inspect: [intranet.test, bank.test]
unauthenticated: deny
unlisted: allow
{extra}"""


@pytest.fixture
def start(proxy_factory, htpasswd, tmp_path):
    def go(chat: str = "full", state: str = "memory:", **options):
        policy = tmp_path / "policy.yaml"
        policy.write_text(policy_text(chat))
        proxy = proxy_factory(
            policy=policy,
            state=state,
            options={"proxyauth": f"@{htpasswd}", "route_raw_to_origin": True, "ssl_insecure": True, **options},
        )
        return proxy, policy

    return go


def issuers(result) -> list[str]:
    """The issuers curl printed for `-w %{certs}`."""
    return re.findall(r"^Issuer:\s*(.+)$", result.stdout, re.M)


def unverified(proxy, url: str, **kwargs):
    """curl that takes any certificate and prints the one it got."""
    return curl(proxy, url, user="zoe", extra=["-k", "-w", "%{certs}"], **kwargs)


def tls_records(proxy, count: int) -> list[dict]:
    """The records of TLS connections not decrypted, once there are `count`."""
    records = proxy.wait_audit(lambda rs: len([r for r in rs if r["scheme"] == "tls"]) >= count, timeout=8)
    return [r for r in records if r["scheme"] == "tls"]


# With lazy connections (as these tests run) accessgate relays a passed-through tunnel itself
# (proxy/splice.py); with eager ones mitmproxy has connected the server already and relays it.
STRATEGIES = pytest.mark.parametrize("strategy", ["lazy", "eager"], ids=["accessgate-relays", "mitmproxy-relays"])


@STRATEGIES
def test_unlisted_and_full_access_https_pass_through_with_the_sites_own_certificate(start, origin, strategy):
    proxy, _ = start(connection_strategy=strategy)

    unlisted = unverified(proxy, "https://www.example.test/page")
    full = unverified(proxy, "https://chat.test/post", method="POST", data=b"hello")

    for result in (unlisted, full):
        assert result.status == 200, result.stderr
        assert issuers(result) == ["CN = origin.test"], result.stdout
    assert (unlisted.body, full.body) == (b"ok GET /page", b"ok POST /post")
    assert [(r.method, r.path, r.header("host")) for r in origin.wait_for(2)] == [
        ("GET", "/page", "www.example.test"), ("POST", "/post", "chat.test")]
    records = tls_records(proxy, 2)
    assert [(r["host"], r["site"], r["decision"], r["inspection"]) for r in records] == [
        ("www.example.test", None, "allow", "unlisted"), ("chat.test", "chat", "allow", "full")]
    for record in records:
        assert record["method"] == "CONNECT" and record["user"] == "zoe"
        assert record["bytes_in"] > 500 and record["bytes_out"] > 500, record  # a TLS handshake each way, and more
        assert record["host"] in record["names"] and record["duration_ms"] > 0
    assert [r for r in proxy.audit_records() if r["scheme"] == "https"] == [], "no per-request record was made"
    counted = re.findall(r'accessgate_tls_connections_total\{inspection="passed-through",site="(\w+)",why="(\w+)"\}',
                         proxy.metrics())
    assert sorted(counted) == [("chat", "full"), ("unlisted", "unlisted")]


@STRATEGIES
def test_a_large_download_through_a_passed_through_tunnel_arrives_whole_and_is_counted(start, origin, strategy):
    proxy, _ = start(connection_strategy=strategy)
    size = 6_000_000

    result = unverified(proxy, f"https://www.example.test/bytes/{size}")

    assert result.status == 200 and issuers(result) == ["CN = origin.test"], result.stderr
    assert result.body == payload(size)
    [record] = tls_records(proxy, 1)
    assert size < record["bytes_out"] < size + 20_000, record  # the body, its TLS framing, the handshake
    assert 0 < record["bytes_in"] < 20_000


def test_read_only_and_blocked_sites_are_decrypted_and_decided_per_request(start, origin):
    proxy, _ = start()

    read = curl(proxy, "https://news.test/article", user="zoe")
    write = curl(proxy, "https://news.test/comment", user="zoe", method="POST", data=b"x")
    denied = curl(proxy, "https://games.test/", user="zoe", headers={"Accept": "text/html"})
    seen = unverified(proxy, "https://news.test/again")

    assert read.status == 200 and read.body == b"ok GET /article", read.stderr  # curl trusted the mitmproxy CA
    assert (write.status, write.reason) == (403, "read-only")
    assert (denied.status, denied.reason) == (403, "denied") and b"games" in denied.body
    assert issuers(seen) == ["CN = mitmproxy, O = mitmproxy"], seen.stdout
    assert [r.path for r in origin.wait_for(2)] == ["/article", "/again"]
    records = proxy.wait_audit(lambda rs: len(rs) >= 4)
    assert [(r["scheme"], r["method"], r["path"], r["decision"]) for r in records] == [
        ("https", "GET", "/article", "allow"), ("https", "POST", "/comment", "block"),
        ("https", "GET", "/", "block"), ("https", "GET", "/again", "allow")]


def test_never_inspected_sites_are_never_decrypted_even_where_the_role_is_read_only(start, origin):
    proxy, _ = start()

    intranet = unverified(proxy, "https://intranet.test/")  # read-only through "*": refused, not decrypted
    bank = unverified(proxy, "https://online.bank.test/transfer", method="POST", data=b"x")  # unlisted: passed

    # The CONNECT was answered (200), then the ClientHello: the connection closed, no certificate at all.
    assert intranet.exit_code == 35 and intranet.body == b"" and issuers(intranet) == [], intranet.stderr
    assert bank.status == 200 and issuers(bank) == ["CN = origin.test"]
    assert [(r.method, r.header("host")) for r in origin.wait_for(1)] == [("POST", "online.bank.test")]
    time.sleep(0.3)
    assert len(origin.requests) == 1, "the refused connection reached the site"
    records = tls_records(proxy, 2)
    assert sorted((r["host"], r["decision"], r["reason"], r["inspection"]) for r in records) == [
        ("intranet.test", "block", "read-only", "never-inspect"),
        ("online.bank.test", "allow", "unlisted", "never-inspect")]
    assert [r for r in proxy.audit_records() if r["scheme"] == "https"] == []


def test_inspect_all_decrypts_every_connection_but_the_never_inspected(start, origin):
    proxy, _ = start(accessgate_inspect="all")

    unlisted = unverified(proxy, "https://www.example.test/")
    bank = unverified(proxy, "https://online.bank.test/")

    assert unlisted.status == 200 and issuers(unlisted) == ["CN = mitmproxy, O = mitmproxy"]
    assert bank.status == 200 and issuers(bank) == ["CN = origin.test"]
    records = proxy.wait_audit(lambda rs: len(rs) >= 2)
    assert sorted((r["scheme"], r["host"]) for r in records) == [("https", "www.example.test"),
                                                                 ("tls", "online.bank.test")]


def test_the_status_page_tells_the_user_which_sites_are_decrypted(start):
    proxy, _ = start()
    page = curl(proxy, "http://accessgate.status/", user="zoe", headers={"Accept": "application/json"})
    sites = {s["site"]: (s["decrypted"], s["decrypted_why"]) for s in page.json()["sites"]}
    assert sites == {"chat": (False, "full"), "news": (True, "read-only"), "games": (True, "blocked"),
                     "intranet": (False, "never-inspect")}


# -- passed-through connections that stay open ---------------------------------------------


class Passed:
    """A TLS connection through the proxy to chat.test, HTTP/1.1 keep-alive inside, any certificate taken."""

    def __init__(self, proxy, host: str = "chat.test") -> None:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
                     f"Proxy-Authorization: {basic('zoe', PASSWORD)}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self.conn = context.wrap_socket(sock, server_hostname=host)
        cert = x509.load_der_x509_certificate(self.conn.getpeercert(binary_form=True))
        self.issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.host = host

    def get(self) -> bool:
        """One request; True when its answer came."""
        try:
            self.conn.sendall(f"GET /ping HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            self.conn.settimeout(3)
            data = b""
            while not data.endswith(b"ok GET /ping"):
                chunk = self.conn.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return True
        except OSError:
            return False

    def closed_within(self, seconds: float) -> float | None:
        """Send requests until the connection is closed: the seconds that took, or None."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if not self.get():
                return time.monotonic() - started
            time.sleep(0.3)
        return None


def closed_records(proxy) -> list[dict]:
    return proxy.wait_audit(lambda rs: rs, event="flow_closed", timeout=8)


@pytest.mark.parametrize("change, reason", [
    (lambda policy: policy.write_text(policy_text("deny")), "denied"),
    (lambda policy: policy.write_text(policy_text("full", "always_inspect: [chat]\n")), "records"),
], ids=["revoked", "now-always-inspected"])
def test_a_reload_closes_an_open_passed_through_tunnel(start, origin, change, reason):
    proxy, policy = start()
    passed = Passed(proxy)
    assert passed.issuer == "origin.test" and passed.get() and passed.get()

    change(policy)
    waited = passed.closed_within(CLOSED_WITHIN + 4)

    assert waited is not None, "the passed-through tunnel stayed open after the reload"
    assert waited < CLOSED_WITHIN, f"closed only {waited:.1f} s after the reload"
    [closed] = closed_records(proxy)
    assert (closed["site"], closed["reason"], closed["user"]) == ("chat", reason, "zoe")
    [record] = tls_records(proxy, 1)
    assert record["error"] == f"closed: {reason}" and record["bytes_in"] > 0 and record["bytes_out"] > 0
    again = Passed(proxy)  # the client's next connection is decided afresh
    if reason == "records":
        assert again.issuer == "mitmproxy" and again.get()
    else:
        assert not again.get()


def test_a_window_closing_closes_an_open_passed_through_tunnel(start, origin):
    now = datetime.now(timezone.utc)
    if now.second > 45:  # the window below must stay open while the tunnel opens
        time.sleep(61 - now.second)
        now = datetime.now(timezone.utc)
    end = now + timedelta(minutes=1)
    proxy, _ = start(chat=f'{{level: full, windows: ["mon-sun {now - timedelta(minutes=5):%H:%M}-{end:%H:%M}"]}}')
    passed = Passed(proxy)
    assert passed.issuer == "origin.test" and passed.get()
    seconds_to_end = (end.replace(second=0, microsecond=0) - datetime.now(timezone.utc)).total_seconds()

    waited = passed.closed_within(seconds_to_end + CLOSED_WITHIN + 3)

    assert waited is not None, "the passed-through tunnel outlived its window"
    assert waited < seconds_to_end + CLOSED_WITHIN, f"closed {waited - seconds_to_end:.1f} s after the window"
    [closed] = closed_records(proxy)
    assert (closed["site"], closed["reason"]) == ("chat", "outside-window")


def test_quota_minutes_are_counted_for_passed_through_traffic(start, origin, tmp_path):
    """One minute a day: a passed-through connection that carries traffic spends it and is closed at the next."""
    spec = f"sqlite:{tmp_path / 'state.sqlite'}"
    if time.time() % 60 > 50:  # open and charge well inside one minute
        time.sleep(61 - time.time() % 60)
    proxy, _ = start(chat="{level: full, daily_minutes: 1}", state=spec)
    passed = Passed(proxy)
    assert passed.issuer == "origin.test" and passed.get()
    opened_minute = int(time.time()) // 60
    seconds_left = 60 - time.time() % 60

    waited = passed.closed_within(seconds_left + CLOSED_WITHIN)

    assert waited is not None, "the passed-through tunnel outlived its daily quota"
    assert int(time.time()) // 60 > opened_minute, "closed before its paid minute was over"
    store = open_store(spec)
    try:
        day = datetime.now(timezone.utc).date()
        usage = store.usage("user:zoe", "chat", day, int(time.time()) // 60)
    finally:
        store.close()
    assert usage.used == 1, "the minute the tunnel carried traffic was not charged"
    assert 'accessgate_quota_minutes_total{role="everyone",site="chat"} 1.0' in proxy.metrics()
    [closed] = closed_records(proxy)
    assert (closed["site"], closed["reason"]) == ("chat", "quota-exhausted")
    assert not Passed(proxy).get(), "a new connection got through after the quota was spent"


@STRATEGIES
def test_a_passed_through_tunnel_still_open_at_a_clean_stop_is_recorded(start, origin, strategy):
    proxy, _ = start(connection_strategy=strategy)
    passed = Passed(proxy)
    assert passed.issuer == "origin.test" and passed.get() and passed.get()

    assert proxy.stop(signal.SIGINT) == 0

    [record] = [r for r in proxy.audit_records() if r["scheme"] == "tls"]
    assert (record["host"], record["decision"], record["inspection"]) == ("chat.test", "allow", "full")
    assert record["bytes_in"] > 500 and record["bytes_out"] > 500, record


@pytest.mark.skipif(mitmproxy_version.VERSION.startswith("11."), reason="mitmproxy 11 has no tcp_timeout option")
def test_an_idle_passed_through_tunnel_is_closed_after_tcp_timeout(start, origin):
    proxy, _ = start(tcp_timeout=2)
    passed = Passed(proxy)
    assert passed.issuer == "origin.test" and passed.get()

    time.sleep(3.5)

    assert not passed.get(), "the tunnel outlived tcp_timeout"
    [record] = tls_records(proxy, 1)
    assert record["bytes_in"] > 0 and record["bytes_out"] > 0
