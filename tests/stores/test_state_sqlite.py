"""sqlite:PATH — the default store: durable, bounded, shareable by proxies on one host."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import date, timedelta

import pytest

from accessgate.errors import StateStoreError
from accessgate.decision.quota import QuotaUsage
from accessgate.stores import open_store

DAY = date(2026, 11, 23)
M = 29_420_000


def test_a_restart_keeps_the_count(tmp_path):
    spec = f"sqlite:{tmp_path / 'quota.sqlite3'}"
    first = open_store(spec)
    for i in range(7):
        first.mark("user:alice", "facebook", DAY, M + i)
    first.close()
    again = open_store(spec)
    assert again.usage("user:alice", "facebook", DAY, M + 6) == QuotaUsage(7, True)
    assert again.mark("user:alice", "facebook", DAY, M + 6) == 7
    again.close()


def test_the_file_uses_wal_and_a_primary_key_on_the_minute(tmp_path):
    path = tmp_path / "quota.sqlite3"
    open_store(f"sqlite:{path}").close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    pk = [row[1] for row in db.execute("PRAGMA table_info(quota_minutes)") if row[5]]
    assert pk == ["subject", "site", "day", "minute"]


def test_missing_directories_are_created(tmp_path):
    store = open_store(f"sqlite:{tmp_path / 'var' / 'lib' / 'quota.sqlite3'}")
    assert store.mark("user:alice", "facebook", DAY, M) == 1
    store.close()


def test_a_file_that_cannot_be_opened_says_what_to_do(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(StateStoreError, match="set accessgate_state to another path"):
        open_store(f"sqlite:{tmp_path / 'not-a-dir' / 'quota.sqlite3'}")


def _rows_per_day(path) -> dict[str, int]:
    db = sqlite3.connect(path)
    return dict(db.execute("SELECT day, count(*) FROM quota_minutes GROUP BY day"))


def test_days_before_yesterday_are_pruned_when_a_new_day_is_marked(tmp_path):
    path = tmp_path / "quota.sqlite3"
    store = open_store(f"sqlite:{path}")
    for back in (3, 2, 1, 0):
        store.mark("user:alice", "facebook", DAY - timedelta(days=back), M - back * 1440)
    # Each new day pruned what was before its yesterday.
    assert _rows_per_day(path) == {"2026-11-22": 1, "2026-11-23": 1}
    store.close()


def test_pruning_also_happens_after_a_long_stop(tmp_path):
    path = tmp_path / "quota.sqlite3"
    store = open_store(f"sqlite:{path}")
    store.mark("user:alice", "facebook", DAY, M)
    store.close()
    store = open_store(f"sqlite:{path}")
    store.mark("user:alice", "facebook", DAY + timedelta(days=10), M + 10 * 1440)
    assert _rows_per_day(path) == {"2026-12-03": 1}
    store.close()


def test_a_late_mark_for_an_older_day_does_not_prune(tmp_path):
    path = tmp_path / "quota.sqlite3"
    store = open_store(f"sqlite:{path}")
    store.mark("user:alice", "facebook", DAY, M)
    store.mark("user:bob", "facebook", DAY - timedelta(days=1), M - 1)
    assert _rows_per_day(path) == {"2026-11-22": 1, "2026-11-23": 1}
    store.close()


def _mark_many(path: str, worker: int) -> None:
    store = open_store(f"sqlite:{path}")
    for i in range(100):
        # Every worker marks the same 50 minutes plus 50 of its own.
        minute = M + i if i < 50 else M + 1000 * (worker + 1) + i
        store.mark("user:alice", "facebook", DAY, minute)
    store.close()


def test_proxies_on_one_host_can_share_the_file(tmp_path):
    path = str(tmp_path / "quota.sqlite3")
    open_store(f"sqlite:{path}").close()  # create the schema once
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_mark_many, args=(path, n)) for n in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    store = open_store(f"sqlite:{path}")
    assert store.usage("user:alice", "facebook", DAY, M).used == 50 + 3 * 50
    store.close()
