"""Continuations remembered in the proxy for a few seconds: a continued warn site costs no store call per request.

Once a user gave a reason, every request of theirs to the site asks the
engine, and the engine asks the state store until when (`continued_until`):
a Redis round trip per request on the proxy's event loop.  A continuation
only ever ends at its `until` (nothing revokes one early), so an answer
that lies in the future may be reused: for at most TRUST_SECONDS, and never
past its `until`.  Only such answers are kept: "not continued" is asked
again every time, so a reason given through another proxy behind the
balancer counts at once.  Bounded: at most MAX entries, the oldest dropped
wholesale when full.
"""

from __future__ import annotations

import time
from typing import Any, Callable

TRUST_SECONDS = 30.0  # a continuation read from the store is reused this long (never past its end)
MAX = 50_000  # (subject, site) pairs remembered


class RememberedContinuations:
    """`continued_until` of `store`, positive answers reused for TRUST_SECONDS."""

    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._kept: dict[tuple[str, str], tuple[float, float]] = {}  # -> (until, ask again after)

    def continued_until(self, subject: str, site: str) -> float | None:
        key = (subject, site)
        now = self._clock()
        kept = self._kept.get(key)
        if kept is not None:
            if now < kept[1]:
                return kept[0]
            del self._kept[key]
        until = self._store.continued_until(subject, site)
        if until is not None and until > now:
            if len(self._kept) >= MAX:
                self._kept.clear()
            self._kept[key] = (until, min(until, now + TRUST_SECONDS))
        return until

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        self._store.continue_until(subject, site, until, now)
        self._kept.pop((subject, site), None)  # read afresh next time
