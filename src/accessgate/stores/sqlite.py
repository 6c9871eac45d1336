"""`sqlite:PATH`: quota minutes in one file, kept across restarts; proxies on one host may share it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

from accessgate.errors import StateStoreError
from accessgate.decision.quota import QuotaUsage
from accessgate.stores.base import Counted, Counters, ErrorCallback, StoreStats
from accessgate.stores.spec import StateSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_minutes (
    subject TEXT NOT NULL,
    site    TEXT NOT NULL,
    day     TEXT NOT NULL,     -- local date in the policy's zone, ISO 8601
    minute  INTEGER NOT NULL,  -- UTC epoch minute
    PRIMARY KEY (subject, site, day, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quota_minutes_day ON quota_minutes (day);
-- warn grants: who gave a reason for which site, until when (Unix time)
CREATE TABLE IF NOT EXISTS continuations (
    subject TEXT NOT NULL,
    site    TEXT NOT NULL,
    until   REAL NOT NULL,
    PRIMARY KEY (subject, site)
) WITHOUT ROWID;
-- warn forms' one-time nonces, kept until their form expires
CREATE TABLE IF NOT EXISTS used_nonces (
    nonce TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
"""


class SqliteStore:
    """`sqlite:PATH`: one row per counted minute; the primary key makes marks idempotent.

    WAL lets readers go on while a proxy writes; `busy_timeout` makes a
    second process on the same file wait for the lock instead of failing.
    One connection behind a lock: SQLite serialises writers anyway, and
    mitmproxy calls from one thread, so a pool would buy nothing.
    Rows of days before yesterday are deleted when a new day is first
    marked, so the file holds at most about two days of minutes.
    """

    BUSY_TIMEOUT_MS = 2000

    def __init__(self, spec: StateSpec, on_error: ErrorCallback | None = None) -> None:
        self.spec = spec
        self._on_error = on_error
        self._counters = Counters("sqlite")
        self._lock = threading.Lock()
        path = Path(spec.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=self.BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL survives a crash of the proxy; only a power
            # loss can take back the last marks, which costs a user a minute.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            (latest,) = self._db.execute("SELECT max(day) FROM quota_minutes").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreError(
                f"cannot open the quota state file {spec.path}: {exc}; "
                "check that its directory is writable, or set accessgate_state to another path"
            ) from exc
        self._latest_day = date.fromisoformat(latest) if latest else None
        self._counted = Counted()

    def _fail(self, what: str, exc: Exception) -> StateStoreError:
        error = StateStoreError(
            f"quota state file {self.spec.path}: cannot {what}: {exc}; "
            "check the disk and the file's permissions"
        )
        if self._on_error is not None:
            self._on_error(error)
        return error

    @contextmanager
    def _locked(self, what: str) -> Iterator[None]:
        """The body under the lock, counted; an SQLite error in it becomes a StateStoreError (reported)."""
        try:
            with self._lock:
                yield
        except sqlite3.Error as exc:
            error = self._fail(what, exc)
            self._counters.done(error)
            raise error from exc
        self._counters.done()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """The body in one write transaction: committed, or rolled back on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        if (paid := self._counted.paid((subject, site, day), minute)) is not None:
            self._counters.done()
            return QuotaUsage(paid, True)
        with self._locked("read"):
            used, current = self._db.execute(
                "SELECT count(*), coalesce(max(minute = ?), 0) FROM quota_minutes"
                " WHERE subject = ? AND site = ? AND day = ?",
                (minute, subject, site, day.isoformat()),
            ).fetchone()
        self._counted.put((subject, site, day), used, minute if current else None)
        return QuotaUsage(used, bool(current))

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        if (paid := self._counted.paid((subject, site, day), minute)) is not None:
            self._counters.done()
            return paid
        key = (subject, site, day.isoformat())
        with self._locked("write"):
            if self._latest_day is None or day > self._latest_day:
                self._latest_day = day
                self._prune(day - timedelta(days=1))
            with self._transaction():
                self._db.execute("INSERT OR IGNORE INTO quota_minutes VALUES (?, ?, ?, ?)", (*key, minute))
                (used,) = self._db.execute(
                    "SELECT count(*) FROM quota_minutes WHERE subject = ? AND site = ? AND day = ?", key
                ).fetchone()
        self._counted.put((subject, site, day), used, minute)
        return used

    # -- warn grants (decision.continuations.ContinuationStore) --

    def continued_until(self, subject: str, site: str) -> float | None:
        row = self._run("read", "SELECT until FROM continuations WHERE subject = ? AND site = ?", (subject, site))
        return float(row[0]) if row is not None else None

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        self._write("DELETE FROM continuations WHERE until <= ?", (now,),
                    "INSERT OR REPLACE INTO continuations VALUES (?, ?, ?)", (subject, site, until))

    def claim_nonce(self, nonce: str, until: float, now: float) -> bool:
        return self._write("DELETE FROM used_nonces WHERE until <= ?", (now,),
                           "INSERT OR IGNORE INTO used_nonces VALUES (?, ?)", (nonce, until)) == 1

    def _run(self, what: str, sql: str, args: tuple) -> tuple | None:
        with self._locked(what):
            row = self._db.execute(sql, args).fetchone()
        return row

    def _write(self, prune: str, prune_args: tuple, sql: str, args: tuple) -> int:
        """Prune the expired, then `sql`, in one transaction; returns the rows `sql` changed."""
        with self._locked("write"), self._transaction():
            self._db.execute(prune, prune_args)
            changed = self._db.execute(sql, args).rowcount
        return changed

    def prune(self, before: date) -> None:
        """Delete every minute of days before `before`."""
        with self._lock:
            self._prune(before)

    def _prune(self, before: date) -> None:
        self._db.execute("DELETE FROM quota_minutes WHERE day < ?", (before.isoformat(),))

    def stats(self) -> StoreStats:
        return self._counters.stats

    def close(self) -> None:
        with self._lock:
            self._db.close()
