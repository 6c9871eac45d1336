"""The engine's view of daily quotas: minutes used per user x site x day.

The engine only reads through `QuotaLedger`; the proxy marks minutes after
an allowed request.  State stores (SQLite, Redis) implement the same
protocol, so the engine never changes when the store does.

A minute is identified by its UTC epoch minute (`int(ts // 60)`), so DST
folds never merge two real minutes; the day is the local date in the
policy's time zone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date
from typing import Protocol


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    used: int  # minutes counted today
    current_counted: bool  # the asking minute is already one of them

    def exhausted(self, limit: int) -> bool:
        # The minute already paid for stays usable to its end, so that a
        # quota of 20 gives 20 whole minutes rather than 19 and a bit.
        return self.used >= limit and not self.current_counted


class QuotaLedger(Protocol):
    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        """Minutes `subject` used on `site` on local `day`, and whether `minute` is one."""
        ...

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        """Count `minute` for `subject` on `site`; idempotent.  Returns minutes used."""
        ...


class MemoryLedger:
    """In-process ledger: for tests, `explain`, `replay` and `memory:` state."""

    def __init__(self) -> None:
        self._minutes: dict[tuple[str, str, date], set[int]] = {}
        self._lock = threading.Lock()

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        minutes = self._minutes.get((subject, site, day), ())
        return QuotaUsage(len(minutes), minute in minutes)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        with self._lock:
            minutes = self._minutes.setdefault((subject, site, day), set())
            minutes.add(minute)
            return len(minutes)

    def prune(self, before: date) -> None:
        with self._lock:
            for key in [k for k in self._minutes if k[2] < before]:
                del self._minutes[key]


class NoQuotaUsed:
    """A ledger in which nothing has been used: for stateless explanations."""

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        return QuotaUsage(0, False)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        return 0
