"""reveal, the query cache and the progress bar."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from accessgate.audit.tools import progress
from accessgate.audit.pseudonym import pseudonymize

from ..conftest import access, rotate, write_log

KEY = b"k" * 32


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(KEY)
    return path


@pytest.fixture
def pseudonymized(tmp_path):
    return write_log(
        tmp_path / "audit.jsonl",
        [
            access("r1", "2026-11-02T09:00:00.000Z", "alice", "facebook"),
            access("r2", "2026-11-02T09:01:00.000Z", "bob", "facebook", "block"),
            access("r3", "2026-11-02T09:02:00.000Z", "alice", "linkedin"),
            access("r4", "2026-11-02T09:03:00.000Z", "mallory", "x", "block"),
            access("r5", "2026-11-02T09:04:00.000Z", None, "x", "block"),
        ],
        key=KEY,
    )


def test_the_log_holds_pseudonyms_only(pseudonymized):
    text = pseudonymized.read_text()
    assert "alice" not in text and pseudonymize(KEY, "alice") in text


def test_reveal_with_a_candidate_file(cli, pseudonymized, key_file, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("# staff\nalice\nbob  # sales\ncarol\n")
    status, out, err = cli("audit", "reveal", pseudonymized, "--key-file", key_file, "--candidates", names, "--format", "json")
    assert status == 0
    got = [(r["pseudonym"], r["name"], r["records"]) for r in json.loads(out)]
    assert got == [
        (pseudonymize(KEY, "alice"), "alice", 2),
        (pseudonymize(KEY, "bob"), "bob", 1),
        (pseudonymize(KEY, "mallory"), None, 1),
    ]
    assert "1 pseudonym(s) match no candidate" in err


def test_reveal_with_a_policy(cli, pseudonymized, key_file, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nsites: {x: {domains: [x.com]}}\ndirectory: {groups: {staff: [alice]}}\n"
        "roles:\n  r: {members: ['group:staff', 'user:mallory'], access: {x: full}}\n"
    )
    status, out, _ = cli("audit", "reveal", pseudonymized, "--key-file", key_file, "--policy", policy, "--format", "csv")
    assert status == 0
    assert [line.split(",")[1] for line in out.splitlines()[1:]] == ["alice", "mallory", ""]


def test_reveal_with_the_wrong_key_finds_nobody(cli, pseudonymized, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"w" * 32)
    names = tmp_path / "names.txt"
    names.write_text("alice\nbob\nmallory\n")
    status, out, err = cli("audit", "reveal", pseudonymized, "--key-file", wrong, "--candidates", names, "--format", "json")
    assert status == 0 and all(r["name"] is None for r in json.loads(out)) and "3 pseudonym(s)" in err


def test_query_by_real_name_with_the_key(cli, pseudonymized, key_file):
    status, out, _ = cli("audit", "query", pseudonymized, "--user", "alice", "--key-file", key_file, "--format", "jsonl")
    assert status == 0
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["r1", "r3"]


def test_short_key_is_refused(cli, pseudonymized, tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    status, _, err = cli("audit", "reveal", pseudonymized, "--key-file", short, "--candidates", short)
    assert status == 2 and "use at least 16" in err


# -- cache ----------------------------------------------------------------------------


def cache_entries() -> list:
    return sorted(os.listdir(os.environ["ACCESSGATE_AUDIT_CACHE"]))


def test_rotated_files_are_cached_live_ones_only_on_request(cli, tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, [access("r1", "2026-11-02T09:00:00.000Z", "alice", "facebook")])
    rotate(path)
    write_log(path, [access("r2", "2026-11-02T09:01:00.000Z", "bob", "facebook")])
    pattern = str(tmp_path / "audit.jsonl*")

    assert cli("audit", "query", pattern, "--no-cache")[0] == 0
    assert cache_entries() == []
    assert cli("audit", "query", pattern)[0] == 0
    assert len(cache_entries()) == 1  # the rotated file only
    status, out, _ = cli("audit", "index", pattern)
    assert status == 0 and out.startswith("2 of 2 file(s) cached")
    assert len(cache_entries()) == 2

    # The live file grows: its cache entry no longer applies, the new record shows.
    write_log(path, [access("r3", "2026-11-02T09:02:00.000Z", "carol", "facebook")])
    status, out, _ = cli("audit", "query", pattern, "--format", "jsonl")
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["r1", "r2", "r3"]


# -- progress -------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "stream, drawn",
    [(Terminal(), True), (io.StringIO(), False)],
    ids=["a terminal gets a bar", "a pipe or file gets nothing"],
)
def test_progress_bar_only_on_a_terminal(monkeypatch, stream, drawn):
    monkeypatch.delenv("ACCESSGATE_NO_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    bar = progress.Bar("query", stream, delay=0)
    bar.update(0.42)
    assert ("[" + "#" * 12 + "-" * 18 + "]  42%" in stream.getvalue()) == drawn
    bar.close()
    assert stream.getvalue().endswith("\r") == drawn


def test_piped_cli_output_has_no_progress(tmp_path):
    log = write_log(tmp_path / "a.jsonl", [access("r1", "2026-11-02T09:00:00.000Z", "alice", "facebook")])
    env = {k: v for k, v in os.environ.items() if k != "ACCESSGATE_NO_PROGRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "accessgate", "audit", "query", str(log), "--format", "csv"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stderr == "" and "\r" not in done.stdout
    assert done.stdout.splitlines()[1].startswith("access,2026-11-02T09:00:00.000Z,r1,")
