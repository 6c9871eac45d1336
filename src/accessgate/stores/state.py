"""Where daily quota minutes live: `open_store(spec)` -> a quota ledger.

The option `accessgate_state` names the store:

    sqlite:PATH      one file, survives restarts (the default); proxies on
                     one host may share it
    redis://HOST:PORT/DB?timeout=0.05&on_error=closed|local
                     one Redis shared by every proxy, on any host
    memory:          this process only, gone on restart (tests)

Every store implements `quota.QuotaLedger` (usage, mark) plus `close()` and
`stats()`.  A minute is a member of a set keyed by (subject, site, day), so
marking is idempotent: a minute counts once however many requests, threads
and proxies mark it.

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

import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import parse_qsl, urlsplit

from accessgate.errors import StateStoreError, StateStoreUnavailable
from accessgate.decision.quota import MemoryLedger, QuotaLedger, QuotaUsage

ACCEPTED_FORMS = (
    "`sqlite:PATH`, "
    "`redis://HOST:PORT/DB` (optionally `?timeout=SECONDS&on_error=closed|local"
    "&retry=SECONDS&prefix=NAME`, `rediss://` for TLS, `USER:PASSWORD@` before the host) "
    "or `memory:`"
)
ON_ERROR_RULES = ("closed", "local")
DEFAULT_TIMEOUT = 0.05  # seconds: a local Redis answers in well under 1 ms
DEFAULT_RETRY = 1.0  # seconds between reconnection attempts while Redis is down
DEFAULT_PREFIX = "accessgate"

ErrorCallback = Callable[[StateStoreError], None]


# -- the spec string --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateSpec:
    """A parsed `accessgate_state` value."""

    kind: str  # "sqlite" | "redis" | "memory"
    path: str = ""  # sqlite
    url: str = ""  # redis: the URL without accessgate's own query parameters
    timeout: float = DEFAULT_TIMEOUT
    on_error: str = "closed"
    retry: float = DEFAULT_RETRY
    prefix: str = DEFAULT_PREFIX

    def __str__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        if self.kind == "memory":
            return "memory:"
        # Never echo a password into logs.
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return f"{parts.scheme}://{netloc}{parts.path or '/0'}?timeout={self.timeout:g}&on_error={self.on_error}"


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"accessgate_state {spec!r} is not valid: {why}. Use {ACCEPTED_FORMS}.")


def parse_spec(spec: str) -> StateSpec:
    """Parse an `accessgate_state` value; ValueError with the accepted forms if bad."""
    text = spec.strip()
    if text == "memory:":
        return StateSpec("memory")
    if text.startswith("sqlite:"):
        path = text[len("sqlite:") :]
        if not path:
            raise _bad(spec, "the sqlite form needs a file path after `sqlite:`")
        return StateSpec("sqlite", path=str(Path(path).expanduser()))
    if text.startswith(("redis://", "rediss://")):
        return _parse_redis(spec, text)
    raise _bad(spec, "it names no known store")


def _positive_seconds(spec: str, name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 60:
        raise _bad(spec, f"`{name}` must be a number of seconds above 0 and at most 60, not {value!r}")
    return seconds


def _parse_redis(spec: str, text: str) -> StateSpec:
    parts = urlsplit(text)
    try:
        parts.port  # reading it validates it
    except ValueError:
        raise _bad(spec, "the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise _bad(spec, "the redis form needs a host")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise _bad(spec, f"the database after the host must be a number, not {db!r}")
    fields: dict[str, object] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "timeout":
            fields["timeout"] = _positive_seconds(spec, name, value)
        elif name == "retry":
            fields["retry"] = _positive_seconds(spec, name, value)
        elif name == "on_error":
            if value not in ON_ERROR_RULES:
                raise _bad(spec, f"`on_error` must be `closed` or `local`, not {value!r}")
            fields["on_error"] = value
        elif name == "prefix":
            if not value or any(c.isspace() for c in value):
                raise _bad(spec, "`prefix` must be a non-empty name without spaces")
            fields["prefix"] = value
        else:
            raise _bad(spec, f"unknown parameter `{name}` (known: timeout, on_error, retry, prefix)")
    url = parts._replace(path=f"/{int(db)}", query="", fragment="").geturl()
    return StateSpec("redis", url=url, **fields)  # type: ignore[arg-type]


# -- what every store offers ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters for logs and metrics; cumulative since the store was opened."""

    kind: str
    available: bool  # the backing store answered the last time it was asked
    operations: int  # usage() and mark() calls
    errors: int  # calls on which the backing store failed
    seconds: float  # time spent inside usage() and mark()
    local_minutes: int = 0  # redis on_error=local: minutes counted locally, not yet merged
    last_error: str = ""


class QuotaStore(QuotaLedger, Protocol):
    spec: StateSpec

    def close(self) -> None: ...

    def stats(self) -> StoreStats: ...


def open_store(
    spec: str | StateSpec, on_error: ErrorCallback | None = None, pseudonymize_key: bytes | None = None
) -> QuotaStore:
    """Open the store that `spec` names.

    With `pseudonymize_key`, user subjects are stored as the audit log's
    pseudonyms (`PseudonymousSubjects`), so the store names no one either.

    `on_error` is called (from the calling thread) with the StateStoreError
    of every failed attempt to reach the backing store (for Redis at most
    once per `retry` seconds; calls in between fail without trying), also
    under `on_error=local` where usage() and mark() do not raise, so that
    the addon can log and count them.  Raises
    ValueError for a bad spec, StateStoreError if a SQLite file cannot be
    opened.  Opening a Redis store never fails: Redis may come later.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    store: QuotaStore
    if parsed.kind == "memory":
        store = MemoryStore(parsed)
    elif parsed.kind == "sqlite":
        store = SqliteStore(parsed, on_error)
    else:
        store = RedisStore(parsed, on_error)
    return PseudonymousSubjects(store, pseudonymize_key) if pseudonymize_key else store


class PseudonymousSubjects:
    """A store that keeps `user:NAME` subjects as `user:<pseudonym of NAME>`.

    The audit log holds keyed pseudonyms when a key is set; a quota store
    holding the names for the same minutes would undo that by a join.  The
    same HMAC as the log (`pseudonym.pseudonymize`), so auditors with the key
    can still tell whose minutes a row holds.  Client addresses (`ip:...`)
    stay, as in the log.
    """

    _CACHE = 50_000  # names kept pseudonymized; one HMAC per user, not per request

    def __init__(self, store: QuotaStore, key: bytes) -> None:
        self.store = store
        self.spec = store.spec
        self._key = key
        self._subjects: dict[str, str] = {}

    def subject(self, subject: str) -> str:
        stored = self._subjects.get(subject)
        if stored is None:
            from accessgate.audit.pseudonym import pseudonymize

            stored = "user:" + pseudonymize(self._key, subject[5:]) if subject.startswith("user:") else subject
            if len(self._subjects) >= self._CACHE:
                self._subjects.clear()
            self._subjects[subject] = stored
        return stored

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        return self.store.usage(self.subject(subject), site, day, minute)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        return self.store.mark(self.subject(subject), site, day, minute)

    def close(self) -> None:
        self.store.close()

    def stats(self) -> StoreStats:
        return self.store.stats()

    def __getattr__(self, name: str):  # prune(), the Redis store's own helpers ...
        return getattr(self.store, name)


class _Counters:
    """The mutable side of StoreStats, shared by the stores (plain ints: this is per request)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.available = True
        self.operations = self.errors = self.local_minutes = 0
        self.seconds = 0.0
        self.last_error = ""

    def done(self, started: float, error: StateStoreError | None = None, local_minutes: int = 0) -> None:
        # Unlocked: a lost increment under threads would only blur a metric.
        self.operations += 1
        self.seconds += time.perf_counter() - started
        self.local_minutes = local_minutes
        self.available = error is None
        if error is not None:
            self.errors += 1
            self.last_error = str(error)

    @property
    def stats(self) -> StoreStats:
        return StoreStats(
            self.kind, self.available, self.operations, self.errors, self.seconds,
            self.local_minutes, self.last_error,
        )


class _Counted:
    """Per (subject, site, day): the last minute known to be counted, and the count then.

    A page is dozens of requests in the same minute.  Once that minute is
    counted the decision cannot change before the next one (a counted
    minute is never exhausted, see QuotaUsage.exhausted), so neither
    usage() nor mark() needs to ask the store again: one round trip per
    user, site and minute instead of two per request.  The count may lag
    other proxies' marks within the minute; only the status page shows it.
    It is also where on_error=local starts counting from.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, date], tuple[int, int | None]] = {}
        self._day: date | None = None
        self._lock = threading.Lock()

    def paid(self, k: tuple[str, str, date], minute: int) -> int | None:
        """Minutes used if `minute` is known to be counted, else None."""
        used, known = self._entries.get(k, (0, None))
        return used if known == minute else None

    def last(self, k: tuple[str, str, date]) -> tuple[int, int | None]:
        return self._entries.get(k, (0, None))

    def put(self, k: tuple[str, str, date], used: int, minute: int | None) -> None:
        with self._lock:
            day = k[2]
            if self._day is None or day > self._day:
                # Bounded: a new day drops what is older than yesterday.
                self._day = day
                self._entries = {x: v for x, v in self._entries.items() if x[2] >= day - timedelta(days=1)}
            known = self._entries.get(k, (0, None))[1]
            self._entries[k] = (used, minute if minute is not None else known)


# -- memory -----------------------------------------------------------------


class MemoryStore:
    """`memory:`: quota.MemoryLedger with the store interface."""

    def __init__(self, spec: StateSpec = StateSpec("memory")) -> None:
        self.spec = spec
        self._ledger = MemoryLedger()
        self._counters = _Counters("memory")

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        started = time.perf_counter()
        try:
            return self._ledger.usage(subject, site, day, minute)
        finally:
            self._counters.done(started)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        started = time.perf_counter()
        try:
            return self._ledger.mark(subject, site, day, minute)
        finally:
            self._counters.done(started)

    def prune(self, before: date) -> None:
        self._ledger.prune(before)

    def stats(self) -> StoreStats:
        return self._counters.stats

    def close(self) -> None:
        pass


# -- SQLite -----------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_minutes (
    subject TEXT NOT NULL,
    site    TEXT NOT NULL,
    day     TEXT NOT NULL,     -- local date in the policy's zone, ISO 8601
    minute  INTEGER NOT NULL,  -- UTC epoch minute
    PRIMARY KEY (subject, site, day, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quota_minutes_day ON quota_minutes (day);
"""


class SqliteStore:
    """`sqlite:PATH`: one row per counted minute; the primary key makes marks idempotent.

    WAL lets readers go on while a proxy writes; `busy_timeout` makes a
    second process on the same file wait for the lock instead of failing.
    One connection behind a lock: SQLite serialises writers anyway, and
    mitmproxy calls from one thread, so a pool would buy nothing.
    Rows of days before yesterday are deleted when a new day is first
    marked, so the file holds at most about two days of minutes.
    """

    BUSY_TIMEOUT_MS = 2000

    def __init__(self, spec: StateSpec, on_error: ErrorCallback | None = None) -> None:
        self.spec = spec
        self._on_error = on_error
        self._counters = _Counters("sqlite")
        self._lock = threading.Lock()
        path = Path(spec.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=self.BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL survives a crash of the proxy; only a power
            # loss can take back the last marks, which costs a user a minute.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            (latest,) = self._db.execute("SELECT max(day) FROM quota_minutes").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreError(
                f"cannot open the quota state file {spec.path}: {exc}; "
                "check that its directory is writable, or set accessgate_state to another path"
            ) from exc
        self._latest_day = date.fromisoformat(latest) if latest else None
        self._counted = _Counted()

    def _fail(self, what: str, exc: Exception) -> StateStoreError:
        error = StateStoreError(
            f"quota state file {self.spec.path}: cannot {what}: {exc}; "
            "check the disk and the file's permissions"
        )
        if self._on_error is not None:
            self._on_error(error)
        return error

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        started = time.perf_counter()
        if (paid := self._counted.paid((subject, site, day), minute)) is not None:
            self._counters.done(started)
            return QuotaUsage(paid, True)
        try:
            with self._lock:
                used, current = self._db.execute(
                    "SELECT count(*), coalesce(max(minute = ?), 0) FROM quota_minutes"
                    " WHERE subject = ? AND site = ? AND day = ?",
                    (minute, subject, site, day.isoformat()),
                ).fetchone()
        except sqlite3.Error as exc:
            error = self._fail("read", exc)
            self._counters.done(started, error)
            raise error from exc
        self._counters.done(started)
        self._counted.put((subject, site, day), used, minute if current else None)
        return QuotaUsage(used, bool(current))

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        started = time.perf_counter()
        if (paid := self._counted.paid((subject, site, day), minute)) is not None:
            self._counters.done(started)
            return paid
        key = (subject, site, day.isoformat())
        try:
            with self._lock:
                if self._latest_day is None or day > self._latest_day:
                    self._latest_day = day
                    self._prune(day - timedelta(days=1))
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("INSERT OR IGNORE INTO quota_minutes VALUES (?, ?, ?, ?)", (*key, minute))
                    (used,) = self._db.execute(
                        "SELECT count(*) FROM quota_minutes WHERE subject = ? AND site = ? AND day = ?", key
                    ).fetchone()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            error = self._fail("write", exc)
            self._counters.done(started, error)
            raise error from exc
        self._counters.done(started)
        self._counted.put((subject, site, day), used, minute)
        return used

    def prune(self, before: date) -> None:
        """Delete every minute of days before `before`."""
        with self._lock:
            self._prune(before)

    def _prune(self, before: date) -> None:
        self._db.execute("DELETE FROM quota_minutes WHERE day < ?", (before.isoformat(),))

    def stats(self) -> StoreStats:
        return self._counters.stats

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- Redis ------------------------------------------------------------------


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
        self._counters = _Counters("redis")
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
        self._counted = _Counted()

    def key(self, subject: str, site: str, day: date) -> str:
        # The site's length keeps "a:b" + "c" apart from "a" + "b:c".
        return f"{self.spec.prefix}:quota:{day.isoformat()}:{len(site)}:{site}:{subject}"

    # The two operations: try Redis, else apply the failure rule.

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        started = time.perf_counter()
        k = (subject, site, day)
        if (paid := self._counted.paid(k, minute)) is not None:
            self._counters.done(started, local_minutes=self._pending_count())
            return QuotaUsage(paid, True)

        def remote() -> QuotaUsage:
            pipe = self._client.pipeline(transaction=False)
            pipe.scard(self.key(*k))
            pipe.sismember(self.key(*k), minute)
            used, current = pipe.execute()
            self._counted.put(k, int(used), minute if current else None)
            return QuotaUsage(int(used), bool(current))

        return self._call(started, remote, lambda: self._local_usage(k, minute))

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        started = time.perf_counter()
        k = (subject, site, day)
        if (paid := self._counted.paid(k, minute)) is not None:
            self._counters.done(started, local_minutes=self._pending_count())
            return paid

        def remote() -> int:
            used = self._add(k, {minute})
            self._counted.put(k, used, minute)
            return used

        return self._call(started, remote, lambda: self._local_mark(k, minute))

    def _add(self, k: tuple[str, str, date], minutes: set[int]) -> int:
        key = self.key(*k)
        pipe = self._client.pipeline(transaction=True)
        pipe.sadd(key, *minutes)
        pipe.expire(key, time_to_live(k[2], max(minutes)))
        pipe.scard(key)
        return int(pipe.execute()[-1])

    def _call(self, started: float, remote, local):
        if time.monotonic() >= self._down_until:
            try:
                self._merge_pending()
                result = remote()
            except self._redis_errors as exc:
                error = self._went_down(exc)
            else:
                self._counters.done(started, local_minutes=self._pending_count())
                return result
        else:
            error = StateStoreUnavailable(
                f"Redis quota store {self.spec} is unreachable; retrying at most every {self.spec.retry:g} s"
            )
        self._counters.done(started, error, local_minutes=self._pending_count())
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
