"""What DuckDB reads of the audit log's files: which files, in chain order, and each line it can.

DuckDB refuses a whole file for one line longer than its maximum object
size, so a file with such a line (the writer never writes one; an older
writer or an edit may have) is read from a private copy without it, and
every line left out is named.  `accessgate audit verify` still checks where
that line stands in the chain.
"""

from __future__ import annotations

import glob
import gzip
import json
import mmap
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from accessgate.audit.schema import COLUMNS, COMPRESSIONS, MAX_LINE_BYTES, chain_order
from accessgate.errors import AuditLogError

_CHUNK = 4 << 20  # bytes per read while looking for long lines
_COMPRESSED = (".gz", ".zst")  # what DuckDB reads
_UNSUPPORTED = tuple(c for c in COMPRESSIONS if c not in _COMPRESSED)


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


# Characters whose JSON encoding is not themselves (or may be written another way than themselves, as `\/`).
_NOT_PLAIN = re.compile(r'["\\/\x00-\x1f\x7f]')


def needles(value: str) -> bytes | None:
    """The bytes every JSON encoding of the string `value` holds, unless it has an escape (`\\`); None when
    `value` has a character JSON may write in another form than itself (quote, backslash, slash, controls)."""
    if not value or _NOT_PLAIN.search(value):
        return None
    return value.encode("utf-8")


def copy_matching_lines(
    path: Path, dest, groups: Sequence[Sequence[bytes]], give_up: float = 0.25, most: int = 256 << 20
) -> bool:
    """Copy to `dest` the lines of `path` that hold, for every group, one of its byte strings, and every
    line with a backslash (an escape, `\\u0062`, may spell any of them another way; a backslash is
    found much faster than `\\u`, and is rare in an audit log): a superset of the lines whose
    record has one of a group's values in each filtered field, so the exact filter on the copy is the
    exact filter on the file.  Lines are copied whole and in order.

    Returns False, having copied a part, when more than `give_up` of the bytes read match (a filter that
    keeps many lines gains little from a copy) or more than `most` bytes (the copy may be in memory);
    the caller then reads `path` itself.
    """
    if not path.name.endswith(_COMPRESSED) and os.path.getsize(path) > 0:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            first, rest = _rarest_first(data, groups)
            spans = _grep(path, data, first, rest, give_up, most)
            if spans is _TOO_MANY:
                return False
            if spans is None:
                spans = _matching(data, first, rest)
            kept = sum(end - start for start, end in spans)
            if kept > most or (len(data) >= 64 << 20 and kept > give_up * len(data)):
                return False
            for start, end in spans:
                dest.write(data[start:end])
            return True
    read = written = 0
    tail = b""
    first = rest = None
    with _open_bytes(path) as fh:
        while True:
            chunk = fh.read(_CHUNK)
            data = tail + chunk
            if chunk:
                cut = data.rfind(b"\n") + 1
                data, tail = data[:cut], data[cut:]
            else:
                tail = b""
            if data:
                if first is None:
                    first, rest = _rarest_first(data, groups)
                read += len(data)
                keep = _matching(data, first, rest)
                for start, end in keep:
                    dest.write(data[start:end])
                    written += end - start
                if written > most or (read >= 64 << 20 and written > give_up * read):
                    return False
            if not chunk:
                return True


def _matching(data, first: Sequence[bytes], rest: Sequence[Sequence[bytes]]) -> list[tuple[int, int]]:
    """(start, end) of the lines of `data` (whole lines; bytes or mmap) to keep, in order."""
    spans: dict[int, int] = {}
    size = len(data)
    find, rfind = data.find, data.rfind
    for needle in first:
        at = find(needle)
        while at >= 0:
            start = rfind(b"\n", 0, at) + 1
            end = find(b"\n", at)
            end = size if end < 0 else end + 1
            if start not in spans:
                for group in rest:
                    for other in group:
                        if find(other, start, end) >= 0:
                            break
                    else:
                        break  # no value of this group
                else:
                    spans[start] = end
            at = find(needle, end)
    _add_backslash_lines(data, spans)
    return sorted(spans.items())


def _add_backslash_lines(data, spans: dict[int, int]) -> None:
    """Every line with a backslash, into `spans` (start: end): an escape may spell a value another way."""
    find, rfind, size = data.find, data.rfind, len(data)
    at = find(b"\\")
    while at >= 0:
        start = rfind(b"\n", 0, at) + 1
        end = find(b"\n", at)
        end = size if end < 0 else end + 1
        spans[start] = end
        at = find(b"\\", end)


_TOO_MANY = "too many"


def _grep(path: Path, data, first: Sequence[bytes], rest: Sequence[Sequence[bytes]], give_up: float, most: int):
    """What `_matching` finds, with grep -F finding the candidates (several times faster than Python's
    find on a big file); None when there is no grep or it fails; _TOO_MANY when the lines kept pass
    `most` bytes or, after 16 MB, `give_up` of the bytes read (it stops there)."""
    grep = shutil.which("grep")
    if grep is None:
        return None
    patterns = [arg for needle in first for arg in (b"-e", needle)]
    env = {**os.environ, "LC_ALL": "C"}  # bytes, not characters
    spans: dict[int, int] = {}
    size = len(data)
    kept = 0
    try:
        with subprocess.Popen([grep, "-a", "-b", "-F", *patterns, "--", path], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env) as proc:  # fmt: skip
            for row in proc.stdout:
                offset, _, line = row.partition(b":")
                if all(any(n in line for n in group) for group in rest):
                    start = int(offset)
                    spans[start] = min(size, start + len(line))  # grep ends every line it prints with \n
                    kept += len(line)
                    if kept > most or (start >= 16 << 20 and kept > give_up * start):
                        proc.kill()
                        return _TOO_MANY
            status = proc.wait()
    except (OSError, ValueError):
        return None
    if status not in (0, 1):  # 1: no line matched
        return None
    _add_backslash_lines(data, spans)  # as in _matching
    return sorted(spans.items())


def _rarest_first(data, groups: Sequence[Sequence[bytes]]) -> tuple[Sequence[bytes], list[Sequence[bytes]]]:
    """(the group whose values are found least often in the first MB of `data`, the others): the
    candidates are the lines holding the first group's values."""
    sample = bytes(data[: 1 << 20])
    first = min(groups, key=lambda g: sum(sample.count(n) for n in g))
    return first, [g for g in groups if g is not first]


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

    def matching(self, path: Path, groups: Sequence[Sequence[str]]) -> Path:
        """`path`, or a private copy of only the lines that may hold a record whose field has one of the
        values of each group (`copy_matching_lines`): a smaller file for the same exact filter.

        `path` must have no long line (`source(path) == path`).  A group with a value no needle can
        stand for filters nothing here.
        """
        found = [[needles(v) for v in group] for group in groups]
        found = [g for g in found if g and all(g)]
        if not found:
            return path
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="accessgate-audit-")  # private: 0700
        fd, name = tempfile.mkstemp(dir=self._dir, suffix=".jsonl")
        with os.fdopen(fd, "wb") as dest:
            done = copy_matching_lines(path, dest, found)
        if not done:
            os.unlink(name)
            return path
        return Path(name)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def read_json_sql(files: Sequence[Path], types: dict[str, str] | None = None) -> str:
    """DuckDB's read_json over `files` (their lines at most MAX_LINE_BYTES), with COLUMNS.

    `types` changes the type of some columns (which changes no line's parse).
    """
    names = ", ".join(quote(glob_literal(str(p))) for p in files)
    cols = ", ".join(f"{quote(k)}: {quote(v)}" for k, v in (COLUMNS | (types or {})).items())
    return (
        f"read_json([{names}], format = 'newline_delimited', columns = {{{cols}}}, "
        f"ignore_errors = true, compression = 'auto_detect', maximum_object_size = {MAX_LINE_BYTES})"
    )


def glob_literal(name: str) -> str:
    """`name` as a DuckDB file pattern that matches only itself (DuckDB globs every name)."""
    return re.sub(r"[\[*?]", lambda m: "[" + m.group() + "]", name)


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
