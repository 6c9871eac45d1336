"""`accessgate audit verify`: every kind of tampering shows, crashes and rotation do not."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accessgate.audit.sources import expand
from accessgate.audit.chain import verify

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


def test_pruned_oldest_file_is_said_to_be_unproven_not_broken(cli, tmp_path):
    rotated_three(tmp_path)
    (tmp_path / "audit.jsonl.2.gz").unlink()
    status, out, _ = cli("audit", "verify", str(tmp_path / "audit.jsonl*"))
    assert status == 0
    assert (
        f"not proven: that no records came before seq 3 ({tmp_path / 'audit.jsonl.1'}:1): the files given "
        "start mid-chain, not at a first record (seq 1 after 64 zeros)"
    ) in out
    assert out.splitlines()[-1] == "OK: 4 records, chain intact (seq 3..6, 2 file(s))"


def test_from_start_makes_a_missing_start_a_break(cli, tmp_path):
    rotated_three(tmp_path)
    status, out, _ = cli("audit", "verify", "--from-start", str(tmp_path / "audit.jsonl*"))
    assert (status, out.splitlines()[-1]) == (0, "OK: 6 records, chain intact (seq 1..6, 3 file(s))")
    assert "before seq" not in out
    (tmp_path / "audit.jsonl.2.gz").unlink()
    status, out, _ = cli("audit", "verify", "--from-start", str(tmp_path / "audit.jsonl*"))
    assert status == 1
    assert f"BROKEN: {tmp_path / 'audit.jsonl.1'}:1: the chain starts at seq 3, not at a first record" in out


def test_deleted_newest_records_cannot_be_seen_and_verify_says_so(cli, tmp_path):
    log = write_log(tmp_path / "audit.jsonl", RECORDS)
    lines = lines_of(log)
    log.write_bytes(b"".join(lines[:4]))  # the last two records deleted
    status, out, _ = cli("audit", "verify", log)
    witness = hashlib.sha256(lines[3].rstrip(b"\n")).hexdigest()
    assert status == 0
    assert (
        "not proven: that no records came after seq 4: deleting the newest records leaves an intact chain. "
        "Compare with a witness (--witness"
    ) in out
    assert f"keep the last seq and the sha256 of its line ({witness}) where the proxy host cannot write" in out


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


# -- records the query tools cannot read -----------------------------------------------

ZEROS = "0" * 64


def chained(bodies: list[bytes]) -> bytes:
    """Lines with a right chain, whatever their bodies say (each a JSON object without its `}`)."""
    prev, out = ZEROS, []
    for seq, body in enumerate(bodies, 1):
        line = body + b',"seq":%d,"prev":"%s"}' % (seq, prev.encode())
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    return b"\n".join(out) + b"\n"


def body(request_id: str, **fields: bytes) -> bytes:
    text = {"event": b'"access"', "ts": b'"2026-11-02T09:00:00.000Z"', "request_id": b'"%s"' % request_id.encode(),
            "method": b'"GET"', **fields}  # fmt: skip
    return b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in text.items() if v is not None)


# The middle record of three, as a writer or an edit may have left it -> why the tools skip it.
UNREADABLE = {
    "a lone surrogate escape (the writer before this fix)": (
        body("r2", method=b'"P\\udcffST"'), "it holds a \\u escape of a lone surrogate"),
    "a byte that is not UTF-8": (body("r2", method=b'"P\xffST"'), "it is not UTF-8: byte 0xff at column 80"),
    "a ts that is no time": (body("r2", ts=b'"yesterday"'), "ts 'yesterday' is not a time the tools read"),
    "no ts at all": (body("r2", ts=None), "no ts"),
    "a line longer than the tools read": (
        body("r2", path=b'"/' + b"a" * (17 << 20) + b'"'), "bytes, longer than the 16 MiB the query tools read"),
}  # fmt: skip


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("middle, why", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_record_the_query_tools_cannot_read_is_named(cli, tmp_path, middle, why, compress):
    data = chained([body("r1"), middle, body("r3")])
    log = tmp_path / ("audit.jsonl.1.gz" if compress else "audit.jsonl")
    log.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    status, out, _ = cli("audit", "verify", log)
    assert status == 1, out
    assert f"UNREADABLE: {log}:2: record seq 2 " in out and why in out
    assert out.splitlines()[-1] == (
        "chain intact (seq 1..3, 1 file(s)), but 1 of 3 records cannot be read by query, sql, report "
        "and replay: see UNREADABLE above"
    )
    status, out, _ = cli("audit", "sql", "SELECT request_id FROM audit ORDER BY seq", log, "--format", "csv")
    assert out.splitlines() == ["request_id", "r1", "r3"]  # what verify said the tools would miss


# -- bounded memory and time on gzip bombs ------------------------------------------------


# `accessgate ARGS`, then the process's own peak RSS (VmHWM: since exec, unlike
# ru_maxrss, which counts the memory of the forking test process too) on stderr.
MEASURED = """
import sys
from accessgate.cli import main
try:
    status = main(sys.argv[1:])
finally:
    sys.stdout.flush()
    print([line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1], file=sys.stderr)
sys.exit(status)
"""


def run_measured(*args: object, timeout: float = 120) -> tuple[int, str, float, float]:
    """`accessgate ARGS` as a process: (exit status, stdout, peak RSS in MB, seconds)."""
    env = dict(os.environ, ACCESSGATE_NO_PROGRESS="1")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
    peak_kb = int(done.stderr.splitlines()[-1])
    return done.returncode, done.stdout, peak_kb / 1024, time.monotonic() - started


def test_verify_of_a_gigabyte_of_newlines_in_a_megabyte_of_gzip_runs_in_bounded_memory(tmp_path):
    bomb = tmp_path / "audit.jsonl.1.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (16 << 20), compresslevel=9) * 64)  # gzip members, one after another
    assert bomb.stat().st_size < 2 << 20
    status, out, peak_mb, seconds = run_measured("audit", "verify", bomb, timeout=60)
    print(f"verify, 1 GiB of newlines: {peak_mb:.0f} MB peak, {seconds:.1f} s")
    assert status == 1
    assert f"BROKEN: {bomb}:1: lines 1-1073741824 (1073741824 lines" in out
    assert peak_mb < 150


def test_one_line_of_400_megabytes_in_gzip_is_verified_and_skipped_in_bounded_memory(tmp_path):
    first = body("r1") + b',"seq":1,"prev":"%s"}' % ZEROS.encode()
    head = b'{"event":"policy_rejected","ts":"2026-11-02T09:00:01.000Z","problems":["'
    tail = b'"],"seq":2,"prev":"%s"}' % hashlib.sha256(first).hexdigest().encode()
    x = b"x" * (16 << 20)
    big = hashlib.sha256(head)
    for _ in range(25):
        big.update(x)
    big.update(tail)
    third = body("r3", ts=b'"2026-11-02T09:00:02.000Z"') + b',"seq":3,"prev":"%s"}' % big.hexdigest().encode()
    log = tmp_path / "audit.jsonl.1.gz"
    x_member = gzip.compress(x, compresslevel=1)
    log.write_bytes(gzip.compress(first + b"\n" + head) + x_member * 25 + gzip.compress(tail + b"\n" + third + b"\n"))
    status, out, peak_mb, seconds = run_measured("audit", "verify", log)
    print(f"verify, a 400 MB line: {peak_mb:.0f} MB peak, {seconds:.1f} s")
    assert status == 1, out
    assert f"UNREADABLE: {log}:2: record seq 2 is a line of {len(head) + 25 * len(x) + len(tail):,} bytes" in out
    assert out.splitlines()[-1].startswith("chain intact (seq 1..3, 1 file(s)), but 1 of 3 records")
    assert peak_mb < 200
    status, out, peak_mb, seconds = run_measured("audit", "query", log, "--format", "jsonl", "--no-cache")
    print(f"query, a 400 MB line: {peak_mb:.0f} MB peak, {seconds:.1f} s")
    assert status == 0
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["r1", "r3"]
    assert peak_mb < 200


def test_countless_breaks_are_counted_not_kept(cli, tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"".join(b'{"not":"a record %d"}\n' % i for i in range(30_000)))
    from accessgate.audit.chain import MAX_KEPT, verify

    verdict = verify([log], readable=False)
    assert verdict.break_count == 30_000 and len(verdict.breaks) == MAX_KEPT
    status, out, _ = cli("audit", "verify", log)
    assert status == 1 and "  … and 29990 more" in out


def test_a_row_the_tools_read_besides_the_chain_hides_no_unreadable_record(cli, tmp_path):
    # An older, unchained record whose seq is text: DuckDB would cast it to a number
    # and count it in place of the record it cannot read.
    older = b'{"event":"access","ts":"2026-11-01T09:00:00.000Z","request_id":"r0","seq":"9","prev":"x"}\n'
    log = tmp_path / "audit.jsonl"
    log.write_bytes(older + chained([body("r1"), body("r2", method=b'"P\\udcffST"'), body("r3")]))
    status, out, _ = cli("audit", "verify", log)
    assert status == 1
    assert f"UNREADABLE: {log}:3: record seq 2 cannot be read by the query tools" in out
