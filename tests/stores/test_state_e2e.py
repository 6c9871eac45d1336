"""Quota state end to end: real mitmdump proxies, a real Redis, the shipped HAProxy config.

Users sign in with proxyauth; facebook.test allows 3 minutes a day
(support.policies.QUOTA_POLICY).  To reach the quota without waiting
minutes, a test first writes earlier minutes into the store the proxies
use (any minute number counts: the store keeps a set), then lets the
proxies count the minute in progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from support.haproxy import running_haproxy
from support.policies import QUOTA_POLICY
from support.clients import curl
from support.proxy import Proxy
from accessgate.stores import open_store

pytestmark = pytest.mark.e2e

SOURCES = [f"127.0.0.{n}" for n in range(1, 25)]


@dataclass(frozen=True)
class Balancer:
    """What support.clients.curl needs of a proxy: where, and which CA."""

    url: str
    ca: Path


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(QUOTA_POLICY)
    return path


def fresh_minute(margin: float = 12.0) -> datetime:
    """Now, after waiting out the end of a minute: the steps that follow share one minute."""
    if time.time() % 60 > 60 - margin:
        time.sleep(60 - time.time() % 60 + 0.2)
    return datetime.now(timezone.utc)


def spend_earlier_minutes(spec: str, user: str, count: int) -> None:
    store = open_store(spec)
    for fake_minute in range(1, count + 1):
        store.mark(f"user:{user}", "facebook", datetime.now(timezone.utc).date(), fake_minute)
    store.close()


def via(balancer, user: str, source: str):
    return curl(balancer, "http://facebook.test/", user=user, extra=["--interface", source])


def clients_of(proxies: list[Proxy], user: str, timeout: float = 5.0) -> set[str]:
    """The client addresses in `user`'s audit records, once every record written so far is on disk."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {r["client_ip"] for p in proxies for r in p.audit_records() if r["user"] == user}
        if len(seen) >= len(SOURCES) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def served_by(proxy: Proxy, user: str) -> int:
    return len([r for r in proxy.audit_records() if r.get("user") == user])


@pytest.mark.slow
def test_two_proxies_behind_haproxy_share_one_quota(redis_server, proxy_factory, htpasswd, policy, origin):
    spec = redis_server.url(timeout=0.2)
    # HAProxy connects from 127.0.0.1 and names each client in a PROXY header.
    options = {"proxyauth": f"@{htpasswd}", "accessgate_trusted_proxies": "127.0.0.1/32"}
    proxies = [proxy_factory(policy=policy, state=spec, options=options) for _ in range(2)]
    with running_haproxy([f"127.0.0.1:{p.port}" for p in proxies]) as lb:
        balancer = Balancer(f"http://127.0.0.1:{lb.listen[1]}", proxies[0].ca)
        now = fresh_minute()
        spend_earlier_minutes(spec, "bob", 2)  # one minute left today
        spend_earlier_minutes(spec, "carol", 3)  # none left
        bob = {src: via(balancer, "bob", src).status for src in SOURCES}
        carol = {src: via(balancer, "carol", src).reason for src in SOURCES}
        assert set(bob.values()) == {200}, bob
        assert set(carol.values()) == {"quota-exhausted"}, carol
        # Both proxies served bob, and counted his minute once between them.
        for proxy in proxies:
            proxy.wait_audit(lambda records: any(r["user"] == "bob" for r in records))
        assert all(served_by(p, "bob") > 0 for p in proxies)
        # Each proxy was told the client's own address (HAProxy's PROXY header).
        assert clients_of(proxies, "carol") == set(SOURCES)
        key = open_store(spec).key("user:bob", "facebook", now.date())
        assert redis_server.client().scard(key) == 3

        # The next minute would be bob's fourth: no proxy gives it.
        time.sleep(60 - time.time() % 60 + 0.5)
        later = {src: via(balancer, "bob", src).reason for src in SOURCES}
        assert set(later.values()) == {"quota-exhausted"}, later
        assert redis_server.client().scard(key) == 3


def status_of(proxy: Proxy, user: str) -> dict:
    result = curl(proxy, "http://accessgate.status/", user=user, headers={"Accept": "application/json"})
    assert result.status == 200, result
    return next(s for s in result.json()["sites"] if s["site"] == "facebook")


@pytest.mark.parametrize(
    "state,used_after_restart",
    [("sqlite", 1), ("memory", 0)],
    ids=["sqlite-keeps-the-count", "memory-forgets-it"],
)
def test_a_restarted_proxy_keeps_its_count(proxy_factory, htpasswd, policy, origin, tmp_path, state, used_after_restart):
    spec = f"sqlite:{tmp_path / 'state' / 'quota.sqlite3'}" if state == "sqlite" else "memory:"
    options = {"proxyauth": f"@{htpasswd}"}
    fresh_minute()
    first = proxy_factory(policy=policy, state=spec, options=options)
    assert curl(first, "http://facebook.test/", user="bob").status == 200
    assert status_of(first, "bob")["minutes_used"] == 1
    assert first.stop() == 0
    again = proxy_factory(policy=policy, state=spec, options=options)
    standing = status_of(again, "bob")
    assert (standing["minutes_used"], standing["minutes_left"]) == (used_after_restart, 3 - used_after_restart)


OUTAGE = [
    # rule, facebook (quota) while Redis is down, linkedin (no quota) meanwhile
    ("closed", 403, 200),
    ("local", 200, 200),
]


@pytest.mark.parametrize("rule,quota_site,other_site", OUTAGE, ids=["closed-blocks-only-quota-grants", "local-counts-on"])
def test_redis_down_through_the_proxy(redis_server, proxy_factory, htpasswd, policy, origin, rule, quota_site, other_site):
    spec = redis_server.url(timeout=0.1, retry=0.5, on_error=rule)
    proxy = proxy_factory(policy=policy, state=spec, options={"proxyauth": f"@{htpasswd}"})
    now = fresh_minute()
    redis_server.kill()
    facebook = curl(proxy, "http://facebook.test/", user="bob")
    linkedin = curl(proxy, "http://linkedin.test/", user="bob")
    assert (facebook.status, linkedin.status) == (quota_site, other_site)
    assert facebook.seconds < 5  # one short timeout, no hang (slack for a loaded host)
    assert proxy.alive()
    redis_server.start()  # same port, empty
    time.sleep(0.7)
    assert curl(proxy, "http://facebook.test/", user="bob").status == 200
    # Under `local`, the minute counted during the outage reached Redis too.
    key = open_store(spec).key("user:bob", "facebook", now.date())
    assert redis_server.client().scard(key) == 1
