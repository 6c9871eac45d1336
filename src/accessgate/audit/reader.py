"""Read audit logs with SQL: the files become one DuckDB view, `audit`.

Auditors point at a live log, its rotated siblings (`x.jsonl.1`,
`x.jsonl.2.gz`, `x.jsonl-20261122.gz`) or a glob of them; the view has one
row per record with a column for every field of the record's schema
(`accessgate.audit.schema.COLUMNS`), whatever version wrote it:
columns an older writer did not write are NULL, and records without `event`
(schema 0) count as `access`.

A line that is not JSON (a write torn by a crash) is skipped; a live file
whose last line is incomplete, and a line longer than the tools read (see
`sources`), are reported in `AuditReader.problems` rather than failing the
query.  Rotated files are read from the query cache (`cache`) once parsed.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import duckdb

from accessgate.audit.cache import Cache, is_rotated
from accessgate.audit.schema import COLUMNS
from accessgate.audit.sources import ShortLines, expand, glob_literal, incomplete_last_line, quote, read_json_sql
from accessgate.errors import AuditLogError


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


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The view: torn lines come back from read_json as all-NULL rows (no ts).
_VIEW_SELECT = ", ".join(
    "coalesce(event, 'access') AS event" if name == "event" else _ident(name) for name in COLUMNS
)


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
    get a new entry ("rotated", "all" or "none").  `prefilter`: groups of
    string values such that every query will keep only records with one of
    each group's values in some field (`audit query --site facebook
    --decision block`: [["facebook"], ["block"]]); the JSON files not read
    from the cache are then read from a copy of only the lines that hold them
    (found as bytes, before any JSON is parsed), which is faster when few do.
    The view then holds those records and others: the query must still
    filter.  `problems` lists what was skipped (torn last lines), for the
    caller to show on stderr.
    """

    def __init__(
        self,
        patterns: Iterable[str],
        *,
        cache: Cache | None = None,
        build_cache: str = "rotated",
        threads: int | None = None,
        progress: Callable[[duckdb.DuckDBPyConnection], Any] | None = None,
        prefilter: Sequence[Sequence[str]] | None = None,
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
                elif prefilter and source == path:
                    raw.append(self._short.matching(path, prefilter))
                else:
                    raw.append(source)
        except (OSError, EOFError, zlib.error) as exc:
            self.close()
            raise AuditLogError(f"an audit log file could not be read: {exc}") from None
        self.cached = len(parquet)
        sources = []
        if parquet:
            names = ", ".join(quote(glob_literal(str(p))) for p in parquet)
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

    def export(self, query: str, params: Sequence[Any] | None, fmt: str, out: str | IO[bytes]) -> None:
        """Write the rows of `query` in `fmt` (csv, json, jsonl, parquet) to a file name or a binary stream,
        through DuckDB's own writers (`accessgate.audit.tools.export`)."""
        from accessgate.audit.tools.export import export

        params = [naive_utc(p) if isinstance(p, datetime) else p for p in (params or [])]
        try:
            export(self.con, query, params, fmt, out, self._run)
        except duckdb.Error as exc:
            raise AuditLogError(explain_duckdb(exc)) from None

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
