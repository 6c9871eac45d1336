"""The engine's view of warn grants: until when a user may go on to a site after giving a reason.

A `warn` grant blocks with `justification-required` until the user has
given a reason on the warn page; then the site is open to that user for the
grant's `continue_minutes`.  Who continued where lives in the state store
(several proxies behind a balancer share it), and the engine only reads it
through `Continuations`, as it reads quota minutes through the ledger: the
store (`accessgate.stores`) implements it, the proxy writes it.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Continuations(Protocol):
    def continued_until(self, subject: str, site: str) -> float | None:
        """Unix time until which `subject` may go on to `site`, or None if never continued (or forgotten)."""
        ...


class ContinuationStore(Continuations, Protocol):
    """What the proxy needs besides: record a continuation, and spend a form's one-time nonce."""

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        """`subject` may go on to `site` until `until` (Unix time); records older than `now` may go."""
        ...

    def claim_nonce(self, nonce: str, until: float, now: float) -> bool:
        """True the first time `nonce` is claimed before `until`; False ever after (a replay)."""
        ...


class NoContinuations:
    """Nobody has continued anywhere: warn grants block (explain, test, and no store)."""

    def continued_until(self, subject: str, site: str) -> float | None:
        return None


class MemoryContinuations:
    """In-process continuations and nonces: for tests, `replay` and `memory:` state."""

    _MAX = 100_000  # entries of each kind; the expired go first, then everything (bounded memory)

    def __init__(self) -> None:
        self._until: dict[tuple[str, str], float] = {}
        self._nonces: dict[str, float] = {}
        self._lock = threading.Lock()

    def continued_until(self, subject: str, site: str) -> float | None:
        return self._until.get((subject, site))

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        with self._lock:
            _bounded(self._until, now, self._MAX)
            self._until[(subject, site)] = until

    def claim_nonce(self, nonce: str, until: float, now: float) -> bool:
        with self._lock:
            if nonce in self._nonces:
                return False
            if not _bounded(self._nonces, now, self._MAX, forget=False):
                return False  # full of live nonces: refuse rather than forget one (a replay)
            self._nonces[nonce] = until
            return True


def _bounded(entries: dict, now: float, limit: int, forget: bool = True) -> bool:
    """Make room in `entries` (key -> until): drop the expired, then (if `forget`) all. False: still full."""
    if len(entries) < limit:
        return True
    for key in [k for k, until in entries.items() if until <= now]:
        del entries[key]
    if len(entries) >= limit and forget:
        entries.clear()
    return len(entries) < limit
