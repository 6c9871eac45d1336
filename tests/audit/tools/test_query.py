"""`accessgate audit query` and `audit sql`: filters, formats and the files they read."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from ..conftest import access, rotate, write_log

POLICY_LOADED = {"event": "policy_loaded", "ts": "2026-11-01T23:59:00.000Z", "policy": "abc123abc123"}
RECORDS = [
    POLICY_LOADED,
    access("r1", "2026-11-02T09:00:00.000Z", "alice", "facebook", roles=["communications", "everyone"]),
    access("r2", "2026-11-02T09:00:30.000Z", "alice", "facebook", roles=["communications", "everyone"]),
    access("r3", "2026-11-02T09:05:00.000Z", "bob", "linkedin", "block", reason="read-only", method="POST"),
    access("r4", "2026-11-03T12:00:00.000Z", "bob", "facebook"),
    access("r5", "2026-11-03T18:00:00.000Z", "bob", "facebook", "block", reason="outside-window"),
    access("r6", "2026-11-04T10:00:00.000Z", None, "youtube", roles=["kiosk"], client_ip="10.20.30.4"),
    access("r7", "2026-11-04T10:01:00.000Z", None, None, roles=[], client_ip="10.20.30.4"),
    access("r8", "2026-11-05T08:00:00.000Z", "carol", "x", "block", roles=["everyone", "sales"]),
]


@pytest.fixture
def log(tmp_path):
    return write_log(tmp_path / "audit.jsonl", RECORDS)


def ids(out: str) -> list:
    return [json.loads(line)["request_id"] for line in out.splitlines()]


@pytest.mark.parametrize(
    "args, expected",
    [
        ((), ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]),
        (("--event", "all"), [None, "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]),
        (("--event", "policy_loaded", "--event", "access", "--user", "carol"), ["r8"]),
        (("--user", "alice"), ["r1", "r2"]),
        (("--user", "alice", "--user", "carol"), ["r1", "r2", "r8"]),
        (("--role", "kiosk"), ["r6"]),
        (("--role", "communications", "--role", "sales"), ["r1", "r2", "r8"]),
        (("--site", "facebook"), ["r1", "r2", "r4", "r5"]),
        (("--site", "unlisted"), ["r7"]),
        (("--site", "x", "--site", "youtube"), ["r6", "r8"]),
        (("--host", "facebook.com"), ["r1", "r2", "r4", "r5"]),
        (("--host", "WWW.LinkedIn.com."), ["r3"]),
        (("--decision", "block"), ["r3", "r5", "r8"]),
        (("--reason", "outside-window"), ["r5"]),
        (("--user", "bob", "--decision", "block"), ["r3", "r5"]),
        (("--event", "policy_loaded"), [None]),
        (("--since", "2026-11-04"), ["r6", "r7", "r8"]),
        (("--until", "2026-11-03", "--event", "access"), ["r1", "r2", "r3"]),
        (("--since", "2026-11-02T09:00:30Z", "--until", "2026-11-02T09:05:00.000Z"), ["r2"]),
        (("--since", "2026-11-03T13:00+01:00", "--until", "2026-11-04"), ["r4", "r5"]),
        (("--limit", "2"), ["r1", "r2"]),
        (("--limit", "0"), []),
        (("--user", "nobody"), []),
    ],
    ids=[
        "no filter: every access record, oldest first",
        "event all: every kind of record",
        "event repeated: any of them",
        "user",
        "user repeated: any of them",
        "role: a role the client had",
        "role repeated: any of them",
        "site",
        "site 'unlisted': access records without a site",
        "site repeated",
        "host covers its subdomains",
        "host is matched normalized",
        "decision",
        "reason",
        "filters combine with AND",
        "event kind",
        "since a date: midnight UTC, inclusive",
        "until a date: exclusive",
        "since/until with Z: half-open interval",
        "an offset is honoured",
        "limit keeps the oldest",
        "limit 0",
        "no match: no output",
    ],
)
def test_query_filters(cli, log, args, expected):
    status, out, err = cli("audit", "query", log, "--format", "jsonl", *args)
    assert status == 0, err
    assert ids(out) == expected


def test_query_relative_times(cli, tmp_path):
    now = datetime.now(timezone.utc)

    def at(delta: timedelta) -> str:
        return (now - delta).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    log = write_log(
        tmp_path / "a.jsonl",
        [
            access("old", at(timedelta(days=3)), "alice", "facebook"),
            access("hour", at(timedelta(hours=1)), "alice", "facebook"),
            access("now", at(timedelta(minutes=1)), "alice", "facebook"),
        ],
    )
    for since, expected in [("7d", ["old", "hour", "now"]), ("2d", ["hour", "now"]),
                            ("90m", ["hour", "now"]), ("30m", ["now"]), ("1w", ["old", "hour", "now"])]:  # fmt: skip
        status, out, _ = cli("audit", "query", log, "--since", since, "--format", "jsonl")
        assert (status, ids(out)) == (0, expected), since
    status, out, _ = cli("audit", "query", log, "--until", "2h", "--format", "jsonl")
    assert ids(out) == ["old"]


def test_query_formats(cli, log):
    status, out, _ = cli("audit", "query", log, "--format", "csv", "--site", "facebook")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0
    assert [r["request_id"] for r in rows] == ["r1", "r2", "r4", "r5"]
    assert rows[0]["ts"] == "2026-11-02T09:00:00.000Z"
    assert rows[0]["roles"] == "communications,everyone"
    assert rows[0]["enforced"] == "true"
    assert int(rows[0]["seq"]) == 2

    status, out, _ = cli("audit", "query", log, "--format", "json", "--user", "bob")
    data = json.loads(out)
    assert [(r["request_id"], r["decision"], r["reason"], r["status"]) for r in data] == [
        ("r3", "block", "read-only", 403),
        ("r4", "allow", "allowed", 200),
        ("r5", "block", "outside-window", 403),
    ]
    assert data[0]["roles"] == ["everyone"] and data[0]["ts"] == "2026-11-02T09:05:00.000Z"

    status, out, _ = cli("audit", "query", log, "--user", "alice")
    lines = out.splitlines()
    assert lines[0].split() == ["ts", "user", "client_ip", "method", "host", "path", "site", "decision", "reason"]
    assert len(lines) == 2 + 2
    assert lines[2].split()[:2] == ["2026-11-02T09:00:00.000Z", "alice"]


def test_the_table_shows_access_records_unless_another_event_is_asked_for(cli, log):
    status, out, _ = cli("audit", "query", log)
    rows = out.splitlines()[2:]
    assert status == 0 and len(rows) == 8
    assert not any(set(row.split()[1:]) <= {"-"} for row in rows), "no event shown as a row of dashes"
    status, out, _ = cli("audit", "query", log, "--event", "policy_loaded")
    assert [row.split()[0] for row in out.splitlines()[2:]] == ["2026-11-01T23:59:00.000Z"]


EXPORTS = {
    "csv": lambda data: [r["request_id"] for r in csv.DictReader(io.StringIO(data.decode(), newline=""))],
    "json": lambda data: [r["request_id"] for r in json.loads(data)],
    "jsonl": lambda data: [json.loads(line)["request_id"] for line in data.splitlines()],
}


@pytest.mark.parametrize("fmt", EXPORTS)
def test_an_export_goes_to_stdout_or_to_output_alike(cli, log, tmp_path, fmt):
    status, out, err = cli("audit", "query", log, "--site", "facebook", "--format", fmt)
    assert status == 0, err
    target = tmp_path / f"out.{fmt}"
    status, nothing, err = cli("audit", "query", log, "--site", "facebook", "--format", fmt, "--output", target)
    assert (status, nothing) == (0, ""), err
    assert target.read_bytes() == out.encode()
    assert EXPORTS[fmt](target.read_bytes()) == ["r1", "r2", "r4", "r5"]


def test_parquet_keeps_values_and_types_exactly(cli, log, tmp_path):
    import duckdb

    target = tmp_path / "out.parquet"
    status, _, err = cli("audit", "query", log, "--event", "all", "--format", "parquet", "--output", target)
    assert status == 0, err
    status, out, _ = cli("audit", "query", log, "--event", "all", "--format", "jsonl")
    with duckdb.connect() as con:
        got = con.execute(f"SELECT request_id, ts, roles, duration_ms, seq FROM '{target}'").fetchall()
        types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{target}')").fetchall())
    expected = [json.loads(line) for line in out.splitlines()]
    assert [(r[0], r[2], r[3], r[4]) for r in got] == [
        (e["request_id"], e["roles"], e["duration_ms"], e["seq"]) for e in expected
    ]
    assert got[1][1] == datetime(2026, 11, 2, 9, 0)
    assert (types["ts"], types["roles"], types["seq"], types["enforced"]) == ("TIMESTAMP", "VARCHAR[]", "BIGINT",
                                                                               "BOOLEAN")  # fmt: skip


def test_parquet_goes_to_a_pipe_too_and_output_needs_a_file_format(cli, log, tmp_path):
    done = subprocess.run([sys.executable, "-m", "accessgate", "audit", "query", str(log), "--format", "parquet"],
                          capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    piped = tmp_path / "piped.parquet"
    piped.write_bytes(done.stdout)
    status, _, _ = cli("audit", "query", log, "--format", "parquet", "--output", tmp_path / "file.parquet")
    assert status == 0 and done.stdout[:4] == b"PAR1" and piped.read_bytes() == (tmp_path / "file.parquet").read_bytes()
    status, _, err = cli("audit", "query", log, "--output", tmp_path / "x.csv")
    assert status == 2 and "add --format, e.g. --format csv" in err


def test_table_shows_limit_note(cli, log):
    status, out, err = cli("audit", "query", log, "--limit", "3")
    assert status == 0
    assert len(out.splitlines()) == 2 + 3
    assert "more records match than the 3 shown" in err


def test_sql_over_the_audit_view(cli, log):
    status, out, _ = cli(
        "audit", "sql",
        "SELECT \"user\", count(*) AS blocked FROM audit WHERE decision = 'block' GROUP BY 1 ORDER BY 1",
        log, "--format", "csv",
    )  # fmt: skip
    assert status == 0
    assert out.splitlines() == ["user,blocked", "bob,2", "carol,1"]
    status, out, _ = cli("audit", "sql", "SELECT count(*) AS n FROM audit", log, "--format", "json")
    assert json.loads(out) == [{"n": 9}]


def test_sql_error_is_reported_not_raised(cli, log):
    status, _, err = cli("audit", "sql", "SELECT nonsense FROM audit", log)
    assert status == 2
    assert "query failed" in err and "nonsense" in err


def test_rotated_and_gzipped_files_read_in_chain_order(cli, tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, RECORDS[1:4])
    rotate(path)
    write_log(path, RECORDS[4:6])
    rotate(path)
    write_log(path, RECORDS[6:9])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2.gz"]
    status, out, _ = cli("audit", "query", str(tmp_path / "audit.jsonl*"), "--format", "jsonl")
    assert status == 0
    assert ids(out) == ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]
    assert [json.loads(line)["seq"] for line in out.splitlines()] == list(range(1, 9))
    # A second query reads the rotated files from the cache: same answer.
    status, again, _ = cli("audit", "query", str(tmp_path / "audit.jsonl*"), "--format", "jsonl")
    assert again == out


def test_empty_log(cli, tmp_path):
    empty = tmp_path / "audit.jsonl"
    empty.touch()
    status, out, _ = cli("audit", "query", empty)
    assert status == 0 and "(no records)" in out
    status, out, _ = cli("audit", "sql", "SELECT count(*) AS n FROM audit", empty, "--format", "csv")
    assert out.splitlines() == ["n", "0"]


def test_truncated_last_line_is_reported_not_fatal(cli, log):
    with open(log, "ab") as fh:
        fh.write(b'{"event":"access","ts":"2026-11-06T00:00:00.000Z","request_id":"r9","us')
    status, out, err = cli("audit", "query", log, "--format", "jsonl", "--event", "access")
    assert status == 0
    assert ids(out) == ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]
    assert f"{log}:10: incomplete last line" in err


def test_old_schema_records_still_query(cli, tmp_path):
    old = tmp_path / "old.jsonl"
    old.write_text(
        '{"ts":"2025-01-02T10:00:00.000Z","request_id":"o1","user":"alice","roles":["everyone"],'
        '"client_ip":"10.0.0.1","method":"GET","scheme":"https","host":"www.facebook.com","path":"/",'
        '"site":"facebook","decision":"allow","reason":"allowed","rule":"r","status":200,'
        '"bytes_in":1,"bytes_out":2,"duration_ms":1.0,"policy":"p"}\n'
        '{"ts":"2025-01-02T10:05:00.000Z","request_id":"o2","user":"bob","roles":[],'
        '"client_ip":"10.0.0.2","method":"POST","scheme":"https","host":"x.com","path":"/",'
        '"site":"x","decision":"block","reason":"denied","rule":"r","status":403,'
        '"bytes_in":1,"bytes_out":2,"duration_ms":1.0,"policy":"p"}\n'
    )
    status, out, _ = cli("audit", "query", old, "--decision", "block", "--format", "jsonl")
    [rec] = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    assert (rec["request_id"], rec["event"], rec["level"], rec["seq"]) == ("o2", "access", None, None)


def test_bad_arguments_say_what_to_do(cli, log, tmp_path):
    status, _, err = cli("audit", "query", log, "--since", "last tuesday")
    assert status == 2 and "cannot read 'last tuesday' as a time" in err
    status, _, err = cli("audit", "query", str(tmp_path / "nothing*.jsonl"))
    assert status == 2 and "no audit log matches" in err


WARN_RECORDS = [
    access("w1", "2026-11-02T09:00:05.000Z", "zoe", "tiktok", "block", reason="justification-required"),
    {"event": "warn_continued", "ts": "2026-11-02T09:00:20.000Z", "request_id": "w2", "user": "zoe",
     "client_ip": "10.0.0.1", "host": "www.tiktok.com", "site": "tiktok", "role": "everyone",
     "rule": "roles.everyone.access.tiktok+continued", "justification": "a customer asked <b>there</b>\x1b[2J",
     "until": "2026-11-02T09:30:20.000Z", "policy": "abc123abc123"},
    {"event": "warn_refused", "ts": "2026-11-02T09:01:00.000Z", "request_id": "w3", "user": "bob",
     "client_ip": "10.0.0.2", "host": "www.tiktok.com", "site": "tiktok",
     "note": "the form was sent already (a form is good once)", "policy": "abc123abc123"},
]


def test_the_table_of_warn_events_shows_the_reason_given(cli, tmp_path):
    log = write_log(tmp_path / "warn.jsonl", WARN_RECORDS)
    status, out, _ = cli("audit", "query", log, "--no-cache", "--event", "warn_continued")
    assert status == 0
    head, _, row = out.splitlines()
    assert head.split() == ["ts", "user", "client_ip", "host", "site", "role", "until", "justification"]
    # As text, its control characters made visible: a reason cannot drive the reader's terminal.
    assert row.split(None, 7)[7] == "a customer asked <b>there</b>\\x1b[2J"
    assert "\x1b" not in out
    status, out, _ = cli("audit", "query", log, "--no-cache", "--event", "warn_refused")
    assert out.splitlines()[0].split() == ["ts", "user", "client_ip", "host", "site", "note"]
    assert "good once" in out
    # Any other event among them: the usual columns.
    status, out, _ = cli("audit", "query", log, "--no-cache", "--event", "warn_continued", "--event", "access")
    assert out.splitlines()[0].split()[-2:] == ["decision", "reason"] and len(out.splitlines()) == 4
