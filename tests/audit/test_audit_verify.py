"""`accessgate audit verify`: every kind of tampering shows, crashes and rotation do not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accessgate.auditlog import expand
from accessgate.chain import verify

from .conftest import access, rotate, write_log

RECORDS = [access(f"r{i}", f"2026-11-02T09:0{i}:00.000Z", "alice", "facebook") for i in range(1, 7)]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def edit_user(line: bytes) -> bytes:
    return line.replace(b'"alice"', b'"mallory"')


def edit_seq(line: bytes) -> bytes:
    rec = json.loads(line)
    return line.replace(f'"seq":{rec["seq"]},'.encode(), b'"seq":30,')


FORGED = b'{"event":"access","ts":"2026-11-02T09:02:30.000Z","request_id":"x","user":"alice","decision":"allow"}\n'

# name -> (change to the list of lines, first break: (line, kind, expected seq, found seq))
TAMPERING = {
    "a record's content edited: that record is named": (
        lambda ls: ls[:2] + [edit_user(ls[2])] + ls[3:], (3, "edited", 3, 3)),
    "a record's seq edited": (
        lambda ls: ls[:2] + [edit_seq(ls[2])] + ls[3:], (3, "edited", 3, 30)),
    "a record deleted": (
        lambda ls: ls[:2] + ls[3:], (3, "missing", 3, 4)),
    "the first records deleted after a later one: gap shows": (
        lambda ls: ls[:1] + ls[4:], (2, "missing", 2, 5)),
    "a record duplicated": (
        lambda ls: ls[:3] + [ls[1]] + ls[3:], (4, "reordered", 4, 2)),
    "two records swapped": (
        lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], (3, "missing", 3, 4)),
    "a record without seq/prev inserted": (
        lambda ls: ls[:2] + [FORGED] + ls[2:], (3, "unchained", None, None)),
    "a line of garbage inserted": (
        lambda ls: ls[:2] + [b"hello auditors\n"] + ls[2:], (3, "not-a-record", None, None)),
}  # fmt: skip


@pytest.mark.parametrize("change, first", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_found(cli, tmp_path, change, first):
    log = write_log(tmp_path / "audit.jsonl", RECORDS)
    log.write_bytes(b"".join(change(lines_of(log))))
    verdict = verify([log])
    found = verdict.breaks[0]
    assert (found.line, found.kind, found.expected_seq, found.found_seq) == first
    status, out, _ = cli("audit", "verify", log)
    assert status == 1
    assert f"BROKEN: {log}:{first[0]}: " in out


def test_intact_log_passes(cli, tmp_path):
    log = write_log(tmp_path / "audit.jsonl", RECORDS)
    status, out, _ = cli("audit", "verify", log)
    assert (status, out.splitlines()[-1]) == (0, "OK: 6 records, chain intact (seq 1..6, 1 file(s))")


def rotated_three(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, RECORDS[:2])
    rotate(path)
    write_log(path, RECORDS[2:4])
    rotate(path)
    write_log(path, RECORDS[4:])
    return path


def test_chain_passes_across_rotation(cli, tmp_path):
    rotated_three(tmp_path)
    assert [p.name for p in expand([str(tmp_path / "*")])] == ["audit.jsonl.2.gz", "audit.jsonl.1", "audit.jsonl"]
    status, out, _ = cli("audit", "verify", str(tmp_path / "audit.jsonl*"))
    assert (status, out.splitlines()[-1]) == (0, "OK: 6 records, chain intact (seq 1..6, 3 file(s))")


def test_missing_rotated_file_is_a_gap(cli, tmp_path):
    path = rotated_three(tmp_path)
    (tmp_path / "audit.jsonl.1").unlink()
    status, out, _ = cli("audit", "verify", str(tmp_path / "audit.jsonl*"))
    assert status == 1
    assert f"BROKEN: {path}:1: seq expected 3, found 5: 2 record(s) missing" in out


def test_pruned_oldest_file_is_noted_not_broken(cli, tmp_path):
    rotated_three(tmp_path)
    (tmp_path / "audit.jsonl.2.gz").unlink()
    status, out, _ = cli("audit", "verify", str(tmp_path / "audit.jsonl*"))
    assert status == 0
    assert "note: the chain starts at seq 3" in out
    assert out.splitlines()[-1] == "OK: 4 records, chain intact (seq 3..6, 2 file(s))"


def test_restarted_chain_is_broken(cli, tmp_path):
    first = write_log(tmp_path / "a.jsonl", RECORDS[:3])
    second = write_log(tmp_path / "b.jsonl", RECORDS[3:])
    joined = tmp_path / "audit.jsonl"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    [found] = verify([joined]).breaks
    assert (found.line, found.kind) == (4, "restarted")


def test_crash_leftovers_are_notes_not_breaks(cli, tmp_path):
    path = write_log(tmp_path / "audit.jsonl", RECORDS[:3])
    with open(path, "ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"event":"access","ts":"2026-11-02T09:04:00.0')
    write_log(path, RECORDS[3:])  # the writer resumes: finishes the line, logs log_resumed
    with open(path, "ab") as fh:  # ... and crashes again mid-write
        fh.write(b'{"event":"acc')
    status, out, _ = cli("audit", "verify", path)
    assert status == 0, out
    assert f"note: {path}:4: torn line of 45 bytes from a crash, accounted for by the log_resumed record on line 5" in out
    assert f"note: {path}:9: incomplete last line (13 bytes" in out
    assert out.splitlines()[-1] == "OK: 7 records, chain intact (seq 1..7, 1 file(s))"


def test_empty_or_unchained_log_fails(cli, tmp_path):
    empty = tmp_path / "audit.jsonl"
    empty.touch()
    status, out, _ = cli("audit", "verify", empty)
    assert status == 1 and "no chained records" in out
