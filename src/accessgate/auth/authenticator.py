"""Sign-in: the configured methods in order, behind a cache, a limiter and a thread pool.

    auth = Authenticator([NegotiateMethod(...), LdapMethod(directory), HtpasswdMethod(path)])
    result = await auth.check_async(flow.request.headers.get("Proxy-Authorization"), "10.1.2.3")
    if not result.ok:   # 407 with one Proxy-Authenticate header per value:
        auth.challenges      # ('Negotiate', 'Basic realm="accessgate", charset="UTF-8"')
    result.user, result.method, result.reply   # reply: a mutual-auth Proxy-Authenticate value, or None

The cheap path runs in the caller: parse the header, look the credential up
in the cache (a keyed digest -> user, `ttl` seconds), done.  Everything
slow (bcrypt, an LDAP bind, a Kerberos token) runs in a bounded thread
pool: `check_async` awaits it without blocking the event loop, `check`
waits for it in the calling thread.  Concurrent checks of one Basic
credential share a single check.  Failures are limited per address and per
user name (`FailureLimiter`); a limited client is refused without a check.

Basic credentials go to the Basic methods in order: the first method that
knows the user decides (a wrong password there is final); a method that is
unavailable (directory down) passes to the next.  Negotiate tokens are
never cached or shared: a token seen twice is a replay and its method
refuses it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from accessgate.oplog import get_logger
from accessgate.auth.base import OK, REFUSED, UNAVAILABLE, UNKNOWN_USER, Method, Verdict
from accessgate.auth.cache import CredentialCache
from accessgate.auth.counters import Counters, Sample
from accessgate.auth.credentials import Basic, Malformed, Negotiate, describe_user, parse
from accessgate.auth.limits import FailureLimiter

# SignIn outcomes.
ACCEPTED = "accepted"        # user is set
ANONYMOUS = "anonymous"      # no Proxy-Authorization at all
REFUSED_ = "refused"         # a wrong credential (reason says which way)
MALFORMED = "malformed"      # not a credential at all
UNSUPPORTED = "unsupported"  # a scheme no configured method reads
LIMITED = "limited"          # too many failures from this address or for this name
UNAVAILABLE_ = "unavailable"  # no method could check (directory down, timeout)
BUSY = "busy"                # too many checks waiting; try again shortly


class Checking:
    """A check running in the pool; `await checking.result()` for its SignIn."""

    __slots__ = ("_auth", "_future", "_creds")

    def __init__(self, auth: Authenticator, future: concurrent.futures.Future, creds: Basic | Negotiate) -> None:
        self._auth, self._future, self._creds = auth, future, creds

    def __repr__(self) -> str:
        return f"Checking({self._creds})"

    async def result(self) -> SignIn:
        return await self._auth._wait(self._future, self._creds)


@dataclass(frozen=True, slots=True)
class SignIn:
    """The answer for one Proxy-Authorization header. Holds no secret."""

    outcome: str
    user: str | None = None      # the canonical name (never the typed one), when accepted
    method: str | None = None    # 'negotiate', 'ldap', 'htpasswd'
    reason: str = ""             # 'cached', 'bad-password', 'unknown-user', 'replayed', 'address', ...
    reply: str | None = None     # Proxy-Authenticate value to send back (SPNEGO mutual auth)
    retry_after: float | None = None  # seconds, when limited

    @property
    def ok(self) -> bool:
        return self.outcome == ACCEPTED


class _LogThrottle:
    """At most `per_second` refusal lines a second; the rest are counted only."""

    def __init__(self, per_second: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._window = -1
        self._used = 0
        self.suppressed = 0

    def allow(self) -> bool:
        window = int(self._clock())
        if window != self._window:
            self._window, self._used = window, 0
        self._used += 1
        if self._used > self.per_second:
            self.suppressed += 1
            return False
        return True


def lower_priority(nice: int) -> None:
    """Make the calling thread `nice` steps nicer (Linux: niceness is per thread); else nothing."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # no per-thread priorities here: the pool still works
        pass


class Authenticator:
    def __init__(
        self,
        methods: Sequence[Method],
        *,
        cache_ttl: float = 300.0,
        cache_size: int = 10_000,
        limiter: FailureLimiter | None = None,
        workers: int = 4,
        max_pending: int = 256,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        counters: Counters | None = None,
        nice: int = 0,
    ) -> None:
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ValueError(f"sign-in methods named twice in {names}; name each once")
        self.methods = tuple(methods)
        self.timeout = timeout
        self.max_pending = max_pending
        self._clock = clock
        self._by_scheme: dict[str, tuple[Method, ...]] = {}
        for method in self.methods:
            self._by_scheme[method.scheme] = self._by_scheme.get(method.scheme, ()) + (method,)
        self._by_name = {m.name: m for m in self.methods}
        self.cache = CredentialCache(cache_ttl, cache_size, clock)
        self.limiter = limiter if limiter is not None else FailureLimiter(clock=clock)
        # nice > 0: the pool's threads run that much nicer than the caller, so that on a busy
        # machine the scheduler gives the proxy's event loop the core before a bcrypt check.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                           thread_name_prefix="accessgate-signin",
                                                           initializer=lower_priority if nice > 0 else None,
                                                           initargs=(nice,) if nice > 0 else ())
        self._lock = threading.Lock()
        self._inflight: dict[bytes, concurrent.futures.Future[Verdict | tuple[str, Verdict]]] = {}
        self._pending = 0
        self._polled = float("-inf")
        # Passed in by the proxy, so that a rebuilt Authenticator keeps counting where the last one stopped.
        self._counters = counters if counters is not None else Counters()
        self._log = get_logger("auth")
        self._throttle = _LogThrottle(clock=clock)

    def __repr__(self) -> str:
        return f"Authenticator(methods={[m.name for m in self.methods]}, cache={self.cache!r})"

    # ---- what the proxy shows a client ----------------------------------------

    @property
    def challenges(self) -> tuple[str, ...]:
        """Proxy-Authenticate values for a 407, in the configured order, each once."""
        seen: list[str] = []
        schemes: set[str] = set()
        for method in self.methods:
            if method.scheme not in schemes:
                schemes.add(method.scheme)
                seen.append(method.challenge())
        return tuple(seen)

    # ---- checking ------------------------------------------------------------------

    def check(self, header: str | bytes | None, address: str | None = None) -> SignIn:
        """Check in the calling thread (CLI, tests); the slow part still runs in the pool."""
        first = self._begin(header, address)
        if isinstance(first, SignIn):
            return self._count(first)
        future, creds = first
        try:
            outcome = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            return self._count(self._timed_out(creds))
        return self._count(self._finish(outcome))

    async def check_async(self, header: str | bytes | None, address: str | None = None) -> SignIn:
        """Check without blocking the event loop: slow checks run in the thread pool."""
        first = self.begin(header, address)
        return first if isinstance(first, SignIn) else await first.result()

    def begin(self, header: str | bytes | None, address: str | None = None) -> SignIn | Checking:
        """The answer now if it needs no check (cached, anonymous, malformed, limited), else a
        `Checking` to await: the proxy's request hook stays synchronous for the common case."""
        first = self._begin(header, address)
        if isinstance(first, SignIn):
            return self._count(first)
        return Checking(self, *first)

    async def _wait(self, future: concurrent.futures.Future, creds: Basic | Negotiate) -> SignIn:
        try:
            outcome = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)
        except asyncio.TimeoutError:
            return self._count(self._timed_out(creds))
        return self._count(self._finish(outcome))

    def _begin(self, header: str | bytes | None, address: str | None):
        creds = parse(header)
        if creds is None:
            return SignIn(ANONYMOUS, reason="no-credentials")
        if isinstance(creds, Malformed):
            if creds.reason == "unsupported-scheme":
                return SignIn(UNSUPPORTED, reason="unsupported-scheme")
            self.limiter.failed(address, None)
            self._refusal_log("signin_malformed", address, None, None, creds.reason, detail=creds.detail)
            return SignIn(MALFORMED, reason=creds.reason)
        scheme = "basic" if isinstance(creds, Basic) else "negotiate"
        if scheme not in self._by_scheme:
            return SignIn(UNSUPPORTED, reason=f"no-{scheme}-method")
        self._poll()
        key = None
        if isinstance(creds, Basic):
            key = self.cache.key(b"basic", creds.user.encode("utf-8"), creds.password)
            hit = self.cache.get(key, self._generation_of)
            if hit is not None:
                self._counters.inc("signin_cache_total", result="hit")
                return SignIn(ACCEPTED, user=hit[0], method=hit[1], reason="cached")
            self._counters.inc("signin_cache_total", result="miss")
        user = creds.user if isinstance(creds, Basic) else None
        scope = self.limiter.limited(address, user)
        if scope is not None:
            self._counters.inc("signin_limited_total", scope=scope)
            self._refusal_log("signin_limited", address, user, None, scope)
            return SignIn(LIMITED, reason=scope, retry_after=round(self.limiter.retry_after(address, user), 1))
        with self._lock:
            if key is not None and key in self._inflight:
                self._counters.inc("signin_coalesced_total")
                return self._inflight[key], creds
            if self._pending >= self.max_pending:
                busy = True
            else:
                busy = False
                self._pending += 1
                future = self._pool.submit(self._verify, creds, key, address)
                if key is not None:
                    self._inflight[key] = future
        if busy:
            self._counters.inc("signin_busy_total")
            return SignIn(BUSY, reason="too-many-pending-checks", retry_after=1.0)
        future.add_done_callback(lambda f, k=key: self._done(k, f))
        return future, creds

    def _done(self, key: bytes | None, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending -= 1
            if key is not None and self._inflight.get(key) is future:
                del self._inflight[key]

    def _verify(self, creds: Basic | Negotiate, key: bytes | None, address: str | None) -> tuple[str, Verdict]:
        """Runs in the pool: the methods in order, then cache or count the result once."""
        scheme = "basic" if isinstance(creds, Basic) else "negotiate"
        started = time.perf_counter()
        unavailable: tuple[str, Verdict] | None = None
        answer: tuple[str, Verdict] | None = None
        for method in self._by_scheme[scheme]:
            generation = method.generation
            try:
                verdict = method.check(creds)
            except Exception as exc:  # a method's bug must not leak a credential or crash the proxy
                self._log.error("signin_method_error", method=method.name, error=type(exc).__name__)
                verdict = Verdict(UNAVAILABLE, reason="error")
            if verdict.outcome == OK and verdict.user:
                if key is not None:
                    self.cache.put(key, verdict.user, method.name, generation)
                answer = (method.name, verdict)
                break
            if verdict.outcome == REFUSED:
                answer = (method.name, verdict)
                break
            if verdict.outcome == UNAVAILABLE and unavailable is None:
                unavailable = (method.name, verdict)
        if answer is None:
            answer = unavailable or ("", Verdict(UNKNOWN_USER, reason="unknown-user"))
        name, verdict = answer
        self._counters.inc("signin_check_seconds_total", time.perf_counter() - started, scheme=scheme)
        user = creds.user if isinstance(creds, Basic) else None
        if verdict.outcome in (REFUSED, UNKNOWN_USER):
            self.limiter.failed(address, user)
            self._refusal_log("signin_refused", address, user, name or None, verdict.reason)
        elif verdict.outcome == UNAVAILABLE:
            self._refusal_log("signin_unavailable", address, user, name or None, verdict.reason)
        return answer

    def _finish(self, answer: tuple[str, Verdict]) -> SignIn:
        name, verdict = answer
        if verdict.outcome == OK:
            return SignIn(ACCEPTED, user=verdict.user, method=name, reason="checked", reply=verdict.reply)
        if verdict.outcome == UNAVAILABLE:
            return SignIn(UNAVAILABLE_, method=name or None, reason=verdict.reason)
        return SignIn(REFUSED_, method=name or None, reason=verdict.reason)

    def _timed_out(self, creds: Basic | Negotiate) -> SignIn:
        user = creds.user if isinstance(creds, Basic) else None
        self._refusal_log("signin_timeout", None, user, None, "timeout")
        return SignIn(UNAVAILABLE_, reason="timeout")

    # ---- bookkeeping ---------------------------------------------------------------

    def _count(self, result: SignIn) -> SignIn:
        method = result.method or "none"
        self._counters.inc("signin_total", method=method, result=result.outcome)
        if result.outcome not in (ACCEPTED, ANONYMOUS):
            # Reasons are fixed codes ('bad-password', 'replayed', ...); a limited client's is 'limited'.
            reason = "limited" if result.outcome == LIMITED else (result.reason or result.outcome)
            self._counters.inc("signin_failures_total", method=method, reason=reason)
        return result

    def _generation_of(self, method: str) -> int:
        found = self._by_name.get(method)
        return found.generation if found is not None else -1

    def _poll(self) -> None:
        now = self._clock()
        if now - self._polled < 1.0:
            return
        self._polled = now
        for method in self.methods:
            try:
                method.poll()
            except Exception as exc:
                self._log.error("signin_poll_error", method=method.name, error=type(exc).__name__)

    def _refusal_log(self, event: str, address: str | None, user: str | None, method: str | None,
                     reason: str, **extra: str) -> None:
        if not self._throttle.allow():
            return
        fields = {"client": address, "method": method, "reason": reason, **extra}
        if user is not None:
            fields["user"] = describe_user(user)
        if self._throttle.suppressed:
            fields["suppressed"] = self._throttle.suppressed
            self._throttle.suppressed = 0
        self._log.warning(event, **fields)

    def samples(self) -> list[Sample]:
        """Counters for the metrics adapter (names without the accessgate_ prefix), plus gauges."""
        out = self._counters.samples()
        out.append(Sample("signin_cache_entries", (), float(len(self.cache))))
        out.append(Sample("signin_pending_checks", (), float(self._pending)))
        return out

    @property
    def counters(self) -> Counters:
        return self._counters

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for method in self.methods:
            method.close()
