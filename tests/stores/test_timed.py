"""Store calls are timed once, around the store, into the state-store histogram."""

from __future__ import annotations

from datetime import date

import pytest
from prometheus_client import CollectorRegistry, Histogram

from accessgate.errors import StateStoreUnavailable
from accessgate.stores import open_store
from accessgate.stores.timed import TimedLedger

DAY = date(2026, 11, 23)
M = 29_420_000


@pytest.fixture
def histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("state_seconds", "store calls", ["store", "operation"], registry=registry)


def count(registry: CollectorRegistry, store: str, operation: str) -> float:
    return registry.get_sample_value("state_seconds_count", {"store": store, "operation": operation}) or 0


def test_each_usage_and_mark_is_observed_once_under_its_store_and_operation(histogram, tmp_path):
    registry, seconds = histogram
    ledger = TimedLedger(open_store(f"sqlite:{tmp_path / 'quota.sqlite3'}"), seconds)
    assert ledger.mark("user:alice", "facebook", DAY, M) == 1
    assert ledger.mark("user:alice", "facebook", DAY, M + 1) == 2
    assert ledger.usage("user:alice", "facebook", DAY, M + 1).used == 2
    assert (count(registry, "sqlite", "mark"), count(registry, "sqlite", "usage")) == (2, 1)
    ledger.close()


def test_a_call_that_fails_is_observed_too_and_its_error_reaches_the_caller(histogram):
    registry, seconds = histogram
    # Nothing listens on port 1: the store fails fast, as with Redis down.
    ledger = TimedLedger(open_store("redis://127.0.0.1:1/0?timeout=0.2"), seconds)
    with pytest.raises(StateStoreUnavailable):
        ledger.usage("user:alice", "facebook", DAY, M)
    assert count(registry, "redis", "usage") == 1
    assert ledger.stats().errors == 1  # the store counts errors; it does not time
    ledger.close()
