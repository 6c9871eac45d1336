"""Credentials verified recently: a keyed digest of the credential -> the user.

    cache = CredentialCache(ttl=300, size=10_000)
    key = cache.key("basic", b"alice", b"secret")
    cache.put(key, "alice", "htpasswd", generation=3)
    cache.get(key, generation_of)   # -> ("alice", "htpasswd") or None

The key is an HMAC with a random per-process secret, so neither the cache
nor a memory dump of it holds a password or an unsalted hash of one.  An
entry expires after `ttl` seconds, or as soon as its method's source
changes (a re-read htpasswd file: `generation`).  The least recently used
entry goes when the cache is full.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple


class _Entry(NamedTuple):
    user: str
    method: str
    generation: int
    expires: float


class CredentialCache:
    def __init__(self, ttl: float = 300.0, size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0 or size < 0:
            raise ValueError("the credential cache needs a ttl and a size of 0 or more")
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CredentialCache(ttl={self.ttl}, size={self.size}, entries={len(self._entries)})"

    def key(self, *parts: bytes) -> bytes:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        return mac.digest()

    def get(self, key: bytes, generation_of: Callable[[str], int]) -> tuple[str, str] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock() or entry.generation != generation_of(entry.method):
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        return entry.user, entry.method

    def put(self, key: bytes, user: str, method: str, generation: int) -> None:
        if self.ttl <= 0 or self.size <= 0:
            return
        entry = _Entry(user, method, generation, self._clock() + self.ttl)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
