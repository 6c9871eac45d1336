"""Keyed pseudonyms for user names in the audit log.

The proxy writes `pseudonymize(key, user)` instead of the name; auditors who
hold the key re-identify by computing the same pseudonym for candidate names
(`accessgate audit reveal`).  HMAC-SHA256, so without the key a pseudonym
neither reveals the name nor can be confirmed by guessing.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

PREFIX = "u-"


def pseudonymize(key: bytes, user: str) -> str:
    digest = hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:24]


def is_pseudonym(value: str) -> bool:
    return value.startswith(PREFIX) and len(value) == len(PREFIX) + 24


def read_key(path: str | Path) -> bytes:
    """Read a key file; refuse short keys, which a guesser could brute-force."""
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise ValueError(
            f"pseudonymization key in {path} is {len(key)} bytes; use at least 16 "
            "random bytes (e.g. `head -c 32 /dev/urandom | base64 > KEYFILE`)"
        )
    return key
