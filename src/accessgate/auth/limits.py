"""Failed sign-ins, limited per client address and per user name.

    limiter = FailureLimiter(burst=10, per_minute=6)
    limiter.limited(address="10.1.2.3", user="alice")   # -> None, or "address" / "user"
    limiter.failed(address="10.1.2.3", user="alice")

Each address and each user name has a token bucket: a failure takes a
token, tokens come back at `per_minute`, and with none left sign-ins from
that address (or as that name) are refused without being checked until one
comes back.  Success takes nothing.  The tables are bounded (`max_keys`):
the least recently failed key is forgotten first, which can only ever let
an attacker try again, never lock anyone out for longer.

A correct password that is already in the credential cache is accepted
before the limiter is asked (see `Authenticator`), so guessing someone's
password locks out new sign-ins for that name, never a browser that has
already signed in.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class _Buckets:
    def __init__(self, burst: float, rate: float, max_keys: int, clock: Callable[[], float]) -> None:
        self.burst = burst
        self.rate = rate  # tokens per second
        self.max_keys = max_keys
        self._clock = clock
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _level(self, key: str, now: float) -> float:
        state = self._tokens.get(key)
        if state is None:
            return self.burst
        tokens, at = state
        return min(self.burst, tokens + (now - at) * self.rate)

    def empty(self, key: str) -> bool:
        return self._level(key, self._clock()) < 1.0

    def take(self, key: str) -> None:
        now = self._clock()
        level = self._level(key, now)
        self._tokens[key] = (max(0.0, level - 1.0), now)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.max_keys:
            self._tokens.popitem(last=False)

    def retry_after(self, key: str) -> float:
        level = self._level(key, self._clock())
        return 0.0 if level >= 1.0 or self.rate <= 0 else (1.0 - level) / self.rate

    def __len__(self) -> int:
        return len(self._tokens)


class FailureLimiter:
    def __init__(self, burst: int = 10, per_minute: float = 6.0, user_burst: int | None = None,
                 user_per_minute: float | None = None, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or per_minute < 0:
            raise ValueError("a sign-in limit needs a burst of 1 or more and a rate of 0 or more per minute")
        self._lock = threading.Lock()
        self._by_address = _Buckets(burst, per_minute / 60.0, max_keys, clock)
        self._by_user = _Buckets(user_burst or burst, (user_per_minute if user_per_minute is not None
                                                       else per_minute) / 60.0, max_keys, clock)

    def __repr__(self) -> str:
        return (f"FailureLimiter(burst={self._by_address.burst}, addresses={len(self._by_address)}, "
                f"users={len(self._by_user)})")

    @staticmethod
    def _user_key(user: str | None) -> str | None:
        # Directories match names case-insensitively; so does the limit.
        return user.casefold() if user else None

    def limited(self, address: str | None, user: str | None) -> str | None:
        """"address" or "user" if sign-ins are refused for now, else None."""
        with self._lock:
            if address and self._by_address.empty(address):
                return "address"
            key = self._user_key(user)
            if key and self._by_user.empty(key):
                return "user"
        return None

    def failed(self, address: str | None, user: str | None) -> None:
        with self._lock:
            if address:
                self._by_address.take(address)
            key = self._user_key(user)
            if key:
                self._by_user.take(key)

    def retry_after(self, address: str | None, user: str | None) -> float:
        """Seconds until a limited client may try again (for a Retry-After header)."""
        with self._lock:
            waits = [0.0]
            if address:
                waits.append(self._by_address.retry_after(address))
            key = self._user_key(user)
            if key:
                waits.append(self._by_user.retry_after(key))
            return max(waits)
