"""The tools' output for people and programs: aligned tables, CSV, JSON.

Log values come from clients: a method or path may be a spreadsheet formula
or terminal control sequences.  Text output shows such characters as visible
escapes; CSV cells that a spreadsheet would run as a formula get a leading
`'` (OWASP: cells starting with = + - @ tab CR, and NUL); JSON stays exact.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import itertools
import json
import re
from typing import Any, Iterable, Sequence

FORMATS = ("table", "csv", "json", "jsonl")


def json_value(value: Any) -> Any:
    """A value of a query's row as JSON types; times as the log writes them."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def text_value(value: Any) -> str:
    """A value of a query's row as one cell of text (not yet made safe: see safe_text)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return json_value(value)
    if isinstance(value, (list, tuple)):
        return ",".join(text_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{text_value(k)}={text_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(json_value(value)) if not isinstance(value, str) else value


# -- what reaches a spreadsheet or a terminal ------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")
# C0 and C1 controls and DEL (ESC starts colours, cursor moves, OSC 8 links),
# line and paragraph separators, bidirectional marks and overrides (they
# reorder what is shown), and lone surrogates (no character at all).
_UNSAFE = "\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_TEXT = re.compile(f"[{_UNSAFE}]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe_text(value: object) -> str:
    """`value` as text that a terminal shows as it is: no control character acts."""
    return _UNSAFE_TEXT.sub(_visible, str(value))


def csv_cell(value: Any) -> str:
    text = text_value(value)
    if text.startswith(_FORMULA_START) and not isinstance(value, (int, float, decimal.Decimal)):
        return "'" + text
    return text


def json_text(data: Any, **options: Any) -> str:
    """JSON of `data`, with the characters a terminal would act on as \\u escapes (the same JSON)."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(data, ensure_ascii=False, **options))


def write(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str, out) -> None:
    """Rows in `fmt`; csv and jsonl consume `rows` lazily, the others need a list."""
    if fmt == "csv":
        # The csv module quotes a field with CR only when CR ends its lines; a
        # bare CR would start a new row in a spreadsheet, so such rows are quoted.
        plain = csv.writer(out, lineterminator="\n")
        quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        for row in itertools.chain([columns], rows):
            cells = [csv_cell(v) for v in row]
            (quoted if any("\r" in c for c in cells) else plain).writerow(cells)
    elif fmt == "json":
        out.write(json_text([dict(zip(columns, map(json_value, row))) for row in rows], indent=1))
        out.write("\n")
    elif fmt == "jsonl":
        for row in rows:
            out.write(json_text(dict(zip(columns, map(json_value, row)))) + "\n")
    else:
        out.write(table(columns, rows))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 48) -> str:
    """Aligned columns for people; long cells are cut with '…', control characters made visible."""

    def cell(value: Any) -> str:
        text = "-" if value is None else safe_text(text_value(value))
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    heads = [cell(c) for c in columns]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(heads)]
    numeric = [all(isinstance(r[i], (int, float, decimal.Decimal)) and not isinstance(r[i], bool)
                   for r in rows if r[i] is not None) and any(r[i] is not None for r in rows)
               for i in range(len(columns))]  # fmt: skip

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip() + "\n"

    out = [line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    if not rows:
        out.append("(no records)\n")
    return "".join(out)
