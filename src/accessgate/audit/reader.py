"""Read audit logs with SQL: the files become one DuckDB view, `audit`.

Auditors point at a live log, its rotated siblings (`x.jsonl.1`,
`x.jsonl.2.gz`, `x.jsonl-20261122.gz`) or a glob of them; the view has one
row per record with a column for every field of the record's schema
(`accessgate.audit.schema.COLUMNS`), whatever version wrote it:
columns an older writer did not write are NULL, and records without `event`
(schema 0) count as `access`.

A line that is not JSON (a write torn by a crash) is skipped; a live file
whose last line is incomplete is reported in `AuditReader.problems` rather than
failing the query, because that is what a crash leaves behind.  So is a line
longer than `MAX_LINE_BYTES` (the writer never writes one; an older writer
or an edit may have): DuckDB would refuse the whole file for it, so such a
file is read from a private copy without it.  `accessgate audit verify`
still checks where that line stands in the chain, and reports every record
that these tools cannot read.

Rotated files never change, so their parsed columns are kept in a Parquet
cache (see `Cache`): the first query of a rotated file pays for parsing, the
next ones read ~50x less.  `accessgate audit index` fills the cache for any
file, including a live one that has stopped growing.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import duckdb

from accessgate.audit.schema import COLUMNS, COMPRESSIONS, MAX_LINE_BYTES, chain_order
from accessgate.errors import AuditLogError

# Bumped whenever COLUMNS or the cached layout changes: old entries are ignored.
CACHE_FORMAT = "3"

_CHUNK = 4 << 20  # bytes per read while looking for long lines
_COMPRESSED = (".gz", ".zst")  # what DuckDB reads
_UNSUPPORTED = tuple(c for c in COMPRESSIONS if c not in _COMPRESSED)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A point in time for `--since`/`--until`, as an aware UTC datetime.

    Accepts ISO dates (`2026-11-01`, midnight UTC), ISO times with or
    without an offset (without: UTC, like the log), and ages relative to now:
    `30m`, `12h`, `7d`, `2w`.
    """
    text = text.strip()
    now = now or datetime.now(timezone.utc)
    rel = re.fullmatch(r"(\d+)\s*([smhdw])", text)
    if rel:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        return now - timedelta(**{unit[rel.group(2)]: int(rel.group(1))})
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: write an ISO date or time "
            "(2026-11-01, 2026-11-01T09:30, 2026-11-01T09:30+01:00) or an age (30m, 12h, 7d, 2w)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def naive_utc(moment: datetime) -> datetime:
    """The form the view's `ts` column compares with: UTC without tzinfo."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def expand(patterns: Iterable[str]) -> list[Path]:
    """The files named by `patterns` (paths or globs), each once, in chain order.

    A file that exists under the name given is that file, even when its name
    has glob characters (`audit[1].jsonl`).
    """
    found: dict[Path, None] = {}
    for pattern in patterns:
        literal = not glob.has_magic(pattern) or os.path.isfile(pattern)
        matches = [pattern] if literal else sorted(glob.glob(pattern))
        if not matches:
            raise AuditLogError(f"no audit log matches {pattern!r}: check the path or quote the glob")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise AuditLogError(f"{match}: no such audit log file")
            if path.name.endswith(_UNSUPPORTED):
                raise AuditLogError(
                    f"{match}: this compression cannot be read; decompress it or "
                    "have logrotate use gzip (`compress` with the default compresscmd)"
                )
            found[path] = None
    return sorted(found, key=chain_order)


def incomplete_last_line(path: Path) -> str | None:
    """A sentence about a live file's torn last line, or None when it ends cleanly.

    Only plain files are checked (it costs one read of the file's end);
    compressed files are rotated ones, which rotation closed whole.
    """
    if path.name.endswith(_COMPRESSED):
        return None
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    if not tail or tail.endswith(b"\n"):
        return None
    fragment = tail[tail.rfind(b"\n") + 1 :]
    try:
        json.loads(fragment)
        return None  # a whole record that only lacks its newline
    except ValueError:
        pass
    line = _count_lines(path) + 1
    return (
        f"{path}:{line}: incomplete last line ({len(fragment)} bytes, most likely cut off "
        "by a crash while writing); it was skipped"
    )


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            count += chunk.count(b"\n")
    return count


def has_long_line(path: Path, limit: int = MAX_LINE_BYTES) -> bool:
    """Whether a line of `path` (plain or gzip) is longer than `limit` bytes.

    Reads in chunks no longer than `limit`, so a line inside one chunk is
    short; only the run of bytes across chunks without a newline is counted.
    """
    size = min(_CHUNK, limit)
    buf = bytearray(size)
    run = 0  # bytes since the last newline
    with _open_bytes(path) as fh:
        while n := fh.readinto(buf):
            first = buf.find(b"\n", 0, n)
            if first < 0:
                run += n
                if run > limit:
                    return True
                continue
            if run + first > limit:
                return True
            run = n - buf.rfind(b"\n", 0, n) - 1
    return run > limit


def copy_short_lines(path: Path, dest, limit: int = MAX_LINE_BYTES) -> list[tuple[int, int]]:
    """Copy the lines of `path` to the binary file `dest`, leaving out lines over `limit` bytes.

    Returns (line number, length) of each line left out.  Holds at most
    `limit` bytes of a line in memory.
    """
    left_out: list[tuple[int, int]] = []
    lines = 0  # complete lines before the current one
    pending = bytearray()  # the current line so far, while it may still be short
    run = 0  # its length so far
    with _open_bytes(path) as fh:
        while chunk := fh.read(min(_CHUNK, limit)):
            first = chunk.find(b"\n")
            if first < 0:
                run += len(chunk)
                if run <= limit:
                    pending += chunk
                else:
                    pending.clear()
                continue
            if run + first > limit:
                left_out.append((lines + 1, run + first))
            else:
                dest.write(pending)
                dest.write(chunk[: first + 1])
            last = chunk.rfind(b"\n")
            dest.write(chunk[first + 1 : last + 1])  # whole lines, each shorter than a chunk
            lines += 1 + chunk.count(b"\n", first + 1, last + 1)
            pending = bytearray(chunk[last + 1 :])
            run = len(pending)
    if run > limit:
        left_out.append((lines + 1, run))
    else:
        dest.write(pending)
    return left_out


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb", buffering=0)


class ShortLines:
    """The file DuckDB can read for each log file: itself, or a private copy without its long lines.

    `problems` names each line left out.  `close()` removes the copies.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self.skipped: dict[Path, list[str]] = {}  # per file: a sentence per line left out
        self._dir: str | None = None

    @property
    def problems(self) -> list[str]:
        return [line for lines in self.skipped.values() for line in lines]

    def source(self, path: Path) -> Path:
        if not has_long_line(path, self.limit):
            return path
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="accessgate-audit-")  # private: 0700
        fd, name = tempfile.mkstemp(dir=self._dir, suffix=".jsonl.gz")
        # Compressed: the temporary directory may be memory (tmpfs), and this is the rare case.
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as dest:
            left_out = copy_short_lines(path, dest, self.limit)
        self.skipped[path] = [
            f"{path}:{line}: a line of {length:,} bytes is longer than the audit tools read "
            f"({self.limit:,} bytes); it was skipped (`accessgate audit verify` checks its place "
            "in the chain)"
            for line, length in left_out
        ]
        return Path(name)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def read_json_sql(files: Sequence[Path], types: dict[str, str] | None = None) -> str:
    """DuckDB's read_json over `files` (their lines at most MAX_LINE_BYTES), with COLUMNS.

    `types` changes the type of some columns (which changes no line's parse).
    """
    names = ", ".join(_quote(_glob_literal(str(p))) for p in files)
    cols = ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in (COLUMNS | (types or {})).items())
    return (
        f"read_json([{names}], format = 'newline_delimited', columns = {{{cols}}}, "
        f"ignore_errors = true, compression = 'auto_detect', maximum_object_size = {MAX_LINE_BYTES})"
    )


def _glob_literal(name: str) -> str:
    """`name` as a DuckDB file pattern that matches only itself (DuckDB globs every name)."""
    return re.sub(r"[\[*?]", lambda m: "[" + m.group() + "]", name)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The view: torn lines come back from read_json as all-NULL rows (no ts).
_VIEW_SELECT = ", ".join(
    "coalesce(event, 'access') AS event" if name == "event" else _ident(name) for name in COLUMNS
)


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
                f"COPY (SELECT * FROM {read_json_sql([source or path])}) TO {_quote(tmp)} "
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


@dataclass(frozen=True)
class Result:
    columns: list[str]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


class AuditReader:
    """Audit log files as the DuckDB view `audit`.

        with AuditReader(["/var/log/accessgate/audit.jsonl*"]) as log:
            log.sql("SELECT count(*) FROM audit WHERE decision = 'block'").rows

    `cache`: None disables the Parquet cache; `build_cache` says which files
    get a new entry ("rotated", "all" or "none").  `problems` lists what was
    skipped (torn last lines), for the caller to show on stderr.
    """

    def __init__(
        self,
        patterns: Iterable[str],
        *,
        cache: Cache | None = None,
        build_cache: str = "rotated",
        threads: int | None = None,
        progress: Callable[[duckdb.DuckDBPyConnection], Any] | None = None,
    ) -> None:
        self.files = expand(patterns)
        if not self.files:
            raise AuditLogError("no audit log files given")
        self.problems: list[str] = []
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET enable_progress_bar = false")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self._progress = progress
        self._short = ShortLines()
        parquet: list[Path] = []
        raw: list[Path] = []
        try:
            for path in self.files:
                problem = incomplete_last_line(path)
                if problem:
                    self.problems.append(problem)
                entry = cache.lookup(path) if cache is not None else None
                if entry is not None:
                    parquet.append(entry)
                    self.problems += cache.skipped(entry)
                    continue
                source = self._short.source(path)
                skipped = self._short.skipped.get(path, [])
                self.problems += skipped
                wanted = build_cache == "all" or (build_cache == "rotated" and is_rotated(path))
                if cache is not None and wanted:
                    try:
                        entry = self._run(lambda: cache.build(self.con, path, source, skipped))
                    except (OSError, duckdb.Error):
                        entry = None  # an unwritable cache only costs speed
                if entry is not None:
                    parquet.append(entry)
                else:
                    raw.append(source)
        except (OSError, EOFError, zlib.error) as exc:
            self.close()
            raise AuditLogError(f"an audit log file could not be read: {exc}") from None
        self.cached = len(parquet)
        sources = []
        if parquet:
            names = ", ".join(_quote(_glob_literal(str(p))) for p in parquet)
            sources.append(f"SELECT * FROM read_parquet([{names}])")
        if raw:
            sources.append(f"SELECT * FROM {read_json_sql(raw)}")
        self.con.execute(
            f"CREATE TEMP VIEW audit AS SELECT {_VIEW_SELECT} FROM "
            f"({' UNION ALL '.join(sources)}) WHERE ts IS NOT NULL"
        )

    def _run(self, work: Callable[[], Any]) -> Any:
        if self._progress is None:
            return work()
        with self._progress(self.con):
            return work()

    def sql(self, query: str, params: Sequence[Any] | None = None) -> Result:
        """Run `query` (which may name the view `audit`); all rows, fetched."""
        params = [naive_utc(p) if isinstance(p, datetime) else p for p in (params or [])]

        def work() -> Result:
            try:
                cur = self.con.execute(query, params)
            except duckdb.Error as exc:
                raise AuditLogError(explain_duckdb(exc)) from None
            if cur.description is None:
                return Result([], [])
            columns = [d[0] for d in cur.description]
            return Result(columns, cur.fetchall())

        return self._run(work)

    def stream(
        self, query: str, params: Sequence[Any] | None = None, batch: int = 10000
    ) -> tuple[list[str], Iterator[tuple]]:
        """(columns, rows) of `query`, the rows fetched `batch` at a time (for big results)."""
        params = [naive_utc(p) if isinstance(p, datetime) else p for p in (params or [])]
        try:
            cur = self._run(lambda: self.con.execute(query, params))
        except duckdb.Error as exc:
            raise AuditLogError(explain_duckdb(exc)) from None
        if cur.description is None:
            return [], iter(())
        columns = [d[0] for d in cur.description]

        def rows() -> Iterator[tuple]:
            try:
                while chunk := cur.fetchmany(batch):
                    yield from chunk
            except duckdb.Error as exc:
                raise AuditLogError(explain_duckdb(exc)) from None

        return columns, rows()

    def rows(self, query: str, params: Sequence[Any] | None = None) -> Iterator[dict[str, Any]]:
        """Stream the rows of `query` as dicts."""
        columns, rows = self.stream(query, params)
        return (dict(zip(columns, row)) for row in rows)

    def close(self) -> None:
        self.con.close()
        self._short.close()

    def __enter__(self) -> "AuditReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def explain_duckdb(exc: Exception) -> str:
    text = str(exc).strip()
    if "Could not read" in text or "gzip" in text.lower() and "error" in text.lower():
        return f"an audit log file could not be read: {text}"
    return f"query failed: {text}"
