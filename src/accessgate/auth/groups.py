"""Directory groups per user: cached, refreshed in the background, bounded in an outage.

    resolver = GroupResolver(directory.groups_of, ttl=300, stale=3600, on_outage="closed")
    resolver.groups("alice")              # DirectoryGroups(groups=frozenset({"pr"}), state="fresh", ...)
    await resolver.groups_async("alice")
    sources_of(policy.user_groups.get("alice", frozenset()), resolver.groups("alice"))
    # -> (GroupSource("pr", ("yaml", "ldap")), ...)  for explain --user and the status page

A known user never waits for the directory: the cached groups are answered
at once, and a background thread looks them up again once they are `ttl`
seconds old.  A user seen for the first time waits for the first lookup up
to `first_wait` seconds; past that the answer is "pending" (no directory
groups yet) and the lookup finishes in the background.

When the directory cannot be asked, known users keep their last groups
while those are at most `ttl + stale` seconds old (state "stale").  After
that the outage rule applies: `closed` (the default) drops the directory
groups (state "expired": the user keeps only the policy's own groups), and
`last` keeps the last groups however old.  While the directory is down it
is asked at most once every `retry` seconds, so an outage costs no work per
request.  Everything is visible in `samples()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from accessgate.oplog import get_logger
from accessgate.auth.counters import Counters, Sample
from accessgate.auth.directory import DirectoryUnavailable

# DirectoryGroups states.
FRESH = "fresh"          # looked up less than ttl seconds ago
STALE = "stale"          # older; served while a refresh runs or the directory is down
EXPIRED = "expired"      # the outage rule dropped them (on_outage: closed)
PENDING = "pending"      # first lookup still running: no directory groups yet
UNAVAILABLE = "unavailable"  # first lookup failed: no directory groups
UNKNOWN = "unknown"      # the directory has no such user (or several): no directory groups


class DirectoryGroups(NamedTuple):
    groups: frozenset[str]
    state: str
    age: float | None = None  # seconds since the groups were looked up


class GroupSource(NamedTuple):
    name: str
    sources: tuple[str, ...]  # "yaml", "ldap", or both


def sources_of(yaml_groups: Iterable[str], directory: DirectoryGroups | Iterable[str] | None) -> tuple[GroupSource, ...]:
    """Every group of a user with where it came from, sorted by name."""
    found: dict[str, list[str]] = {}
    for name in yaml_groups:
        found.setdefault(name, []).append("yaml")
    ldap = directory.groups if isinstance(directory, DirectoryGroups) else (directory or ())
    for name in ldap:
        found.setdefault(name, []).append("ldap")
    return tuple(GroupSource(n, tuple(found[n])) for n in sorted(found))


@dataclass
class _Entry:
    groups: frozenset[str] | None  # None: no such user in the directory
    fetched: float                 # clock time of the last successful lookup
    used: float                    # clock time of the last request for it


class GroupResolver:
    def __init__(
        self,
        lookup: Callable[[str], frozenset[str] | None],
        *,
        ttl: float = 300.0,
        stale: float = 3600.0,
        on_outage: str = "closed",
        first_wait: float = 2.0,
        retry: float = 5.0,
        idle: float = 86_400.0,
        max_users: int = 100_000,
        workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
        counters: Counters | None = None,
    ) -> None:
        if on_outage not in ("closed", "last"):
            raise ValueError(f"on_outage {on_outage!r}: use 'closed' or 'last'")
        self._lookup = lookup
        self.ttl, self.stale, self.on_outage = ttl, stale, on_outage
        self.first_wait, self.retry, self.idle, self.max_users = first_wait, retry, idle, max_users
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                           thread_name_prefix="accessgate-groups")
        self._down_until = float("-inf")
        self._up = True
        self._last_success: float | None = None
        self._counters = counters if counters is not None else Counters()
        self._log = get_logger("auth")
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        if background:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="accessgate-groups-refresh", daemon=True)
            self._sweeper.start()

    def __repr__(self) -> str:
        return f"GroupResolver(users={len(self._entries)}, ttl={self.ttl}, on_outage={self.on_outage!r})"

    # ---- answers ------------------------------------------------------------------------

    def groups(self, user: str) -> DirectoryGroups:
        """Never waits for a known user; a new user waits up to first_wait seconds."""
        found = self._known_or_lookup(user)
        if isinstance(found, DirectoryGroups):
            return found
        try:
            found.result(timeout=self.first_wait)
        except concurrent.futures.TimeoutError:
            return self._pending()
        except Exception:
            pass
        return self._known(user) or self._unavailable()

    async def groups_async(self, user: str) -> DirectoryGroups:
        found = self._known_or_lookup(user)
        if isinstance(found, DirectoryGroups):
            return found
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(found)), self.first_wait)
        except asyncio.TimeoutError:
            return self._pending()
        except Exception:
            pass
        return self._known(user) or self._unavailable()

    def _known_or_lookup(self, user: str) -> DirectoryGroups | concurrent.futures.Future:
        """A known user's groups; else the lookup started for them, or unavailable if none could start."""
        known = self._known(user)
        if known is not None:
            return known
        future = self._start(user)
        return self._unavailable() if future is None else future

    def _pending(self) -> DirectoryGroups:
        self._counters.inc("directory_first_lookup_total", result="pending")
        return DirectoryGroups(frozenset(), PENDING)

    def known(self, user: str) -> DirectoryGroups | None:
        """A known user's groups at once (a refresh starts behind them when due); None for a new user."""
        return self._known(user)

    def cached(self, user: str) -> DirectoryGroups | None:
        """What is known now, without starting any lookup (for explain and the status page)."""
        with self._lock:
            entry = self._entries.get(user)
        return self._answer(entry) if entry is not None else None

    def _unavailable(self) -> DirectoryGroups:
        return DirectoryGroups(frozenset(), UNAVAILABLE)

    def _known(self, user: str) -> DirectoryGroups | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(user)
            if entry is None:
                return None
            entry.used = now
            self._entries.move_to_end(user)
        if now - entry.fetched >= self.ttl:
            self._start(user)
        return self._answer(entry, now)

    def _answer(self, entry: _Entry, now: float | None = None) -> DirectoryGroups:
        now = self._clock() if now is None else now
        age = now - entry.fetched
        if entry.groups is None:
            return DirectoryGroups(frozenset(), UNKNOWN, age)
        if age < self.ttl:
            return DirectoryGroups(entry.groups, FRESH, age)
        if age < self.ttl + self.stale or self.on_outage == "last":
            return DirectoryGroups(entry.groups, STALE, age)
        return DirectoryGroups(frozenset(), EXPIRED, age)

    # ---- lookups ---------------------------------------------------------------------------

    def _start(self, user: str) -> concurrent.futures.Future | None:
        """A lookup of `user` in the pool (shared with one already running); None while down."""
        with self._lock:
            running = self._inflight.get(user)
            if running is not None:
                return running
            if self._clock() < self._down_until:
                return None
            future = self._pool.submit(self._fetch, user)
            self._inflight[user] = future
        future.add_done_callback(lambda f, u=user: self._finished(u, f))
        return future

    def _finished(self, user: str, future: concurrent.futures.Future) -> None:
        with self._lock:
            if self._inflight.get(user) is future:
                del self._inflight[user]

    def _fetch(self, user: str) -> None:
        started = time.perf_counter()
        try:
            groups = self._lookup(user)
        except DirectoryUnavailable as exc:
            self._failed(type(exc).__name__, str(exc))
            raise
        except Exception as exc:  # a bug in a lookup must not kill the refresher
            self._failed(type(exc).__name__, "")
            raise
        now = self._clock()
        self._counters.inc("directory_lookup_seconds_total", time.perf_counter() - started)
        self._counters.inc("directory_lookups_total", result="ok" if groups is not None else "unknown-user")
        with self._lock:
            if not self._up:
                self._log.info("directory_back", after_failures=True)
            self._up = True
            self._down_until = float("-inf")
            self._last_success = now
            entry = self._entries.get(user)
            if entry is None:
                entry = _Entry(groups, now, now)
                self._entries[user] = entry
                while len(self._entries) > self.max_users:
                    self._entries.popitem(last=False)
            else:
                if entry.groups != groups:
                    self._counters.inc("directory_group_changes_total")
                entry.groups, entry.fetched = groups, now

    def _failed(self, kind: str, message: str) -> None:
        self._counters.inc("directory_lookups_total", result="error")
        with self._lock:
            was_up = self._up
            self._up = False
            self._down_until = self._clock() + self.retry
        if was_up:
            self._log.error("directory_unavailable", error=kind, detail=message[:200],
                            rule=f"known users keep their groups for {self.stale:g} s past the "
                                 f"cache time, then on_outage={self.on_outage}")

    # ---- background refresh ------------------------------------------------------------------

    def refresh_due(self) -> int:
        """Start lookups for entries older than ttl that were used since; drop idle ones."""
        now = self._clock()
        due: list[str] = []
        with self._lock:
            for user, entry in list(self._entries.items()):
                if now - entry.used > self.idle:
                    del self._entries[user]
                elif now - entry.fetched >= self.ttl and user not in self._inflight:
                    due.append(user)
        started = 0
        for user in due:
            if self._start(user) is None:
                break
            started += 1
        return started

    def _sweep_loop(self) -> None:
        interval = max(0.05, min(self.ttl / 4 if self.ttl > 0 else 1.0, 5.0))
        while not self._stop.wait(interval):
            try:
                self.refresh_due()
            except Exception as exc:
                self._log.error("directory_refresh_error", error=type(exc).__name__)

    # ---- what the adapter exports ------------------------------------------------------------

    def samples(self) -> list[Sample]:
        now = self._clock()
        counts = {FRESH: 0, STALE: 0, EXPIRED: 0, UNKNOWN: 0}
        with self._lock:
            entries = list(self._entries.values())
            up = self._up
            last = self._last_success
        for entry in entries:
            counts[self._answer(entry, now).state] += 1
        out = self._counters.samples()
        out.append(Sample("directory_up", (), 1.0 if up else 0.0))
        for state, n in counts.items():
            out.append(Sample("directory_users", (("state", state),), float(n)))
        out.append(Sample("directory_last_success_age_seconds", (),
                          float(now - last) if last is not None else float("nan")))
        return out

    @property
    def counters(self) -> Counters:
        return self._counters

    @property
    def up(self) -> bool:
        return self._up

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)
