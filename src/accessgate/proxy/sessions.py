"""Long-lived flows (WebSockets, streamed responses) stay decided while they are open.

A request is decided when it starts, but a WebSocket to a lunch-time site can
stay open all afternoon, and a stream can outlast a daily quota.  The addon
registers such flows here and, every second, asks which of them the policy
would now block: the window closed, the quota ran out, or a reload took the
access away.  Those are closed by the addon.

While a flow stays open and active, it spends quota like requests do: every
minute in which it carried traffic counts against the site's daily minutes
(`activity`), otherwise one WebSocket would be an unmetered session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Hashable, TypeVar

from accessgate.decision import Decision, Identity, Request, decide, minute_of
from accessgate.policy.model import Policy
from accessgate.decision.quota import QuotaLedger

F = TypeVar("F")


@dataclass(slots=True)
class OpenFlow(Generic[F]):
    """One long-lived flow and what it was decided on.  Mutable: activity moves."""

    flow: F
    request: Request
    identity: Identity
    site: str | None
    last_active_minute: int | None = None


class LongLivedFlows(Generic[F]):
    def __init__(self) -> None:
        self._open: dict[Hashable, OpenFlow[F]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def track(self, key: Hashable, flow: F, request: Request, identity: Identity, site: str | None) -> None:
        self._open[key] = OpenFlow(flow, request, identity, site)

    def untrack(self, key: Hashable) -> None:
        self._open.pop(key, None)

    def activity(self, key: Hashable, now: datetime) -> OpenFlow[F] | None:
        """Note traffic on a flow; returns it when this is its first traffic this minute."""
        entry = self._open.get(key)
        if entry is None:
            return None
        minute = minute_of(now)
        if entry.last_active_minute == minute:
            return None
        entry.last_active_minute = minute
        return entry

    def to_close(
        self, policy: Policy, now: datetime, ledger: QuotaLedger | None
    ) -> list[tuple[Hashable, OpenFlow[F], Decision]]:
        """The open flows that `policy` blocks at `now`, with the blocking decision."""
        closing = []
        for key, entry in list(self._open.items()):
            decision = decide(entry.request, entry.identity, policy, now, ledger)
            if not decision.allowed:
                closing.append((key, entry, decision))
        return closing
