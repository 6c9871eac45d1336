"""The audit log's files: where the chain stands in them, their rotations, appending lines.

`resume_point()` reads where the chain of a log continues when the writer
opens it: after the last complete line, or, in a new or emptied file, after
the last line of its newest rotation.  `Appender` holds the lines waiting
for the file and writes them, whole lines across short writes and reopens,
and knows the `Head` of the file: the last record written to it, which a
witness keeps (`accessgate.audit.witness`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import deque
from pathlib import Path
from typing import Callable, NamedTuple

from accessgate.audit.schema import ZERO_HASH, is_rotation_of

_WRITE_CHUNK = 1 << 20  # bytes per os.write()


class Tail(NamedTuple):
    line: bytes | None  # last complete line, without its newline
    fragment: bytes  # bytes after the last newline (a torn write), usually empty


def read_last_line(path: Path) -> Tail:
    """The last complete line of a log file (plain or gzip), read from the end."""
    if path.suffix == ".gz":
        last = None
        fragment = b""
        with gzip.open(path, "rb") as fh:
            for raw in fh:
                if raw.endswith(b"\n"):
                    last = raw[:-1]
                else:
                    fragment = raw
        return Tail(last, fragment)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return Tail(None, b"")
    with fh:
        size = os.fstat(fh.fileno()).st_size
        block = 65536
        while True:
            start = max(0, size - block)
            fh.seek(start)
            data = fh.read(size - start)
            cut = data.rfind(b"\n")
            if cut < 0 and start > 0:
                block *= 4
                continue
            fragment = data[cut + 1 :]
            body = data[:cut] if cut >= 0 else b""
            prev_nl = body.rfind(b"\n")
            if cut >= 0 and prev_nl < 0 and start > 0:
                block *= 4  # the last line starts before what we read
                continue
            line = body[prev_nl + 1 :] if cut >= 0 else None
            return Tail(line, fragment)


def rotated_siblings(path: Path) -> list[Path]:
    """Files next to `path` that logrotate made from it (PATH.1, PATH.2.gz, PATH-20261122...)."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if is_rotation_of(p.name, path.name) and p.is_file())


def delete_rotated(path: Path, before: float, on_error: Callable[[OSError], None]) -> list[Path]:
    """Delete the rotated siblings of `path` last changed before `before` (epoch seconds).

    Returns what was deleted; a file that cannot be is left, and reported to `on_error`.
    """
    deleted: list[Path] = []
    for sibling in rotated_siblings(path):
        try:
            if sibling.stat().st_mtime < before:
                sibling.unlink()
                deleted.append(sibling)
        except FileNotFoundError:
            continue
        except OSError as exc:
            on_error(exc)
    return deleted


class Head(NamedTuple):
    """A log's newest record: its seq and the sha256 (hex) of its line's exact bytes, without the newline."""

    seq: int
    hash: str


class ResumePoint(NamedTuple):
    seq: int  # of the last record: the next one is seq + 1
    prev: str  # sha256 of the line the next record follows
    torn: int  # bytes of an incomplete last line (a crash mid-write), 0 if none
    foreign: bool  # the last complete line is no accessgate record: a new chain starts
    line: bytes | None = None  # that last record's line (without its newline), if it is one

    @property
    def head(self) -> Head | None:
        return Head(self.seq, self.prev) if self.line is not None else None


def resume_point(path: Path) -> ResumePoint:
    """Where the chain of the log at `path` continues.  Raises OSError when it cannot be read."""
    tail = read_last_line(path)
    if tail.line is None and not tail.fragment:
        return _after_rotation(path)
    seq, prev, foreign, line = 0, ZERO_HASH, False, None
    if tail.line is not None:
        try:
            seq = json.loads(tail.line)["seq"]
            if not isinstance(seq, int):
                raise TypeError
            prev = hashlib.sha256(tail.line).hexdigest()
            line = tail.line
        except (ValueError, KeyError, TypeError):
            seq, foreign = 0, True
    return ResumePoint(seq, prev, len(tail.fragment), foreign, line)


def _after_rotation(path: Path) -> ResumePoint:
    """An empty log continues the chain of its newest rotation, if that is ours."""
    for sibling in sorted(rotated_siblings(path), key=_mtime, reverse=True):
        try:
            line = read_last_line(sibling).line
            seq = json.loads(line)["seq"] if line is not None else None
        except (OSError, EOFError, ValueError, KeyError, TypeError):
            continue
        if isinstance(seq, int) and line is not None:
            return ResumePoint(seq, hashlib.sha256(line).hexdigest(), 0, False, line)
    return ResumePoint(0, ZERO_HASH, 0, False)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class Appender:
    """The file at `path`, opened for appending, and the lines waiting for it.

    `write()` writes what waits in chunks; a line that a failed or short
    write cut is finished first, and written whole again after a reopen.
    `records`, `written` and `head` may be read from any thread: `head` is
    replaced whole, never changed in place.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        # (bytes, the record's seq and the sha256 of its line; None, None: bytes that are no record)
        self.lines: deque[tuple[bytes, int | None, str | None]] = deque()
        self.records = 0  # records in `lines`
        self.written = 0  # records written
        self.head: Head | None = None  # the last record written to the file
        self._head_done = 0  # bytes of lines[0] already in the file

    def push(self, line: bytes, seq: int, digest: str) -> None:
        """A record's line (with its newline), its seq and the sha256 of the line without the newline."""
        self.lines.append((line, seq, digest))
        self.records += 1

    def push_bytes(self, data: bytes) -> None:
        """Bytes that are no record (the newline that ends a torn line)."""
        self.lines.append((data, None, None))

    def open(self) -> None:
        """Open the file for appending, 0640; raises OSError."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            self.fd = os.open(self.path, flags, 0o640)
        except FileNotFoundError:
            # Create missing directories only when missing, so that other
            # errors (a file in the way: ENOTDIR) reach the log as they are.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, flags, 0o640)

    def rotated(self) -> bool:
        """Whether the file at `path` is no longer the one open (renamed or removed)."""
        assert self.fd is not None
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        mine = os.fstat(self.fd)
        return (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino)

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
            # A line cut short in the old file is written whole in the new one.
            self._head_done = 0

    def write(self) -> None:
        """Write every waiting line; raises OSError, keeping what was not written."""
        assert self.fd is not None
        while self.lines:
            parts: list[bytes] = []
            size = 0
            for i, (data, _, _) in enumerate(self.lines):
                if i == 0 and self._head_done:
                    data = data[self._head_done :]
                parts.append(data)
                size += len(data)
                if size >= _WRITE_CHUNK:
                    break
            self._advance(os.write(self.fd, b"".join(parts)))

    def clear(self) -> int:
        """Forget every waiting line; returns how many records that loses."""
        lost = self.records
        self.lines.clear()
        self.records = self._head_done = 0
        return lost

    def _advance(self, done: int) -> None:
        """Pop what `done` bytes completed; remember how far into the next line we got."""
        done += self._head_done
        self._head_done = 0
        last = None
        while self.lines and done >= len(self.lines[0][0]):
            entry = self.lines.popleft()
            done -= len(entry[0])
            if entry[1] is not None:
                self.records -= 1
                self.written += 1
                last = entry
        if last is not None:
            self.head = Head(last[1], last[2])  # type: ignore[arg-type]
        self._head_done = done if self.lines else 0
