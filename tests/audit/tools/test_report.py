"""`accessgate audit report`: numbers match a hand-counted log; the HTML stands alone."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from accessgate.audit.reader import AuditReader
from accessgate.audit.tools.report import Day, RoleSite, UserSite, WarnSite, build_report, render_html

from ..conftest import access, write_log

ALICE = {"roles": ["communications", "everyone"]}
KIOSK = {"roles": ["kiosk"], "client_ip": "10.20.30.4"}
SALES = {"roles": ["everyone", "sales"]}
RECORDS = [
    {"event": "policy_loaded", "ts": "2026-11-01T08:00:00.000Z", "policy": "abc123abc123"},
    access("old", "2026-11-01T23:59:59.999Z", "alice", "facebook", **ALICE),  # before --since
    access("a1", "2026-11-02T09:00:05.000Z", "alice", "facebook", **ALICE),
    access("a2", "2026-11-02T09:00:50.000Z", "alice", "facebook", **ALICE),  # same minute as a1
    access("a3", "2026-11-02T09:01:00.000Z", "alice", "facebook", **ALICE),
    access("a4", "2026-11-02T09:01:30.000Z", "alice", "linkedin", **ALICE),
    access("a5", "2026-11-02T09:02:00.000Z", "bob", "facebook", "block", reason="outside-window"),
    access("a6", "2026-11-02T09:03:00.000Z", "bob", "facebook", "block", reason="outside-window"),
    access("a7", "2026-11-02T09:04:00.000Z", "bob", "linkedin", "block", reason="read-only", method="POST"),
    access("a8", "2026-11-02T09:04:30.000Z", "bob", "linkedin"),
    access("a9", "2026-11-02T10:00:00.000Z", None, "youtube", **KIOSK),
    access("a10", "2026-11-02T10:00:59.999Z", None, "youtube", **KIOSK),  # same minute as a9
    access("a11", "2026-11-02T10:05:00.000Z", "dave", None),  # unlisted: totals only
    access("b1", "2026-11-03T12:00:00.000Z", "alice", "facebook", **ALICE),
    access("b2", "2026-11-03T12:00:10.000Z", "bob", "facebook"),
    access("b3", "2026-11-03T12:01:10.000Z", "bob", "facebook"),
    access("b4", "2026-11-03T12:02:00.000Z", "bob", "facebook", "block", reason="quota-exhausted"),
    access("b5", "2026-11-03T12:03:00.000Z", "carol", "x", "block", **SALES),
    access("late", "2026-11-04T00:00:00.000Z", "alice", "facebook", **ALICE),  # at --until: excluded
]
SINCE = datetime(2026, 11, 2, tzinfo=timezone.utc)
UNTIL = datetime(2026, 11, 4, tzinfo=timezone.utc)


@pytest.fixture
def log(tmp_path):
    return write_log(tmp_path / "audit.jsonl", RECORDS)


@pytest.fixture
def report(log):
    with AuditReader([str(log)]) as audit:
        return build_report(audit, SINCE, UNTIL)


# Every section of the report over SINCE..UNTIL, as counted by hand from RECORDS.
SECTIONS = {
    "totals: requests, allowed, blocked, to unlisted hosts, users": (
        lambda r: (r.requests, r.allowed, r.blocked, r.unlisted, r.users), (16, 11, 5, 1, 5)),
    "active minutes and requests per user and site": (lambda r: r.user_sites, [
        UserSite("alice", "facebook", minutes=3, allowed=4, blocked=0),
        UserSite("bob", "facebook", minutes=2, allowed=2, blocked=3),
        UserSite("(anonymous 10.20.30.4)", "youtube", minutes=1, allowed=2, blocked=0),
        UserSite("bob", "linkedin", minutes=1, allowed=1, blocked=1),
        UserSite("alice", "linkedin", minutes=1, allowed=1, blocked=0),
        UserSite("carol", "x", minutes=0, allowed=0, blocked=1),
    ]),
    "blocked attempts by reason": (
        lambda r: r.blocked_by_reason, [("outside-window", 2), ("denied", 1), ("quota-exhausted", 1), ("read-only", 1)]),
    "top sites per role, by active minutes": (lambda r: r.top_sites_per_role, [
        # role, site, active minutes, allowed, users
        RoleSite("communications", "facebook", 3, 4, 1),
        RoleSite("communications", "linkedin", 1, 1, 1),
        RoleSite("everyone", "facebook", 5, 6, 2),
        RoleSite("everyone", "linkedin", 2, 2, 2),
        RoleSite("kiosk", "youtube", 1, 2, 1),
    ]),
    "per day": (lambda r: r.days, [
        Day(date(2026, 11, 2), minutes=5, allowed=8, blocked=3, users=4),
        Day(date(2026, 11, 3), minutes=3, allowed=3, blocked=2, users=3),
    ]),
}  # fmt: skip


@pytest.mark.parametrize("section, expected", SECTIONS.values(), ids=SECTIONS.keys())
def test_each_section_is_the_hand_count(report, section, expected):
    assert section(report) == expected


def test_html_is_self_contained_and_carries_the_numbers(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 2  # per-day chart, blocks by reason
    for outside in ("http://", "https://", "<script", " src=", "url(", "<link", "@import"):
        assert outside not in page, outside
    row = '<tr><td class="">alice</td><td class="">facebook</td><td class="n">3</td><td class="n">4</td><td class="n">0</td></tr>'
    assert row in page
    assert re.search(r"<div><b>8</b>active minutes</div>", page)


def test_html_escapes_what_the_log_says(tmp_path):
    log = write_log(tmp_path / "a.jsonl", [access("e1", "2026-11-02T09:00:00.000Z", "<img onerror=x>", "face<book>")])
    with AuditReader([str(log)]) as audit:
        page = render_html(build_report(audit, SINCE, UNTIL))
    assert "<img" not in page and "&lt;img onerror=x&gt;" in page and "face&lt;book&gt;" in page


def test_cli_prints_summary_and_writes_html(cli, log, tmp_path):
    html = tmp_path / "report.html"
    status, out, err = cli("audit", "report", log, "--since", "2026-11-02", "--until", "2026-11-04", "--html", html)
    assert status == 0
    lines = out.splitlines()
    assert lines[1] == "16 requests: 11 allowed, 5 blocked; 1 to unlisted hosts; 5 users"
    assert ["alice", "facebook", "3", "4", "0"] in [line.split() for line in lines]
    assert ["2026-11-03", "3", "3", "2", "3"] in [line.split() for line in lines]
    assert html.read_text().count("<svg") == 2 and f"written to {html}" in err


def test_cli_rejects_an_empty_period(cli, log):
    status, _, err = cli("audit", "report", log, "--since", "2026-11-04", "--until", "2026-11-02")
    assert status == 2 and "must be after --since" in err


def _warn_event(event: str, ts: str, user: str | None, site: str, **extra) -> dict:
    rec = {"event": event, "ts": ts, "request_id": ts[-8:], "user": user, "client_ip": "10.0.0.9",
           "host": f"www.{site}.com", "site": site, "policy": "abc123abc123"}
    if event == "warn_continued":
        rec.update(role="everyone", rule=f"roles.everyone.access.{site}+continued", justification="<b>work</b>",
                   until="2026-11-02T10:00:00.000Z")
    else:
        rec.update(note="the form was sent already (a form is good once)")
    rec.update(extra)
    return rec


WARN_RECORDS = [
    _warn_event("warn_continued", "2026-11-01T09:00:00.000Z", "zoe", "tiktok"),  # before --since
    _warn_event("warn_continued", "2026-11-02T09:00:00.000Z", "zoe", "tiktok"),
    _warn_event("warn_continued", "2026-11-02T09:40:00.000Z", "zoe", "tiktok"),
    _warn_event("warn_continued", "2026-11-02T09:41:00.000Z", "yann", "tiktok"),
    _warn_event("warn_continued", "2026-11-02T09:42:00.000Z", None, "tiktok"),  # anonymous: per address
    _warn_event("warn_refused", "2026-11-02T09:43:00.000Z", "zoe", "tiktok"),
    _warn_event("warn_refused", "2026-11-03T09:00:00.000Z", "mallory", "<i>x</i>"),
    access("w1", "2026-11-02T09:00:01.000Z", "zoe", "tiktok", level="warn"),
]


def test_warn_pages_are_counted_per_site_and_shown_escaped(tmp_path, cli):
    log = write_log(tmp_path / "warn.jsonl", RECORDS + WARN_RECORDS)
    with AuditReader([str(log)]) as audit:
        report = build_report(audit, SINCE, UNTIL)
    assert report.warn_by_site == [WarnSite("tiktok", continued=4, users=3, refused=1),
                                   WarnSite("<i>x</i>", continued=0, users=0, refused=1)]
    assert report.requests == 17  # warn events are no requests
    page = render_html(report)
    assert "<h2>Warn pages</h2>" in page and "<i>x" not in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert "<b>work" not in page and "&lt;b&gt;work" not in page  # the reasons themselves are not in the report
    status, out, _ = cli("audit", "report", log, "--since", "2026-11-02", "--until", "2026-11-04")
    assert status == 0 and ["tiktok", "4", "3", "1"] in [line.split() for line in out.splitlines()]


def test_without_warn_events_there_is_no_warn_section(report):
    assert report.warn_by_site == [] and "Warn pages" not in render_html(report)


def test_cli_calls_sites_by_the_policys_display_names(cli, log, tmp_path):
    # The example policy's catalog names facebook "Facebook", x "X", youtube "YouTube".
    policy = Path(__file__).resolve().parents[3] / "policy" / "example.yaml"
    html = tmp_path / "report.html"
    status, out, _ = cli("audit", "report", log, "--since", "2026-11-02", "--until", "2026-11-04",
                         "--policy", policy, "--html", html)
    assert status == 0
    rows = [line.split() for line in out.splitlines()]
    assert ["alice", "Facebook", "3", "4", "0"] in rows and ["kiosk", "YouTube", "1", "2", "1"] in rows
    assert not any("facebook" in row for row in rows)
    page = html.read_text()
    assert '<td class="">alice</td><td class="">Facebook</td>' in page and '<td class="">X</td>' in page
    assert '<td class="">facebook</td>' not in page


def test_cli_without_a_policy_shows_the_keys_and_with_a_broken_one_fails(cli, log, tmp_path):
    status, out, _ = cli("audit", "report", log, "--since", "2026-11-02", "--until", "2026-11-04")
    assert ["alice", "facebook", "3", "4", "0"] in [line.split() for line in out.splitlines()]
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 2\n")
    status, out, err = cli("audit", "report", log, "--since", "2026-11-02", "--policy", broken)
    assert status == 1 and out == "" and "version 2 is not supported" in err
