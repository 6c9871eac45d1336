"""`memory:`: quota minutes in this process only, gone on restart (tests, `explain`)."""

from __future__ import annotations

from datetime import date

from accessgate.decision.continuations import MemoryContinuations
from accessgate.decision.quota import MemoryLedger, QuotaUsage
from accessgate.stores.base import Counters, StoreStats
from accessgate.stores.spec import StateSpec


class MemoryStore:
    """`memory:`: quota.MemoryLedger with the store interface."""

    def __init__(self, spec: StateSpec = StateSpec("memory")) -> None:
        self.spec = spec
        self._ledger = MemoryLedger()
        self._continued = MemoryContinuations()
        self._counters = Counters("memory")

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        self._counters.done()
        return self._ledger.usage(subject, site, day, minute)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        self._counters.done()
        return self._ledger.mark(subject, site, day, minute)

    def continued_until(self, subject: str, site: str) -> float | None:
        return self._continued.continued_until(subject, site)

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        self._continued.continue_until(subject, site, until, now)

    def claim_nonce(self, nonce: str, until: float, now: float) -> bool:
        return self._continued.claim_nonce(nonce, until, now)

    def prune(self, before: date) -> None:
        self._ledger.prune(before)

    def stats(self) -> StoreStats:
        return self._counters.stats

    def close(self) -> None:
        pass
