"""Verify the audit log's hash chain: nothing edited, deleted, inserted or moved.

Every record carries `seq` (+1 per record, across rotations and restarts)
and `prev` (sha256 of the previous record's exact line).  Reading the files
oldest first, a record whose `prev` is not the hash of the line before, or
whose `seq` is not one more, marks where the record before it was edited, or
where records went missing or out of order.

Two things a crash leaves behind are not breaks: an incomplete last line of
the live file, and a torn line followed by the writer's `log_resumed` record
that accounts for it (the writer keeps the chain going from the line before).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

ZERO_HASH = "0" * 64

# The writer puts the chain last; reading it from the line's end avoids a
# full JSON parse per record.  Anything else takes the slow, exact path.
_TAIL = re.compile(rb',"seq":(\d+),"prev":"([0-9a-f]{64})"\}\s*$')


@dataclass(frozen=True, slots=True)
class Break:
    file: str
    line: int
    kind: str  # edited | missing | reordered | restarted | not-a-record | unchained
    message: str
    expected_seq: int | None = None
    found_seq: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Verdict:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    breaks: list[Break] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks and self.records > 0


@dataclass
class _Pos:
    file: str = ""
    line: int = 0


def _lines(path: Path) -> Iterator[tuple[bytes, bool, int]]:
    """(line without newline, had a newline, bytes read so far) for a plain or gzip file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = getattr(fh, "fileobj", None) or fh  # compressed position for progress
        for line in fh:
            if line.endswith(b"\n"):
                yield line[:-1], True, raw.tell()
            else:
                yield line, False, raw.tell()


def _chain_fields(line: bytes) -> tuple[int, str, dict | None] | None:
    """(seq, prev, parsed record or None) of a chained record; None if it is not one."""
    match = _TAIL.search(line[-120:])
    if match:
        return int(match.group(1)), match.group(2).decode(), None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    seq, prev = rec.get("seq"), rec.get("prev")
    if isinstance(seq, int) and isinstance(prev, str):
        return seq, prev, rec
    return None


def _is_record(line: bytes) -> bool:
    try:
        rec = json.loads(line)
    except ValueError:
        return False
    return isinstance(rec, dict) and "ts" in rec


def verify(files: list[Path], progress: Callable[[int], None] | None = None) -> Verdict:
    """Check the chain through `files`, given oldest first (see auditlog.expand)."""
    verdict = Verdict()
    prev_hash: str | None = None
    last_seq: int | None = None
    last_pos = _Pos()
    torn: tuple[_Pos, int] | None = None  # a non-record line waiting for log_resumed
    unchained = 0
    done_bytes = 0
    for index, path in enumerate(files):
        size = path.stat().st_size
        last_file = index == len(files) - 1
        number = 0
        read = 0
        for number, (line, had_newline, read) in enumerate(_lines(path), 1):
            if progress is not None and number % 65536 == 0:
                progress(done_bytes + read)
            pos = _Pos(str(path), number)
            fields = _chain_fields(line)
            if fields is None:
                if not had_newline and last_file:
                    verdict.notes.append(
                        f"{pos.file}:{pos.line}: incomplete last line ({len(line)} bytes, most likely "
                        "cut off by a crash while writing); not part of the chain"
                    )
                elif prev_hash is None and _is_record(line):
                    unchained += 1  # an older writer's record, before the chain began
                elif _is_record(line):
                    verdict.breaks.append(
                        Break(pos.file, pos.line, "unchained",
                              "a record without seq/prev inside the chain: it was inserted")
                    )  # fmt: skip
                elif torn is None:
                    torn = (pos, len(line))
                else:
                    verdict.breaks.append(_not_a_record(*torn))
                    torn = (pos, len(line))
                continue
            seq, prev, rec = fields
            if torn is not None:
                rec = rec if rec is not None else _parse(line)
                if rec.get("event") == "log_resumed" and rec.get("truncated_bytes") == torn[1]:
                    verdict.notes.append(
                        f"{torn[0].file}:{torn[0].line}: torn line of {torn[1]} bytes from a crash, "
                        f"accounted for by the log_resumed record on line {pos.line}"
                    )
                else:
                    verdict.breaks.append(_not_a_record(*torn))
                torn = None
            verdict.records += 1
            if prev_hash is None:
                verdict.first_seq = seq
                if not (seq == 1 and prev == ZERO_HASH):
                    verdict.notes.append(
                        f"the chain starts at seq {seq} ({pos.file}:{pos.line}); records before it "
                        "are not in these files (deleted by retention, or files not given)"
                    )
            else:
                problem = _link(prev_hash, last_seq, last_pos, pos, seq, prev)
                if problem is not None:
                    verdict.breaks.append(problem)
            prev_hash = hashlib.sha256(line).hexdigest()
            last_seq, last_pos = seq, pos
        if number == 0:
            verdict.notes.append(f"{path}: empty file")
        done_bytes += size
    if torn is not None:
        verdict.breaks.append(_not_a_record(*torn))
    if unchained:
        verdict.notes.append(
            f"{unchained} older record(s) without seq/prev (written before the hash chain existed) "
            "were not verified"
        )
    verdict.last_seq = last_seq
    return verdict


def _parse(line: bytes) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _not_a_record(pos: _Pos, length: int) -> Break:
    return Break(
        pos.file, pos.line, "not-a-record",
        f"line is not a JSON audit record ({length} bytes) and no log_resumed record accounts "
        "for it: it was edited, or written by something else",
    )  # fmt: skip


def _link(
    prev_hash: str, last_seq: int | None, last_pos: _Pos, pos: _Pos, seq: int, prev: str
) -> Break | None:
    expected = (last_seq or 0) + 1
    before = last_pos.file + ":" + str(last_pos.line)
    if last_pos.file != pos.file:
        before = f"the last record of {last_pos.file} (line {last_pos.line})"
    hash_ok = prev == prev_hash
    if hash_ok and seq == expected:
        return None

    def brk(kind: str, message: str) -> Break:
        return Break(pos.file, pos.line, kind, message, expected, seq)

    if hash_ok:
        return brk("edited", f"seq expected {expected}, found {seq} although prev matches: seq was edited")
    if prev == ZERO_HASH and seq == 1:
        return brk(
            "restarted",
            f"the chain starts again here (seq 1, prev zeros) after seq {last_seq}: the log "
            "was started afresh, so whatever came between cannot be checked",
        )
    if seq > expected:
        return brk(
            "missing",
            f"seq expected {expected}, found {seq}: {seq - expected} record(s) missing "
            f"(deleted, or moved elsewhere) after {before}",
        )
    if seq < expected:
        return brk(
            "reordered",
            f"seq expected {expected}, found {seq}: the record repeats an earlier seq or is "
            f"out of order (inserted, duplicated or moved) after {before}",
        )
    # seq is right but the line before does not hash to prev: that line changed.
    return Break(
        last_pos.file, last_pos.line, "edited",
        f"record seq {last_seq} was edited after it was written: its hash no longer matches "
        f"prev of the next record ({pos.file}:{pos.line})",
        expected - 1, last_seq,
    )  # fmt: skip
