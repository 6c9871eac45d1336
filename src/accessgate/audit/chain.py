"""Verify the audit log's hash chain: nothing edited, deleted, inserted or moved.

Every record carries `seq` (+1 per record, across rotations and restarts)
and `prev` (sha256 of the previous record's exact line).  Reading the files
oldest first, a record whose `prev` is not the hash of the line before, or
whose `seq` is not one more, marks where the record before it was edited, or
where records went missing or out of order.

Two things a crash leaves behind are not breaks: an incomplete last line of
the live file, and a torn line followed by the writer's `log_resumed` record
that accounts for it (the writer keeps the chain going from the line before;
in a sealed log the sealer's records may come between the two).

A record the auditors' tools cannot read is a finding of its own
(`readable`).  Memory stays bounded whatever the files hold: lines are read
as `lines.items()` yields them, and only the first MAX_KEPT findings of each
kind are kept (all are counted).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from accessgate.audit.lines import JUNK_RUN, TAIL, chain_fields, items, opened
from accessgate.audit.readable import unread
from accessgate.audit.schema import CONTROL_EVENTS, LOG_RESUMED, MAX_LINE_BYTES, ZERO_HASH

MAX_KEPT = 100  # findings of each kind kept for the report; the rest are counted


@dataclass(frozen=True, slots=True)
class Break:
    file: str
    line: int
    kind: str  # edited | missing | reordered | restarted | not-a-record | unchained | too-long | unreadable
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
    last_hash: str | None = None  # sha256 of the last record's line: what a witness keeps
    from_origin: bool = False  # the first record is seq 1 after 64 zeros: nothing came before
    first_at: str | None = None  # file:line of the first record
    breaks: list[Break] = field(default_factory=list)  # the first MAX_KEPT
    break_count: int = 0
    unreadable: list[Break] = field(default_factory=list)  # records the query tools cannot read
    unreadable_count: int = 0
    notes: list[str] = field(default_factory=list)
    note_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.break_count and not self.unreadable_count and self.records > 0

    def add_break(self, found: Break) -> None:
        self.break_count += 1
        if len(self.breaks) < MAX_KEPT:
            self.breaks.append(found)

    def add_unreadable(self, found: Break) -> None:
        self.unreadable_count += 1
        if len(self.unreadable) < MAX_KEPT:
            self.unreadable.append(found)

    def add_note(self, note: str) -> None:
        self.note_count += 1
        if len(self.notes) < MAX_KEPT:
            self.notes.append(note)


@dataclass
class _Pos:
    file: str = ""
    line: int = 0


def _is_record(line: bytes) -> bool:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(rec, dict) and "ts" in rec


def verify(
    files: list[Path],
    progress: Callable[[int], None] | None = None,
    *,
    readable: bool = True,
    limit: int = MAX_LINE_BYTES,
) -> Verdict:
    """Check the chain through `files`, given oldest first (see sources.expand).

    With `readable`, also check that the query tools read every chained record.
    """
    verdict = Verdict()
    prev_hash: str | None = None
    last_seq: int | None = None
    last_pos = _Pos()
    torn: tuple[_Pos, int] | None = None  # a non-record line waiting for log_resumed
    unchained = 0
    done_bytes = 0
    tools_should_read: list[int] = []  # per file: chained records of a length the tools read

    def non_record(pos: _Pos, line: bytes | None, length: int, had_newline: bool, last_file: bool) -> None:
        nonlocal torn, unchained
        if not had_newline and last_file:
            verdict.add_note(
                f"{pos.file}:{pos.line}: incomplete last line ({length} bytes, most likely "
                "cut off by a crash while writing); not part of the chain"
            )
        elif line is not None and prev_hash is None and _is_record(line):
            unchained += 1  # an older writer's record, before the chain began
        elif line is not None and _is_record(line):
            verdict.add_break(
                Break(pos.file, pos.line, "unchained",
                      "a record without seq/prev inside the chain: it was inserted")
            )  # fmt: skip
        elif torn is None:
            torn = (pos, length)
        else:
            verdict.add_break(_not_a_record(*torn))
            torn = (pos, length)

    for index, path in enumerate(files):
        size = path.stat().st_size
        last_file = index == len(files) - 1
        number = 0  # lines so far
        short_records = 0
        with opened(path) as (fh, raw):
            for item in items(fh, limit):
                if type(item) is bytes:
                    number += 1
                    if progress is not None and number % 65536 == 0:
                        progress(done_bytes + raw.tell())
                    pos = _Pos(str(path), number)
                    had_newline = item[-1:] == b"\n"
                    line = item[:-1] if had_newline else item
                    fields = chain_fields(line)
                    if fields is None:
                        non_record(pos, line, len(line), had_newline, last_file)
                        continue
                    seq, prev, rec = fields
                    line_hash = hashlib.sha256(line).hexdigest()
                    short_records += 1
                elif item[0] == JUNK_RUN:
                    count = item[1]
                    first = number + 1
                    number += count
                    if torn is not None:
                        verdict.add_break(_not_a_record(*torn))
                        torn = None
                    verdict.add_break(
                        Break(str(path), first, "not-a-record",
                              f"lines {first}-{number} ({count} lines, {item[2]:,} bytes) are blank or no JSON "
                              "object, so no audit record: edited in, or written by something else")
                    )  # fmt: skip
                    continue
                else:
                    number += 1
                    pos = _Pos(str(path), number)
                    _, length, digest, tail, had_newline = item
                    match = TAIL.search(tail)
                    if match is None:
                        non_record(pos, None, length, had_newline, last_file)
                        continue
                    seq, prev, rec, line_hash = int(match.group(1)), match.group(2).decode(), {}, digest
                    verdict.add_unreadable(
                        Break(pos.file, pos.line, "too-long",
                              f"record seq {seq} is a line of {length:,} bytes, longer than the {_size(limit)} "
                              "the query tools read: query, sql, report and replay skip it", found_seq=seq)
                    )  # fmt: skip
                if torn is not None:
                    if rec is None:
                        rec = _parse(line)
                    event = rec.get("event")
                    if event == LOG_RESUMED and rec.get("truncated_bytes") == torn[1]:
                        verdict.add_note(
                            f"{torn[0].file}:{torn[0].line}: torn line of {torn[1]} bytes from a crash, "
                            f"accounted for by the log_resumed record on line {pos.line}"
                        )
                        torn = None
                    elif event not in CONTROL_EVENTS:  # a sealer closes epochs before log_resumed
                        verdict.add_break(_not_a_record(*torn))
                        torn = None
                verdict.records += 1
                if prev_hash is None:
                    verdict.first_seq = seq
                    verdict.first_at = f"{pos.file}:{pos.line}"
                    verdict.from_origin = seq == 1 and prev == ZERO_HASH
                else:
                    problem = broken_link(last_seq, prev_hash, (last_pos.file, last_pos.line), seq, prev, (pos.file, pos.line))
                    if problem is not None:
                        verdict.add_break(problem)
                prev_hash = line_hash
                last_seq, last_pos = seq, pos
        if number == 0:
            verdict.add_note(f"{path}: empty file")
        tools_should_read.append(short_records)
        done_bytes += size
    if torn is not None:
        verdict.add_break(_not_a_record(*torn))
    if unchained:
        verdict.add_note(
            f"{unchained} older record(s) without seq/prev (written before the hash chain existed) "
            "were not verified"
        )
    verdict.last_seq = last_seq
    verdict.last_hash = prev_hash
    if readable:
        for found in unread(files, tools_should_read, limit):
            verdict.add_unreadable(
                Break(str(found.file), found.line, "unreadable",
                      f"record seq {found.seq} cannot be read by the query tools ({found.why}): "
                      "query, sql, report and replay skip it", found_seq=found.seq)
            )  # fmt: skip
        order = {str(path): index for index, path in enumerate(files)}
        verdict.unreadable.sort(key=lambda b: (order.get(b.file, 0), b.line))
    return verdict


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n:,} bytes"


def _parse(line: bytes) -> dict:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _not_a_record(pos: _Pos, length: int) -> Break:
    return Break(
        pos.file, pos.line, "not-a-record",
        f"line is not a JSON audit record ({length} bytes) and no log_resumed record accounts "
        "for it: it was edited, or written by something else",
    )  # fmt: skip


def broken_link(
    last_seq: int | None, last_hash: str, before: tuple[str, int], seq: int, prev: str, here: tuple[str, int]
) -> Break | None:
    """What is wrong between the record at `here` and the one at `before` (file, line), or None."""
    expected = (last_seq or 0) + 1
    hash_ok = prev == last_hash
    if hash_ok and seq == expected:
        return None
    after = f"{before[0]}:{before[1]}"
    if before[0] != here[0]:
        after = f"the last record of {before[0]} (line {before[1]})"

    def brk(kind: str, message: str) -> Break:
        return Break(here[0], here[1], kind, message, expected, seq)

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
            f"(deleted, or moved elsewhere) after {after}",
        )
    if seq < expected:
        return brk(
            "reordered",
            f"seq expected {expected}, found {seq}: the record repeats an earlier seq or is "
            f"out of order (inserted, duplicated or moved) after {after}",
        )
    # seq is right but the line before does not hash to prev: that line changed.
    return Break(
        before[0], before[1], "edited",
        f"record seq {last_seq} was edited after it was written: its hash no longer matches "
        f"prev of the next record ({here[0]}:{here[1]})",
        expected - 1, last_seq,
    )  # fmt: skip
