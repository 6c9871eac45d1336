"""The query cache: rotated log files, parsed once, kept as Parquet.

Rotated files never change, so the first query of one pays for parsing it
and the next ones read its columns from the cache.  `accessgate audit index`
fills the cache for any file, including a live one that has stopped growing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import duckdb

from accessgate.audit.schema import chain_order
from accessgate.audit.sources import quote, read_json_sql

# Bumped whenever the view's columns or the cached layout change: old entries are ignored.
CACHE_FORMAT = "3"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("ACCESSGATE_AUDIT_CACHE", os.path.join(base, "accessgate", "audit")))


def is_rotated(path: Path) -> bool:
    return chain_order(path)[1] < 2


@dataclass
class Cache:
    """Parsed columns of log files, as Parquet, keyed by what the file *is*.

    The key is (device, inode, size, mtime): a rename by logrotate keeps it,
    an append or a rewrite changes it.  The cache holds audit data, so its
    directory is private to the user (0700).  Entries unused for
    `keep_days` are removed.
    """

    directory: Path = field(default_factory=default_cache_dir)
    keep_days: int = 35

    def entry(self, path: Path) -> Path:
        st = path.stat()
        key = f"{CACHE_FORMAT}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".parquet")

    def lookup(self, path: Path) -> Path | None:
        entry = self.entry(path)
        if entry.exists():
            try:
                os.utime(entry)  # in use: keep it
            except OSError:
                pass
            return entry
        return None

    def build(
        self, con: duckdb.DuckDBPyConnection, path: Path, source: Path | None = None, skipped: Sequence[str] = ()
    ) -> Path:
        """Parse `source` (what DuckDB can read of `path`; `path` itself by default) into `path`'s entry.

        `skipped` names the lines of `path` that `source` leaves out; they are
        kept beside the entry, so that every query of it says so again.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = self.entry(path)
        notes = entry.with_suffix(".skipped")
        if skipped:
            notes.write_text("".join(line + "\n" for line in skipped), encoding="utf-8", errors="surrogateescape")
        elif notes.exists():
            notes.unlink()
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(fd)
        try:
            con.execute(
                f"COPY (SELECT * FROM {read_json_sql([source or path])}) TO {quote(tmp)} "
                "(FORMAT parquet, COMPRESSION snappy)"
            )
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.prune()
        return entry

    def skipped(self, entry: Path) -> list[str]:
        """The lines left out of the file that `entry` was built from (see build)."""
        try:
            text = entry.with_suffix(".skipped").read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return []
        return text.splitlines()

    def prune(self) -> None:
        cutoff = time.time() - self.keep_days * 86400
        for old in self.directory.glob("*.parquet"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass
        for notes in self.directory.glob("*.skipped"):
            if not notes.with_suffix(".parquet").exists():
                try:
                    notes.unlink()
                except OSError:
                    pass
