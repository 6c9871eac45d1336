"""A quota store, timed: every call is observed in the state-store histogram.

The one timing of store calls.  The engine reads quota usage through the
`QuotaLedger` protocol and must not know about metrics, and the stores do
not time themselves: the addon wraps whatever store `accessgate_state`
opened in this adapter, so latency is measured where the calls happen.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from accessgate.stores.continued import RememberedContinuations


class TimedLedger:
    def __init__(self, store: Any, histogram: Any) -> None:
        self.store = store
        kind = store.spec.kind if hasattr(store, "spec") else "unknown"
        # Children resolved once: labels() is too slow to call per request.
        self.usage = _timed(store.usage, histogram.labels(store=kind, operation="usage").observe)
        self.mark = _timed(store.mark, histogram.labels(store=kind, operation="mark").observe)
        # Warn grants, not timed: a continuation read is remembered for a few
        # seconds (stores/continued.py), so a continued site asks the store rarely.
        continued = RememberedContinuations(store)
        self.continued_until = continued.continued_until
        self.continue_until = continued.continue_until
        self.claim_nonce = store.claim_nonce

    @property
    def spec(self) -> Any:
        return self.store.spec

    def close(self) -> None:
        self.store.close()

    def stats(self) -> Any:
        return self.store.stats()


def _timed(call: Callable[..., Any], observe: Callable[[float], None]) -> Callable[..., Any]:
    """`call`, with the seconds each call takes (raising or not) passed to `observe`."""
    clock = time.perf_counter

    def timed(subject, site, day, minute):
        start = clock()
        try:
            return call(subject, site, day, minute)
        finally:
            observe(clock() - start)

    return timed
