"""`audit query` reads a fresh file from a copy of only the lines that may match: never fewer records."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from accessgate.audit.sources import copy_matching_lines, needles

from ..conftest import access, write_log

RECORDS = [
    access("r1", "2026-11-02T09:00:00.000Z", "alice", "facebook", "block", reason="denied"),
    access("r2", "2026-11-02T09:00:30.000Z", "alice", "facebook"),
    access("r3", "2026-11-02T09:05:00.000Z", "bob", "linkedin", "block", reason="denied"),
]


def ids(out: str) -> list:
    return [json.loads(line)["request_id"] for line in out.splitlines()]


def test_records_written_another_way_are_still_found(cli, tmp_path):
    log = write_log(tmp_path / "audit.jsonl", RECORDS)
    base = access("rX", "2026-11-02T10:00:00.000Z", "carol", "facebook", "block", reason="denied")
    escaped = json.dumps(base, ensure_ascii=True).replace('"facebook"', '"faceb\\u006fok"')
    spaced = json.dumps({**base, "request_id": "rY", "ts": "2026-11-02T10:00:01.000Z"}, indent=None)
    assert '"site": "facebook"' in spaced and "\\u006f" in escaped
    with open(log, "a") as fh:
        fh.write(escaped + "\n" + spaced + "\n" + "not json, block facebook\n")
    status, out, err = cli("audit", "query", log, "--site", "facebook", "--decision", "block", "--format", "jsonl")
    assert status == 0, err
    assert ids(out) == ["r1", "rX", "rY"]
    # the same as the view over the whole file
    status, out, _ = cli("audit", "sql", "SELECT request_id FROM audit WHERE site = 'facebook' AND "
                         "decision = 'block' ORDER BY ts", log, "--format", "csv")  # fmt: skip
    assert out.split() == ["request_id", "r1", "rX", "rY"]


@pytest.mark.parametrize("value, expected", [("facebook", b"facebook"), ("réseau", "réseau".encode()),
                                             ("a/b", None), ('a"b', None), ("a\\b", None), ("", None)])  # fmt: skip
def test_needles_only_for_values_json_writes_as_themselves(value, expected):
    assert needles(value) == expected


def lines(n: int) -> bytes:
    return b"".join(b'{"site":"%s","n":%d}\n' % (b"facebook" if i % 10 == 0 else b"x", i) for i in range(n))


def test_copy_keeps_whole_lines_in_order_plain_gzip_and_a_last_line_without_newline(tmp_path):
    data = lines(1000) + b'{"site":"facebook","torn'
    plain, packed = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz"
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    want = b"".join(line for line in data.splitlines(keepends=True) if b"facebook" in line)
    for path in (plain, packed):
        out = io.BytesIO()
        assert copy_matching_lines(path, out, [[b"facebook"]], give_up=1.0)
        assert out.getvalue() == want


def test_copy_gives_up_when_most_lines_match(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(lines(1000))
    assert not copy_matching_lines(path, io.BytesIO(), [[b"site"]], most=1000)
    assert copy_matching_lines(path, io.BytesIO(), [[b"site"], [b"nowhere"]], most=1000)


@pytest.mark.parametrize("grep", [True, False])
def test_with_or_without_grep_the_same_lines(tmp_path, monkeypatch, grep):
    import accessgate.audit.sources as sources

    if not grep:
        monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    data = lines(500) + b'{"site":"faceb\\u006fok","n":-1}\n' + b'{"site":"facebook","torn'
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    out = io.BytesIO()
    assert copy_matching_lines(path, out, [[b"facebook"], [b'"n":1', b'"n":2']], give_up=1.0)
    want = [line for line in data.splitlines(keepends=True)
            if b"\\" in line or b"facebook" in line and (b'"n":1' in line or b'"n":2' in line)]  # fmt: skip
    assert want[-1] == b'{"site":"faceb\\u006fok","n":-1}\n' and len(want) > 10
    assert out.getvalue() == b"".join(want)
