"""`redis://…`: quota minutes in one Redis shared by every proxy, on any host.

Redis may go away.  The store then never crashes and never blocks a request
for longer than `timeout`; what it answers follows `on_error`:

    closed (default)  usage() raises StateStoreUnavailable; the addon blocks
                      quota-governed grants only (fail closed on quotas,
                      everything else keeps working)
    local             count in this process (starting from the last counts
                      seen in Redis) and merge the local minutes into Redis
                      when it is back

It retries Redis at most every `retry` seconds (default 1), so a dead
server costs one timeout per second, not one per request.
"""

from __future__ import annotations

import threading
import time
from datetime import date, datetime, timedelta, timezone

from accessgate.errors import StateStoreUnavailable
from accessgate.decision.quota import QuotaUsage
from accessgate.stores.base import Counted, Counters, ErrorCallback, StoreStats
from accessgate.stores.spec import StateSpec


def expiry(day: date) -> int:
    """When the minutes of local `day` may go (epoch seconds): the day's end in every zone, plus a day.

    The store does not know the policy's zone, so it takes the latest zone
    on earth (UTC-12, where `day` ends at 12:00 UTC the next day) and keeps
    the set one more day for the status page and for late readers.
    """
    end_everywhere = datetime.combine(day + timedelta(days=1), datetime.min.time(), timezone.utc)
    return int((end_everywhere + timedelta(hours=12, days=1)).timestamp())


def time_to_live(day: date, minute: int) -> int:
    """Seconds a set marked at `minute` must live to reach `expiry(day)`.

    Relative to the minute being marked, not to Redis's clock: the proxy's
    clock is the one that names days, so a skewed Redis clock (or a test's
    controlled one) cannot expire a day early.
    """
    return max(expiry(day) - minute * 60, 3600)


class RedisStore:
    """`redis://…`: per (subject, site, day) a Redis set of minutes.

    mark() is one MULTI/EXEC round trip (SADD, EXPIRE, SCARD), usage() one
    pipelined round trip (SCARD, SISMEMBER): atomic on the server, so any
    number of proxies can mark the same minute and it counts once.
    """

    def __init__(self, spec: StateSpec, on_error: ErrorCallback | None = None) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.spec = spec
        self._on_error = on_error
        self._counters = Counters("redis")
        self._redis_errors = (redis.RedisError, OSError)
        # No client-side retries: a retry would multiply the time a request
        # waits on a dead server.  Recovery is ours, at most once per `retry`.
        self._client = redis.Redis.from_url(
            spec.url,
            socket_timeout=spec.timeout,
            socket_connect_timeout=spec.timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._lock = threading.Lock()
        self._down_until = 0.0  # time.monotonic() before which Redis is not tried
        # on_error=local: minutes counted while Redis was away, to merge later.
        self._pending: dict[tuple[str, str, date], set[int]] = {}
        self._counted = Counted()

    def key(self, subject: str, site: str, day: date) -> str:
        # The site's length keeps "a:b" + "c" apart from "a" + "b:c".
        return f"{self.spec.prefix}:quota:{day.isoformat()}:{len(site)}:{site}:{subject}"

    # The two operations: try Redis, else apply the failure rule.

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        k = (subject, site, day)
        if (paid := self._counted.paid(k, minute)) is not None:
            self._counters.done(local_minutes=self._pending_count())
            return QuotaUsage(paid, True)

        def remote() -> QuotaUsage:
            pipe = self._client.pipeline(transaction=False)
            pipe.scard(self.key(*k))
            pipe.sismember(self.key(*k), minute)
            used, current = pipe.execute()
            self._counted.put(k, int(used), minute if current else None)
            return QuotaUsage(int(used), bool(current))

        return self._call(remote, lambda: self._local_usage(k, minute))

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        k = (subject, site, day)
        if (paid := self._counted.paid(k, minute)) is not None:
            self._counters.done(local_minutes=self._pending_count())
            return paid

        def remote() -> int:
            used = self._add(k, {minute})
            self._counted.put(k, used, minute)
            return used

        return self._call(remote, lambda: self._local_mark(k, minute))

    def _add(self, k: tuple[str, str, date], minutes: set[int]) -> int:
        key = self.key(*k)
        pipe = self._client.pipeline(transaction=True)
        pipe.sadd(key, *minutes)
        pipe.expire(key, time_to_live(k[2], max(minutes)))
        pipe.scard(key)
        return int(pipe.execute()[-1])

    def _call(self, remote, local):
        if time.monotonic() >= self._down_until:
            try:
                self._merge_pending()
                result = remote()
            except self._redis_errors as exc:
                error = self._went_down(exc)
            else:
                self._counters.done(local_minutes=self._pending_count())
                return result
        else:
            error = StateStoreUnavailable(
                f"Redis quota store {self.spec} is unreachable; retrying at most every {self.spec.retry:g} s"
            )
        self._counters.done(error, local_minutes=self._pending_count())
        if self.spec.on_error == "local":
            return local()
        raise error

    def _went_down(self, exc: Exception) -> StateStoreUnavailable:
        with self._lock:
            self._down_until = time.monotonic() + self.spec.retry
        error = StateStoreUnavailable(
            f"Redis quota store {self.spec} did not answer: {exc.__class__.__name__}: {exc}; "
            f"quota-governed access is {'counted locally' if self.spec.on_error == 'local' else 'blocked'} "
            f"until it answers again (retrying every {self.spec.retry:g} s)"
        )
        error.__cause__ = exc
        if self._on_error is not None:
            self._on_error(error)
        return error

    # -- warn grants (decision.continuations.ContinuationStore) --
    # Never counted locally: while Redis is away nobody continues (the warn
    # page says the store cannot be reached) and no nonce can be replayed.

    def continue_key(self, subject: str, site: str) -> str:
        return f"{self.spec.prefix}:continue:{len(site)}:{site}:{subject}"

    def continued_until(self, subject: str, site: str) -> float | None:
        value = self._remote_only(lambda: self._client.get(self.continue_key(subject, site)))
        return float(value) if value is not None else None

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        # Expiry relative to the proxy's clock, as quota sets (see time_to_live).
        ttl = max(1, int(until - now) + 60)
        self._remote_only(lambda: self._client.set(self.continue_key(subject, site), repr(until), ex=ttl))

    def claim_nonce(self, nonce: str, until: float, now: float) -> bool:
        ttl = max(1, int(until - now) + 60)
        key = f"{self.spec.prefix}:nonce:{nonce}"
        return bool(self._remote_only(lambda: self._client.set(key, "1", nx=True, ex=ttl)))

    def _remote_only(self, remote):
        if time.monotonic() < self._down_until:
            error = StateStoreUnavailable(
                f"Redis state store {self.spec} is unreachable; retrying at most every {self.spec.retry:g} s"
            )
            self._counters.done(error, local_minutes=self._pending_count())
            raise error
        try:
            result = remote()
        except self._redis_errors as exc:
            error = self._went_down(exc)
            self._counters.done(error, local_minutes=self._pending_count())
            raise error from exc
        self._counters.done(local_minutes=self._pending_count())
        return result

    # on_error=local: count on from the last count Redis gave.

    def _local_usage(self, k: tuple[str, str, date], minute: int) -> QuotaUsage:
        with self._lock:
            used, known = self._counted.last(k)
            local = self._pending.get(k, set())
            return QuotaUsage(used + len(local - {known}), minute in local or minute == known)

    def _local_mark(self, k: tuple[str, str, date], minute: int) -> int:
        with self._lock:
            self._pending.setdefault(k, set()).add(minute)
        return self._local_usage(k, minute).used

    def _pending_count(self) -> int:
        return sum(len(m) for m in self._pending.values())

    def _merge_pending(self) -> None:
        """Redis is back: add the minutes counted locally while it was away."""
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            for k, minutes in list(pending.items()):
                self._counted.put(k, self._add(k, minutes), max(minutes))
                del pending[k]
        except BaseException:
            # Keep what was not merged (SADD is idempotent, so re-adding is safe).
            with self._lock:
                for k, minutes in pending.items():
                    self._pending.setdefault(k, set()).update(minutes)
            raise

    def stats(self) -> StoreStats:
        return self._counters.stats

    def close(self) -> None:
        # Best effort: hand the local minutes to Redis before going.
        if self._pending and time.monotonic() >= self._down_until:
            try:
                self._merge_pending()
            except self._redis_errors as exc:
                self._went_down(exc)
        self._client.close()
