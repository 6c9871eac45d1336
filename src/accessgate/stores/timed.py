"""A quota store, timed: every call is observed in the state-store histogram.

The engine reads quota usage through the `QuotaLedger` protocol and must not
know about metrics; the addon wraps whatever store `accessgate_state` opened
in this adapter, so latency is measured where the calls happen.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from accessgate.decision.quota import QuotaUsage


class TimedLedger:
    def __init__(self, store: Any, histogram: Any) -> None:
        self.store = store
        kind = store.spec.kind if hasattr(store, "spec") else "unknown"
        # Children resolved once: labels() is too slow to call per request.
        self._usage = histogram.labels(store=kind, operation="usage")
        self._mark = histogram.labels(store=kind, operation="mark")

    @property
    def spec(self) -> Any:
        return self.store.spec

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        start = time.perf_counter()
        try:
            return self.store.usage(subject, site, day, minute)
        finally:
            self._usage.observe(time.perf_counter() - start)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        start = time.perf_counter()
        try:
            return self.store.mark(subject, site, day, minute)
        finally:
            self._mark.observe(time.perf_counter() - start)

    def close(self) -> None:
        self.store.close()

    def stats(self) -> Any:
        return self.store.stats()
