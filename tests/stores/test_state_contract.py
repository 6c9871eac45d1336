"""What every store promises (memory:, sqlite:, redis://), run against each.

A minute counts once however often and from however many threads it is
marked; counts are kept apart per subject, site and day.
"""

from __future__ import annotations

import threading
from datetime import date

import pytest

from accessgate.decision.quota import QuotaUsage
from accessgate.stores import open_store
from support.redis_server import store_spec

DAY = date(2026, 11, 23)
M = 29_420_000  # an epoch minute on that day (any integer will do for the stores)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    s = open_store(store_spec(request, tmp_path / "quota.sqlite3"))
    yield s
    s.close()


def test_nothing_used_at_first(store):
    assert store.usage("user:alice", "facebook", DAY, M) == QuotaUsage(0, False)


def test_a_minute_counts_once_however_often_it_is_marked(store):
    assert [store.mark("user:alice", "facebook", DAY, M) for _ in range(5)] == [1] * 5
    assert store.usage("user:alice", "facebook", DAY, M) == QuotaUsage(1, True)


def test_each_new_minute_adds_one_and_the_asking_minute_is_reported(store):
    for i in range(3):
        store.mark("user:alice", "facebook", DAY, M + i)
    assert store.usage("user:alice", "facebook", DAY, M + 2) == QuotaUsage(3, True)
    assert store.usage("user:alice", "facebook", DAY, M + 3) == QuotaUsage(3, False)


SEPARATE = [
    (("user:bob", "facebook", DAY), "another-subject"),
    (("user:alice", "linkedin", DAY), "another-site"),
    (("user:alice", "facebook", date(2026, 11, 24)), "another-day"),
    (("ip:10.0.0.7", "facebook", DAY), "an-address-subject"),
    (("user:alice:facebook", "", DAY), "separator-in-names-cannot-collide"),
]


@pytest.mark.parametrize("other", [s[0] for s in SEPARATE], ids=[s[1] for s in SEPARATE])
def test_counts_are_kept_apart(store, other):
    store.mark("user:alice", "facebook", DAY, M)
    assert store.usage(*other, M) == QuotaUsage(0, False)
    assert store.mark(*other, M + 1) == 1
    assert store.usage("user:alice", "facebook", DAY, M) == QuotaUsage(1, True)


def test_fifty_parallel_marks_in_one_minute_count_one_minute(store):
    start = threading.Barrier(50)
    results: list[int] = []

    def hit():
        start.wait()
        results.append(store.mark("user:alice", "facebook", DAY, M))

    threads = [threading.Thread(target=hit) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [1] * 50
    assert store.usage("user:alice", "facebook", DAY, M) == QuotaUsage(1, True)


def test_parallel_marks_of_distinct_minutes_all_count(store):
    def hit(offset):
        for i in range(20):
            store.mark("user:alice", "facebook", DAY, M + offset * 20 + i)

    threads = [threading.Thread(target=hit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert store.usage("user:alice", "facebook", DAY, M).used == 160


def test_stats_count_operations_and_errors(store):
    # How long calls take is timed once, around the store (tests/stores/test_timed.py).
    store.mark("user:alice", "facebook", DAY, M)
    store.usage("user:alice", "facebook", DAY, M)
    stats = store.stats()
    assert (stats.operations, stats.errors, stats.available) == (2, 0, True)
