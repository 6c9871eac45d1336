"""What every quota store offers, and the parts the stores share.

Every store implements `quota.QuotaLedger` (usage, mark),
`continuations.ContinuationStore` (warn grants: continued_until,
continue_until, claim_nonce) plus `close()` and `stats()`.  A minute is a member of a set keyed by (subject, site, day), so
marking is idempotent: a minute counts once however many requests, threads
and proxies mark it.  How long calls take is measured once, around the
store (`timed.TimedLedger`, into the Prometheus histogram), not inside it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable, Protocol

from accessgate.errors import StateStoreError
from accessgate.decision.continuations import ContinuationStore
from accessgate.decision.quota import QuotaLedger
from accessgate.stores.spec import StateSpec

ErrorCallback = Callable[[StateStoreError], None]


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters for logs and metrics; cumulative since the store was opened."""

    kind: str
    available: bool  # the backing store answered the last time it was asked
    operations: int  # usage() and mark() calls
    errors: int  # calls on which the backing store failed
    local_minutes: int = 0  # redis on_error=local: minutes counted locally, not yet merged
    last_error: str = ""


class QuotaStore(QuotaLedger, ContinuationStore, Protocol):
    spec: StateSpec

    def close(self) -> None: ...

    def stats(self) -> StoreStats: ...


class Counters:
    """The mutable side of StoreStats, shared by the stores (plain ints: this is per request)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.available = True
        self.operations = self.errors = self.local_minutes = 0
        self.last_error = ""

    def done(self, error: StateStoreError | None = None, local_minutes: int = 0) -> None:
        # Unlocked: a lost increment under threads would only blur a metric.
        self.operations += 1
        self.local_minutes = local_minutes
        self.available = error is None
        if error is not None:
            self.errors += 1
            self.last_error = str(error)

    @property
    def stats(self) -> StoreStats:
        return StoreStats(self.kind, self.available, self.operations, self.errors, self.local_minutes, self.last_error)


class Counted:
    """Per (subject, site, day): the last minute known to be counted, and the count then.

    A page is dozens of requests in the same minute.  Once that minute is
    counted the decision cannot change before the next one (a counted
    minute is never exhausted, see QuotaUsage.exhausted), so neither
    usage() nor mark() needs to ask the store again: one round trip per
    user, site and minute instead of two per request.  The count may lag
    other proxies' marks within the minute; only the status page shows it.
    It is also where on_error=local starts counting from.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, date], tuple[int, int | None]] = {}
        self._day: date | None = None
        self._lock = threading.Lock()

    def paid(self, k: tuple[str, str, date], minute: int) -> int | None:
        """Minutes used if `minute` is known to be counted, else None."""
        used, known = self._entries.get(k, (0, None))
        return used if known == minute else None

    def last(self, k: tuple[str, str, date]) -> tuple[int, int | None]:
        return self._entries.get(k, (0, None))

    def put(self, k: tuple[str, str, date], used: int, minute: int | None) -> None:
        with self._lock:
            day = k[2]
            if self._day is None or day > self._day:
                # Bounded: a new day drops what is older than yesterday.
                self._day = day
                self._entries = {x: v for x, v in self._entries.items() if x[2] >= day - timedelta(days=1)}
            known = self._entries.get(k, (0, None))[1]
            self._entries[k] = (used, minute if minute is not None else known)
