"""Where daily quota minutes live: `open_store(spec)` -> a quota store.

    spec        the `accessgate_state` option: sqlite:PATH, redis://…, memory:
    base        what every store offers (QuotaStore, StoreStats)
    memory, sqlite, redis   the stores
    timed       the one timing of store calls, for the Prometheus histogram
"""

from __future__ import annotations

from datetime import date

from accessgate.decision.quota import QuotaUsage
from accessgate.stores.base import ErrorCallback, QuotaStore, StoreStats
from accessgate.stores.memory import MemoryStore
from accessgate.stores.redis import RedisStore
from accessgate.stores.spec import ACCEPTED_FORMS, StateSpec, parse_spec
from accessgate.stores.sqlite import SqliteStore

__all__ = [
    "ACCEPTED_FORMS", "ErrorCallback", "MemoryStore", "PseudonymousSubjects", "QuotaStore", "RedisStore",
    "SqliteStore", "StateSpec", "StoreStats", "open_store", "parse_spec",
]  # fmt: skip


def open_store(
    spec: str | StateSpec, on_error: ErrorCallback | None = None, pseudonymize_key: bytes | None = None
) -> QuotaStore:
    """Open the store that `spec` names.

    With `pseudonymize_key`, user subjects are stored as the audit log's
    pseudonyms (`PseudonymousSubjects`), so the store names no one either.

    `on_error` is called (from the calling thread) with the StateStoreError
    of every failed attempt to reach the backing store (for Redis at most
    once per `retry` seconds; calls in between fail without trying), also
    under `on_error=local` where usage() and mark() do not raise, so that
    the addon can log and count them.  Raises
    ValueError for a bad spec, StateStoreError if a SQLite file cannot be
    opened.  Opening a Redis store never fails: Redis may come later.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    store: QuotaStore
    if parsed.kind == "memory":
        store = MemoryStore(parsed)
    elif parsed.kind == "sqlite":
        store = SqliteStore(parsed, on_error)
    else:
        store = RedisStore(parsed, on_error)
    return PseudonymousSubjects(store, pseudonymize_key) if pseudonymize_key else store


class PseudonymousSubjects:
    """A store that keeps `user:NAME` subjects as `user:<pseudonym of NAME>`.

    The audit log holds keyed pseudonyms when a key is set; a quota store
    holding the names for the same minutes would undo that by a join.  The
    same HMAC as the log (`pseudonym.pseudonymize`), so auditors with the key
    can still tell whose minutes a row holds.  Client addresses (`ip:...`)
    stay, as in the log.
    """

    _CACHE = 50_000  # names kept pseudonymized; one HMAC per user, not per request

    def __init__(self, store: QuotaStore, key: bytes) -> None:
        self.store = store
        self.spec = store.spec
        self._key = key
        self._subjects: dict[str, str] = {}

    def subject(self, subject: str) -> str:
        stored = self._subjects.get(subject)
        if stored is None:
            from accessgate.audit.pseudonym import pseudonymize

            stored = "user:" + pseudonymize(self._key, subject[5:]) if subject.startswith("user:") else subject
            if len(self._subjects) >= self._CACHE:
                self._subjects.clear()
            self._subjects[subject] = stored
        return stored

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        return self.store.usage(self.subject(subject), site, day, minute)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        return self.store.mark(self.subject(subject), site, day, minute)

    def continued_until(self, subject: str, site: str) -> float | None:
        return self.store.continued_until(self.subject(subject), site)

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        self.store.continue_until(self.subject(subject), site, until, now)

    def close(self) -> None:
        self.store.close()

    def stats(self) -> StoreStats:
        return self.store.stats()

    def __getattr__(self, name: str):  # prune(), the Redis store's own helpers ...
        return getattr(self.store, name)
