"""Keyed pseudonyms for user names in the audit log.

The proxy writes `pseudonymize(key, user)` instead of the name; auditors who
hold the key re-identify by computing the same pseudonym for candidate names
(`accessgate audit reveal`).  HMAC-SHA256, so without the key a pseudonym
neither reveals the name nor can be confirmed by guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import sys
from pathlib import Path

PREFIX = "u-"


def pseudonymize(key: bytes, user: str) -> str:
    digest = hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:24]


def is_pseudonym(value: str) -> bool:
    return value.startswith(PREFIX) and len(value) == len(PREFIX) + 24


def read_key(path: str | Path, *, private: bool = False) -> bytes:
    """Read a key file; refuse short keys, which a guesser could brute-force.

    Whoever can read the key can re-identify every user, so the file must be
    private to its owner (and at most readable by a group, such as the
    proxy's).  With `private` (the proxy) a looser file is refused; the
    auditors' tools only warn, loudly, on stderr.
    """
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        message = (
            f"pseudonymization key {path} can be read or changed by other users of this machine "
            f"(mode {stat.S_IMODE(mode):04o}), and whoever reads it can re-identify every user; "
            f"make it private: chmod 600 {path} (or 640 owned by root and the proxy's group)"
        )
        if private:
            raise ValueError(message)
        print(f"accessgate: WARNING: {message}", file=sys.stderr, flush=True)
    return key_bytes(path, "pseudonymization key")


def key_bytes(path: str | Path, what: str) -> bytes:
    """The key in the file at `path`, stripped; refused when shorter than 16 bytes (a guesser could brute-force it)."""
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise ValueError(
            f"{what} in {path} is {len(key)} bytes; use at least 16 random bytes "
            "(e.g. `(umask 077; head -c 32 /dev/urandom | base64 > KEYFILE)`)"
        )
    return key
