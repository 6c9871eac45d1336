"""Export a query's rows through DuckDB's own writers: CSV, JSON lines, a JSON array, Parquet.

Rows never pass through Python: `COPY (query) TO …` writes the file, or a
pipe that a thread copies to standard output.  The rules of
`accessgate.audit.tools.output` hold all the same, applied in SQL or on
the bytes:

- times read as the log writes them (`2026-11-23T11:30:02.125Z`);
- CSV: a text cell that a spreadsheet would run as a formula (it starts
  with = + - @, a tab, a carriage return or NUL) gets a leading `'`; lists
  are joined with commas, maps written `key=value,…`; DuckDB quotes every
  cell with a quote, comma, carriage return or newline;
- JSON: exact values; the characters a terminal acts on that JSON may
  carry raw (DEL, C1 controls, line and paragraph separators,
  bidirectional marks) are written as `\\uXXXX` escapes, the same JSON;
- Parquet: exact values and types.
"""

from __future__ import annotations

import os
import re
import threading
from typing import IO, Any, Callable, Sequence

FORMATS = ("csv", "json", "jsonl", "parquet")

# The COPY options of each format.  JSON is an array; JSON lines one object a line.
_COPY = {
    "csv": "FORMAT csv, HEADER true",
    "json": "FORMAT json, ARRAY true",
    "jsonl": "FORMAT json",
    "parquet": "FORMAT parquet",
}
_TIME = "strftime({0}, '%Y-%m-%dT%H:%M:%S.%gZ')"
# A cell a spreadsheet would run as a formula (OWASP), as output.csv_cell decides it.
_FORMULA = "CASE WHEN left({0}, 1) IN ('=', '+', '-', '@', chr(9), chr(13), chr(0)) THEN '''' || {0} ELSE {0} END"

# In UTF-8 JSON these appear only inside strings, where \uXXXX means the same character.
_RAW_IN_JSON = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]")
_CHUNK = 1 << 20


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def projection(columns: Sequence[tuple[str, str]], fmt: str) -> str:
    """The SELECT list that makes each column (name, DuckDB type) what `fmt` writes."""
    out = []
    for name, sql_type in columns:
        col = _ident(name)
        kind = sql_type.upper()
        if fmt == "parquet":
            expr = col
        elif kind.startswith("TIMESTAMP"):
            expr = _TIME.format(col)
        elif fmt != "csv":
            expr = col
        elif kind == "VARCHAR":
            expr = _FORMULA.format(col)
        elif kind.endswith("[]"):
            expr = _FORMULA.format(f"array_to_string(list_transform({col}, lambda x: coalesce(x::VARCHAR, '')), ',')")
        elif kind.startswith("MAP("):
            pair = "coalesce(e.key::VARCHAR, '') || '=' || coalesce(e.value::VARCHAR, '')"
            pairs = f"list_transform(map_entries({col}), lambda e: {pair})"
            expr = _FORMULA.format(f"array_to_string({pairs}, ',')")
        elif kind.startswith(("STRUCT", "UNION", "JSON")):
            expr = _FORMULA.format(f"{col}::VARCHAR")
        else:
            expr = col  # numbers and booleans: never a formula, even when negative
        out.append(expr if expr == col else f"{expr} AS {col}")
    return ", ".join(out)


def export(
    con: Any,
    query: str,
    params: Sequence[Any],
    fmt: str,
    out: str | IO[bytes],
    run: Callable[[Callable[[], Any]], Any] = lambda work: work(),
) -> None:
    """Write the rows of `query` in `fmt` to `out`: a file name, or a binary stream (standard output).

    `run` wraps DuckDB's work (the reader's progress bar).  Raises duckdb.Error
    as DuckDB does, and BrokenPipeError when the reader of `out` went away.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    described = con.execute(f"SELECT * FROM ({query}) LIMIT 0", list(params)).description
    columns = [(d[0], str(d[1])) for d in described]
    select = f"SELECT {projection(columns, fmt)} FROM ({query})"
    if isinstance(out, str) and fmt != "json" and fmt != "jsonl":
        run(lambda: con.execute(f"COPY ({select}) TO {_quote(out)} ({_COPY[fmt]})", list(params)))
        return
    if isinstance(out, str):
        with open(out, "wb") as sink:
            _through_pipe(con, select, params, fmt, sink, run)
    else:
        _through_pipe(con, select, params, fmt, out, run)


def _through_pipe(con: Any, select: str, params: Sequence[Any], fmt: str, sink: IO[bytes], run) -> None:
    """COPY into a pipe; a thread copies what comes out to `sink` (escaping JSON for terminals)."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []
    clean = fmt in ("json", "jsonl")

    def pump() -> None:
        held = b""
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            try:
                while chunk := pipe.read(_CHUNK):
                    if clean:
                        chunk, held = _hold_incomplete(held + chunk)
                        chunk = _RAW_IN_JSON.sub(_escape, chunk)
                    sink.write(chunk)
                if held:
                    sink.write(_RAW_IN_JSON.sub(_escape, held))
                sink.flush()
            except BaseException as exc:  # the reader went away: DuckDB then fails on the pipe, and stops
                failure.append(exc)

    thread = threading.Thread(target=pump, name="accessgate-export", daemon=True)
    thread.start()
    try:
        run(lambda: con.execute(f"COPY ({select}) TO '/dev/fd/{write_fd}' ({_COPY[fmt]})", list(params)))
    except Exception:
        if failure:
            raise failure[0] from None
        raise
    finally:
        os.close(write_fd)
        thread.join()
    if failure:
        raise failure[0]


def _hold_incomplete(data: bytes) -> tuple[bytes, bytes]:
    """`data` split before a UTF-8 character its last bytes only begin (it ends in the next read)."""
    for back in (1, 2):
        if len(data) >= back and data[-back] >= 0xC0:
            return data[:-back], data[-back:]
    return data, b""


def _escape(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode("utf-8"))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
