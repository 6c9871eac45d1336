"""Quotas through the engine, with a controlled clock, on every store.

A request is decided with `decide(..., now, quota=store)` and, when
allowed and quota-governed, its minute is marked: what the addon does.  The
day is the local date in the policy's zone; a minute is a real (UTC) minute,
so daylight-saving days have 23 or 25 hours of them.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from accessgate.decision import Identity, Request, decide, local_day, minute_of
from accessgate.policy.loader import parse_policy
from accessgate.stores import open_store
from support.redis_server import store_spec

POLICY = """
version: 1
timezone: {tz}
sites:
  facebook:
    domains: [facebook.com]
roles:
  everyone:
    members: [all]
    access:
      facebook: {{level: full, daily_minutes: {minutes}}}
unauthenticated: deny
unlisted: allow
"""
ALICE = Identity("alice")
VISIT = Request("GET", ("www.facebook.com",))


def policy(minutes: int, tz: str = "Europe/Berlin"):
    return parse_policy(POLICY.format(tz=tz, minutes=minutes))


def browse(store, pol, now: datetime, who: Identity = ALICE) -> str:
    """Decide one request at `now`; mark its minute if it spends quota.  Returns allow|block."""
    decision = decide(VISIT, who, pol, now, quota=store)
    if decision.allowed and decision.counts_quota:
        store.mark(who.subject, decision.site, local_day(now, pol), minute_of(now))
    return decision.decision if decision.allowed else decision.reason


@pytest.fixture(params=["memory", "sqlite", "redis"])
def spec(request, tmp_path):
    return store_spec(request, tmp_path / "quota.sqlite3")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


# (quota, [(UTC time, expected outcome), ...]) — Europe/Berlin
TIMELINES = {
    # Winter: Berlin midnight is 23:00 UTC.  The day is Berlin's, not UTC's.
    "midnight-in-the-policy-zone-starts-a-new-day": (2, [
        ("2026-11-23T22:57:00", "allow"),
        ("2026-11-23T22:58:10", "allow"),
        ("2026-11-23T22:58:50", "allow"),  # the minute already paid for runs to its end
        ("2026-11-23T22:59:00", "quota-exhausted"),  # 23:59 in Berlin: still the 23rd
        ("2026-11-23T23:00:00", "allow"),  # 00:00 in Berlin, though the 23rd in UTC
        ("2026-11-23T23:01:00", "allow"),
        ("2026-11-23T23:02:00", "quota-exhausted"),
    ]),
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00 UTC.
    "spring-forward-minutes-on-both-sides-of-the-gap": (2, [
        ("2026-03-29T00:59:00", "allow"),  # 01:59 CET
        ("2026-03-29T01:00:00", "allow"),  # 03:00 CEST, the next real minute
        ("2026-03-29T01:01:00", "quota-exhausted"),
    ]),
    "spring-forward-day-has-23-hours": (2, [
        ("2026-03-28T23:00:00", "allow"),  # 00:00 CET on the 29th: the day starts
        ("2026-03-29T21:58:00", "allow"),  # 23:58 CEST
        ("2026-03-29T21:59:00", "quota-exhausted"),
        ("2026-03-29T22:00:00", "allow"),  # 00:00 CEST on the 30th
    ]),
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00 UTC.
    "fall-back-the-repeated-hour-counts-twice": (3, [
        ("2026-10-25T00:30:00", "allow"),  # 02:30 CEST
        ("2026-10-25T01:30:00", "allow"),  # 02:30 CET: same wall time, another real minute
        ("2026-10-25T01:31:00", "allow"),
        ("2026-10-25T01:32:00", "quota-exhausted"),
    ]),
    "fall-back-day-has-25-hours": (2, [
        ("2026-10-24T22:00:00", "allow"),  # 00:00 CEST on the 25th
        ("2026-10-25T22:58:00", "allow"),  # 23:58 CET
        ("2026-10-25T22:59:00", "quota-exhausted"),
        ("2026-10-25T23:00:00", "allow"),  # 00:00 CET on the 26th
    ]),
}


@pytest.mark.parametrize("name", list(TIMELINES))
def test_quota_timeline(spec, name):
    minutes, steps = TIMELINES[name]
    pol, store = policy(minutes), open_store(spec)
    outcomes = [(at, browse(store, pol, utc(at))) for at, _ in steps]
    store.close()
    assert outcomes == [(at, expected) for at, expected in steps]


def test_a_restart_in_the_middle_of_the_day_keeps_the_quota(tmp_path):
    spec, pol = f"sqlite:{tmp_path / 'q.sqlite3'}", policy(2)
    first = open_store(spec)
    assert browse(first, pol, utc("2026-11-23T10:00:00")) == "allow"
    assert browse(first, pol, utc("2026-11-23T10:01:00")) == "allow"
    first.close()
    again = open_store(spec)
    assert browse(again, pol, utc("2026-11-23T10:02:00")) == "quota-exhausted"
    again.close()


def test_two_proxies_interleaved_never_exceed_the_quota(redis_server):
    pol = policy(5)
    proxies = [open_store(redis_server.url(timeout=1)) for _ in range(2)]
    allowed_minutes = set()
    for minute in range(10):
        for second in (0, 15, 30, 45):
            for n, proxy in enumerate(proxies):
                now = utc(f"2026-11-23T10:{minute:02d}:{second + n:02d}")
                if browse(proxy, pol, now) == "allow":
                    allowed_minutes.add(minute)
    assert allowed_minutes == {0, 1, 2, 3, 4}
    key = proxies[0].key("user:alice", "facebook", local_day(now, pol))
    assert redis_server.client().scard(key) == 5
    for p in proxies:
        p.close()


def test_two_proxies_in_parallel_threads_never_exceed_the_quota(redis_server):
    """Each thread is a proxy with its own connection; all hit every minute at once."""
    pol, threads_per_proxy, proxies = policy(5), 4, [open_store(redis_server.url(timeout=1)) for _ in range(2)]
    tick = threading.Barrier(2 * threads_per_proxy)
    allowed: list[int] = []

    def user_agent(proxy):
        for minute in range(10):
            tick.wait(timeout=30)
            now = utc(f"2026-11-23T10:{minute:02d}:30")
            for _ in range(5):
                if browse(proxy, pol, now) == "allow":
                    allowed.append(minute)

    threads = [threading.Thread(target=user_agent, args=(p,)) for p in proxies for _ in range(threads_per_proxy)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(set(allowed)) == [0, 1, 2, 3, 4]
    assert proxies[0].usage("user:alice", "facebook", local_day(utc("2026-11-23T10:00:00"), pol), 0).used == 5
    for p in proxies:
        p.close()
