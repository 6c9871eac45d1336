"""redis://… — one count shared by every proxy, and what happens when Redis goes away.

Every test runs a real redis-server (tests/support/redis_server.py); "down"
is a real SIGKILL, "hung" a real SIGSTOP.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timezone

import pytest

from accessgate.errors import StateStoreUnavailable
from accessgate.decision.quota import QuotaUsage
from accessgate.stores import open_store
from accessgate.stores.redis import expiry

DAY = date(2026, 11, 23)
M = 29_420_000
A = ("user:alice", "facebook", DAY)


def test_two_proxies_share_one_count(redis_server):
    one, two = open_store(redis_server.url()), open_store(redis_server.url())
    assert one.mark(*A, M) == 1
    assert two.mark(*A, M) == 1  # the same minute, from the other proxy
    assert two.mark(*A, M + 1) == 2
    assert one.usage(*A, M + 1) == QuotaUsage(2, True)
    one.close(), two.close()


def test_keys_expire_a_day_after_the_day_ends_everywhere(redis_server):
    # 2026-11-23 ends at 2026-11-24T12:00Z in UTC-12; one more day after that.
    assert expiry(DAY) == datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp()
    store = open_store(redis_server.url())
    at = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
    store.mark(*A, int(at.timestamp() // 60))
    client = redis_server.client()
    (key,) = client.keys("accessgate:quota:*")
    # Counted from the marked minute (the proxy's clock), not from Redis's clock.
    expected = (datetime(2026, 11, 25, 12, tzinfo=timezone.utc) - at).total_seconds()
    assert expected - 5 <= client.ttl(key) <= expected
    store.close()


def test_a_prefix_keeps_deployments_apart(redis_server):
    prod = open_store(redis_server.url())
    staging = open_store(redis_server.url(prefix="staging"))
    prod.mark(*A, M)
    assert staging.usage(*A, M) == QuotaUsage(0, False)
    assert redis_server.client().keys("staging:*") == []
    prod.close(), staging.close()


# -- Redis goes away: on_error=closed (the default) -------------------------

DOWN = [("killed", "kill"), ("hung", "pause")]


@pytest.mark.parametrize("how", [d[1] for d in DOWN], ids=[d[0] for d in DOWN])
def test_closed_rule_raises_unavailable_within_the_timeout(redis_server, how):
    errors = []
    store = open_store(redis_server.url(timeout=0.1), on_error=errors.append)
    store.mark(*A, M)
    getattr(redis_server, how)()
    for operation in (store.usage, store.mark):
        started = time.monotonic()
        with pytest.raises(StateStoreUnavailable):
            operation(*A, M + 1)
        # 0.1 s timeout; the slack is for a loaded test host.  No timeout would hang.
        assert time.monotonic() - started < 1.0
    assert len(errors) == 1  # the second call did not even try (backoff)
    assert "Redis quota store redis://127.0.0.1" in str(errors[0])
    stats = store.stats()
    assert (stats.available, stats.errors) == (False, 2)
    if how == "pause":
        redis_server.resume()
    store.close()


def test_while_down_redis_is_tried_at_most_once_per_retry_interval(redis_server):
    errors = []
    store = open_store(redis_server.url(timeout=0.1, retry=60), on_error=errors.append)
    redis_server.pause()
    started = time.monotonic()
    for _ in range(200):
        with pytest.raises(StateStoreUnavailable):
            store.usage(*A, M)
    # One timeout in all, not 200 of them (20 s).
    assert time.monotonic() - started < 2.0
    assert len(errors) == 1
    redis_server.resume()
    store.close()


@pytest.mark.parametrize("how", [d[1] for d in DOWN], ids=[d[0] for d in DOWN])
def test_closed_rule_recovers_by_itself_when_redis_is_back(redis_server, how):
    store = open_store(redis_server.url(timeout=0.1, retry=0.2))
    getattr(redis_server, how)()
    with pytest.raises(StateStoreUnavailable):
        store.usage(*A, M)
    if how == "kill":
        redis_server.start()  # same port, empty
    else:
        redis_server.resume()
    time.sleep(0.3)
    assert store.mark(*A, M) == 1
    assert store.usage(*A, M) == QuotaUsage(1, True)
    assert store.stats().available
    store.close()


# -- on_error=local ---------------------------------------------------------


def test_local_rule_counts_on_from_the_last_count_redis_gave(redis_server):
    errors = []
    store = open_store(redis_server.url(timeout=0.1, on_error="local"), on_error=errors.append)
    for i in range(3):
        store.mark(*A, M + i)
    redis_server.kill()
    started = time.monotonic()
    assert store.usage(*A, M + 2) == QuotaUsage(3, True)  # the minute in progress stays paid
    assert store.mark(*A, M + 3) == 4
    assert time.monotonic() - started < 1.0
    assert store.mark(*A, M + 3) == 4
    assert store.usage(*A, M + 3) == QuotaUsage(4, True)
    assert store.usage("user:bob", "facebook", DAY, M + 3) == QuotaUsage(0, False)
    assert len(errors) == 1
    assert store.stats().local_minutes == 1  # M+3; M+2 was counted in Redis before it went
    store.close()


def test_local_minutes_are_merged_into_redis_when_it_is_back(redis_server):
    store = open_store(redis_server.url(timeout=0.1, retry=0.2, on_error="local"))
    other = open_store(redis_server.url(timeout=0.1))
    for i in range(3):
        store.mark(*A, M + i)
    redis_server.pause()
    store.mark(*A, M + 3)
    store.mark(*A, M + 4)
    redis_server.resume()
    other.mark(*A, M + 5)  # another proxy went on counting meanwhile
    time.sleep(0.3)
    assert store.usage(*A, M + 5) == QuotaUsage(6, True)
    assert other.usage(*A, M + 4) == QuotaUsage(6, True)
    assert store.stats().local_minutes == 0
    store.close(), other.close()


def test_local_minutes_survive_a_redis_restart(redis_server):
    store = open_store(redis_server.url(timeout=0.1, retry=0.2, on_error="local"))
    redis_server.kill()
    store.mark(*A, M)
    store.mark(*A, M + 1)
    redis_server.start()
    time.sleep(0.3)
    assert store.usage(*A, M + 1) == QuotaUsage(2, True)
    assert redis_server.client().scard(store.key(*A)) == 2
    store.close()


def test_closing_hands_local_minutes_to_redis_if_it_is_back(redis_server):
    store = open_store(redis_server.url(timeout=0.1, retry=0.2, on_error="local"))
    redis_server.pause()
    store.mark(*A, M)
    redis_server.resume()
    time.sleep(0.3)
    store.close()
    assert redis_server.client().scard(store.key(*A)) == 1


def test_opening_a_store_does_not_need_redis(redis_server):
    redis_server.kill()
    store = open_store(redis_server.url(timeout=0.1))
    with pytest.raises(StateStoreUnavailable, match="did not answer"):
        store.usage(*A, M)
    store.close()


def test_a_burst_in_one_minute_asks_redis_once(redis_server):
    """A page load is many requests in one minute: they cost what one request costs."""
    store = open_store(redis_server.url())
    client = redis_server.client()
    store.usage("user:warm-up", "facebook", DAY, M)  # the connection's own set-up commands

    def commands_for(requests: int, subject: str, minute: int) -> int:
        before = client.info("stats")["total_commands_processed"]
        for _ in range(requests):
            store.usage(subject, "facebook", DAY, minute)
            store.mark(subject, "facebook", DAY, minute)
        return client.info("stats")["total_commands_processed"] - before

    one = commands_for(1, "user:bob", M)
    assert commands_for(30, "user:alice", M) == one
    assert commands_for(30, "user:alice", M + 1) == one  # a new minute asks again, once
    assert store.usage(*A, M + 1) == QuotaUsage(2, True)
    store.close()
