"""Charging daily quota minutes: one store write per subject, site and minute.

An allowed request to a site with `daily_minutes` spends the current
minute (idempotent in the store).  A busy minute brings many such
requests; this proxy remembers which minutes it marked already, so only
the first of them writes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from accessgate import decision as engine
from accessgate.decision import Decision, Identity
from accessgate.errors import StateStoreError
from accessgate.oplog import get_logger
from accessgate.policy.model import Policy
from accessgate.proxy.gate import quietly

_MARKS_KEPT = 100_000  # (subject, site) pairs remembered; then the memory starts afresh

log = get_logger("addon")


class QuotaMinutes:
    def __init__(self, metrics: Any) -> None:
        self.ledger: Any = None
        self._metrics = metrics
        self._marked: dict[tuple[str, str], int] = {}  # (subject, site) -> last UTC minute marked

    def use(self, ledger: Any) -> None:
        """Charge to `ledger` from now on (the state option changed)."""
        self.ledger = ledger
        self._marked.clear()

    def spend(self, decision: Decision, identity: Identity, policy: Policy, now: datetime) -> None:
        """Count this minute against the site's daily quota."""
        if not (decision.allowed and decision.counts_quota and decision.site):
            return
        minute = engine.minute_of(now)
        key = (identity.subject, decision.site)
        if self._marked.get(key) == minute:
            return
        try:
            self.ledger.mark(identity.subject, decision.site, engine.local_day(now, policy), minute)
        except StateStoreError as exc:
            # The request was allowed on a usage the store gave moments ago;
            # this minute goes uncounted.  The store already reported the
            # error (logged, counted); no traceback per request.
            log.warning("quota_minute_not_counted", site=decision.site, error=str(exc))
            return
        if len(self._marked) > _MARKS_KEPT:
            self._marked.clear()
        self._marked[key] = minute
        quietly(
            lambda: self._metrics.quota_minutes.labels(site=decision.site, role=decision.role or "none").inc()
        )
