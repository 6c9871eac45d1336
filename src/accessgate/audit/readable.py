"""Which chained records the query tools cannot read, and why.

`audit verify` counts, per file, the chained records that the tools' own
reader (`sources.read_json_sql`, DuckDB) sees; only for a file where the
count falls short does it walk the file beside those rows to name each
record they miss.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from pathlib import Path
from typing import Iterator, NamedTuple

from accessgate.audit.encoding import has_surrogate
from accessgate.audit.lines import JUNK_RUN, chain_fields, items, opened
from accessgate.audit.schema import TS_TEXT

_LOOKAHEAD = 64  # rows the tools read that verify did not count, skipped while matching
_TS = re.compile(TS_TEXT)


class Unread(NamedTuple):
    file: Path
    line: int
    seq: int
    why: str


def unread(files: list[Path], expected: list[int], limit: int) -> Iterator[Unread]:
    """Each chained record of `files` the query tools miss, given how many each file holds."""
    import duckdb

    from accessgate.audit.sources import ShortLines, read_json_sql

    con = duckdb.connect(":memory:")
    short = ShortLines(limit)
    try:
        for path, want in zip(files, expected):
            if want == 0:
                continue
            # The rows the tools show (a ts they read) that are chained as chain_fields
            # sees it: an integer seq and a text prev, whatever DuckDB could cast.
            source = read_json_sql([short.source(path)], {"seq": "JSON", "prev": "JSON"})
            rows = (
                f"FROM {source} WHERE ts IS NOT NULL AND json_type(seq) IN ('BIGINT', 'UBIGINT') "
                "AND json_type(prev) = 'VARCHAR'"
            )
            (got,) = con.execute(f"SELECT count(*) {rows}").fetchone()
            if got != want:
                yield from _walk(path, con.execute(f"SELECT seq::VARCHAR, prev->>'$' {rows}"), limit)
    finally:
        short.close()
        con.close()


def _walk(path: Path, cursor, limit: int) -> Iterator[Unread]:
    """Walk the file's chained records beside the rows the tools read (both in file order)."""
    ahead: deque[tuple[int, str]] = deque()

    def fill() -> None:
        if len(ahead) < _LOOKAHEAD:
            ahead.extend(cursor.fetchmany(4096))

    number = 0
    with opened(path) as (fh, _):
        for item in items(fh, limit):
            if type(item) is not bytes:
                number += item[1] if item[0] == JUNK_RUN else 1  # a long line: reported already
                continue
            number += 1
            line = item[:-1] if item[-1:] == b"\n" else item
            fields = chain_fields(line)
            if fields is None:
                continue
            key = (str(fields[0]), fields[1])
            fill()
            if ahead and ahead[0] == key:
                ahead.popleft()
                continue
            if key in itertools.islice(ahead, _LOOKAHEAD):
                while ahead[0] != key:  # rows the tools read that are no chained record here
                    ahead.popleft()
                ahead.popleft()
                continue
            yield Unread(path, number, fields[0], _why_unreadable(line))


def _why_unreadable(line: bytes) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"it is not UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}"
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError):
        return "not valid JSON"
    if has_surrogate(rec):
        return "it holds a \\u escape of a lone surrogate, which their JSON reader refuses"
    if not isinstance(rec, dict) or "ts" not in rec:
        return "no ts"
    if isinstance(rec["ts"], str) and _TS.fullmatch(rec["ts"]):
        return "their JSON reader refuses it"
    return f"ts {rec['ts']!r} is not a time the tools read"
