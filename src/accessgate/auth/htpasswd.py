"""`htpasswd:PATH`: users and password hashes from a file Apache's `htpasswd` wrote.

    method = HtpasswdMethod("/etc/accessgate/htpasswd")
    method.check(Basic("alice", b"secret"))   # Verdict(outcome="ok", user="alice")

The file is read at start (a missing or unreadable file is an error then)
and again whenever its size, time or inode changes; a re-read that fails
keeps the entries read before, and says so in the log.  Lines it cannot use
(DES crypt, plain text, no colon, a name twice) are skipped and named by
line number, never by content.  Names are matched exactly, as Apache does.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from accessgate.oplog import get_logger
from accessgate.auth import hashes
from accessgate.auth.base import OK, REFUSED, UNAVAILABLE, UNKNOWN_USER, Verdict
from accessgate.auth.credentials import Basic, Negotiate


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class HtpasswdEntries:
    hashes: dict[str, str]
    kinds: dict[str, str]
    problems: tuple[Problem, ...]


def read_htpasswd(path: str | os.PathLike[str]) -> HtpasswdEntries:
    """Parse a file; OSError if it cannot be read, ValueError if it is not text."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); write it with htpasswd") from None
    found: dict[str, str] = {}
    kinds: dict[str, str] = {}
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, stored = line.partition(":")
        if not colon or not user:
            problems.append(Problem(number, "no 'user:hash' here; write entries with htpasswd"))
            continue
        stored = stored.strip()
        if user in found:
            problems.append(Problem(number, f"user {user!r} again; the first entry counts, delete this one"))
            continue
        try:
            kind = hashes.kind_of(stored)
        except hashes.UnsupportedHash as exc:
            problems.append(Problem(number, f"user {user!r}: {exc}"))
            continue
        found[user] = stored
        kinds[user] = kind
    return HtpasswdEntries(found, kinds, tuple(problems))


class HtpasswdMethod:
    name = "htpasswd"
    scheme: ClassVar[str] = "basic"

    def __init__(self, path: str | os.PathLike[str], realm: str = "accessgate") -> None:
        self.path = Path(path)
        self.realm = realm
        self._log = get_logger("auth")
        self._lock = threading.Lock()
        self._generation = 0
        try:
            self._signature = self._stat()
            self._entries = read_htpasswd(self.path)
        except OSError as exc:
            raise ValueError(f"cannot read htpasswd file {self.path}: {exc.strerror or exc}; "
                             "create it with 'htpasswd -B -c FILE USER'") from None
        self._report()

    # ---- Method ------------------------------------------------------------

    def challenge(self) -> str:
        return f'Basic realm="{self.realm}", charset="UTF-8"'

    @property
    def generation(self) -> int:
        return self._generation

    def poll(self) -> None:
        try:
            signature = self._stat()
        except OSError:
            signature = None
        if signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:
                return
            self._reload(signature)

    def check(self, credentials: Basic | Negotiate) -> Verdict:
        if not isinstance(credentials, Basic):
            return Verdict(UNKNOWN_USER, reason="not-basic")
        entries = self._entries
        stored = entries.hashes.get(credentials.user)
        if stored is None:
            # Same cost as a wrong password would be nicer, but the name is
            # not secret here: the 407 is the same either way.
            return Verdict(UNKNOWN_USER, reason="unknown-user")
        if not credentials.password:
            return Verdict(REFUSED, reason="empty-password")
        try:
            matched = hashes.verify(credentials.password, stored)
        except (hashes.UnsupportedHash, ValueError):
            return Verdict(UNAVAILABLE, reason="bad-entry")
        if matched:
            return Verdict(OK, user=credentials.user)
        return Verdict(REFUSED, reason="bad-password")

    def close(self) -> None:
        pass

    def users(self) -> frozenset[str]:
        return frozenset(self._entries.hashes)

    # ---- reading -------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)

    def _reload(self, signature: tuple[int, int, int, int] | None) -> None:
        try:
            if signature is None:
                raise FileNotFoundError(2, "no such file")
            entries = read_htpasswd(self.path)
        except (OSError, ValueError) as exc:
            self._signature = signature
            self._log.error("htpasswd_reload_failed", path=str(self.path),
                            error=getattr(exc, "strerror", None) or str(exc),
                            users=len(self._entries.hashes),
                            hint="the entries read before stay in force; fix the file")
            return
        self._signature = signature
        self._entries = entries
        self._generation += 1
        self._report()

    def _report(self) -> None:
        entries = self._entries
        self._log.info("htpasswd_loaded", path=str(self.path), users=len(entries.hashes),
                       skipped=len(entries.problems))
        for problem in entries.problems:
            self._log.warning("htpasswd_entry_skipped", path=str(self.path), problem=str(problem))
