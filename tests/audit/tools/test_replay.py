"""`accessgate replay`: exactly the decisions a candidate policy would change."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime
from pathlib import Path

import pytest

from accessgate.decision import Identity, Request, decide, local_day, minute_of
from accessgate.policy.loader import parse_policy
from accessgate.decision.quota import MemoryLedger
from support.policies import everyone_policy

from ..conftest import write_log

CURRENT = """
version: 1
timezone: UTC
sites:
  facebook: {domains: [facebook.com]}
  linkedin: {domains: [linkedin.com]}
  x: {domains: [x.com]}
directory:
  groups:
    pr: [alice]
    sales: [carol]
roles:
  pr:
    members: ["group:pr"]
    access: {"*": full}
  sales:
    members: ["group:sales"]
    access: {linkedin: full, x: full}
  everyone:
    members: [all]
    access:
      linkedin: read-only
      facebook: {level: full, windows: ["mon-fri 12:00-13:00"], daily_minutes: 2}
      "*": deny
unauthenticated: deny
unlisted: allow
"""

# Sales loses X; the lunch quota shrinks to one minute.
STRICTER = CURRENT.replace("access: {linkedin: full, x: full}", "access: {linkedin: full}").replace(
    "daily_minutes: 2", "daily_minutes: 1"
)
# Facebook all day without a quota; anonymous visitors may read LinkedIn.
LOOSER = (
    CURRENT.replace('facebook: {level: full, windows: ["mon-fri 12:00-13:00"], daily_minutes: 2}', "facebook: full")
    .replace("unauthenticated: deny", "unauthenticated: guest")
    .replace("roles:\n", "roles:\n  guest:\n    members: []\n    access: {linkedin: read-only}\n", 1)
)

# 2026-11-02 is a Monday.  (id, time, user, method, host) and what CURRENT decides.
TRAFFIC = [
    ("r01", "09:00:00", "alice", "GET", "www.facebook.com", "allow", "allowed"),
    ("r02", "09:01:00", "alice", "POST", "x.com", "allow", "allowed"),
    ("r03", "09:02:00", "bob", "GET", "www.linkedin.com", "allow", "allowed"),
    ("r04", "09:03:00", "bob", "POST", "www.linkedin.com", "block", "read-only"),
    ("r05", "09:04:00", "bob", "GET", "www.facebook.com", "block", "outside-window"),
    ("r06", "12:00:00", "bob", "GET", "www.facebook.com", "allow", "allowed"),
    ("r07", "12:00:30", "bob", "GET", "www.facebook.com", "allow", "allowed"),
    ("r08", "12:01:10", "bob", "GET", "www.facebook.com", "allow", "allowed"),
    ("r09", "12:02:00", "bob", "GET", "www.facebook.com", "block", "quota-exhausted"),
    ("r10", "12:03:00", "carol", "POST", "x.com", "allow", "allowed"),
    ("r11", "12:04:00", None, "GET", "www.linkedin.com", "block", "unauthenticated"),
    ("r12", "12:05:00", "dave", "GET", "intranet.example.org", "allow", "unlisted"),
]


def logged_traffic() -> list[dict]:
    """TRAFFIC as the proxy would have logged it under CURRENT (quota included)."""
    policy = parse_policy(CURRENT)
    ledger = MemoryLedger()
    records = []
    for rid, clock, user, method, host, *_ in TRAFFIC:
        now = datetime.fromisoformat(f"2026-11-02T{clock}+00:00")
        identity = Identity(user=user, client_ip=ipaddress.ip_address("10.0.0.7"))
        d = decide(Request(method=method, hosts=(host,), path="/", scheme="https"), identity, policy, now, ledger)
        if d.allowed and d.counts_quota:
            ledger.mark(identity.subject, d.site, local_day(now, policy), minute_of(now))
        records.append({
            "event": "access", "ts": now, "request_id": rid, "user": user, "roles": list(d.roles),
            "client_ip": "10.0.0.7", "method": method, "scheme": "https", "host": host, "path": "/",
            "site": d.site, "decision": d.decision, "reason": d.reason, "level": d.level,
            "rule": d.rule, "status": 200 if d.allowed else 403, "policy": policy.short_digest,
        })  # fmt: skip
    return records


@pytest.fixture
def log(tmp_path) -> Path:
    return write_log(tmp_path / "audit.jsonl", logged_traffic())


@pytest.fixture
def policies(tmp_path):
    def write(text: str) -> Path:
        path = tmp_path / f"candidate{len(list(tmp_path.glob('candidate*')))}.yaml"
        path.write_text(text)
        return path

    return write


def test_the_log_holds_what_current_decided():
    assert [(r["request_id"], r["decision"], r["reason"]) for r in logged_traffic()] == [
        (rid, decision, reason) for rid, *_, decision, reason in TRAFFIC
    ]


def test_same_policy_changes_nothing(cli, log, policies):
    status, out, _ = cli("replay", policies(CURRENT), log)
    assert status == 0
    assert "Replayed 12 access records" in out and "No decision would change." in out


def group(allow_to_block: int, block_to_allow: int, *examples: str) -> dict:
    """A role, site or user in the JSON report: its changes each way and the first request ids."""
    return {"allow_to_block": allow_to_block, "block_to_allow": block_to_allow, "examples": list(examples)}


def reasons(*changes: tuple[str, str, int]) -> list[dict]:
    return [{"from": old, "to": new, "count": count} for old, new, count in changes]


# candidate -> the JSON report of replaying TRAFFIC (logged under CURRENT) under it.
CANDIDATES = {
    "stricter: sales loses X and the lunch quota shrinks": (STRICTER, {
        "changes": 2, "allow_to_block": 2, "block_to_allow": 0,
        "by_site": {"facebook": group(1, 0, "r08"), "x": group(1, 0, "r10")},
        "by_user": {"bob": group(1, 0, "r08"), "carol": group(1, 0, "r10")},
        "by_role": {"everyone": group(2, 0, "r08", "r10"), "sales": group(1, 0, "r10")},
        "reasons": reasons(("allowed", "denied", 1), ("allowed", "quota-exhausted", 1)),
    }),
    "looser: facebook all day and anonymous visitors may read linkedin": (LOOSER, {
        "changes": 3, "allow_to_block": 0, "block_to_allow": 3,
        "by_site": {"facebook": group(0, 2, "r05", "r09"), "linkedin": group(0, 1, "r11")},
        "by_user": {"bob": group(0, 2, "r05", "r09"), "(anonymous 10.0.0.7)": group(0, 1, "r11")},
        "by_role": {"everyone": group(0, 2, "r05", "r09"), "guest": group(0, 1, "r11")},
        "reasons": reasons(("outside-window", "allowed", 1), ("quota-exhausted", "allowed", 1),
                           ("unauthenticated", "allowed", 1)),
    }),
}  # fmt: skip


@pytest.mark.parametrize("candidate, expected", CANDIDATES.values(), ids=CANDIDATES.keys())
def test_a_candidate_policy_reports_exactly_the_decisions_it_changes(cli, log, policies, candidate, expected):
    status, out, _ = cli("replay", policies(candidate), log, "--json")
    report = json.loads(out)
    assert status == 1
    assert {key: report[key] for key in expected} == expected
    assert list(report["by_user"]) == list(expected["by_user"]), "most changes first"


def test_text_report_names_groups_and_examples(cli, log, policies):
    status, out, _ = cli("replay", policies(STRICTER), log)
    assert status == 1
    assert "2 decisions would change: 2 allow -> block, 0 block -> allow." in out
    assert "By role:" in out and "By site:" in out and "By user:" in out
    assert any(line.split()[:4] == ["carol", "1", "0", "r10"] for line in out.splitlines())


def test_pseudonymized_log_replays_with_the_key(cli, tmp_path, policies):
    key_file = tmp_path / "key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef")
    log = write_log(tmp_path / "audit.jsonl", logged_traffic(), key=key_file.read_bytes())
    assert "alice" not in log.read_text()
    status, out, _ = cli("replay", policies(CURRENT), log, "--key-file", key_file)
    assert (status, "No decision would change." in out) == (0, True)
    # Without the key nobody is in a group: alice's PR access is gone.
    status, out, _ = cli("replay", policies(CURRENT), log, "--json")
    assert status == 1 and json.loads(out)["allow_to_block"] >= 2


def test_since_limits_the_replay(cli, log, policies):
    status, out, _ = cli("replay", policies(STRICTER), log, "--since", "2026-11-02T12:02", "--json")
    report = json.loads(out)
    assert (status, report["records"]) == (1, 4)
    # r10 loses X; r09 is allowed because quota counting starts at --since.
    assert report["by_user"] == {"bob": group(0, 1, "r09"), "carol": group(1, 0, "r10")}


def test_errors_exit_2(cli, log, policies, tmp_path):
    status, _, err = cli("replay", policies("version: 1\nroles: {x: {members: [nobody]}}\n"), log)
    assert status == 2 and "not valid" in err
    status, _, err = cli("replay", policies(CURRENT), tmp_path / "missing.jsonl")
    assert status == 2 and "no such audit log" in err


# -- warn grants: a logged reason opens the site for the candidate's continue_minutes --------

WARN = everyone_policy({"tiktok": "{level: warn, continue_minutes: 30}"}, domains="{site}.com",
                       unauthenticated="deny", unlisted="allow")


def warn_log(tmp_path) -> Path:
    """zoe is warned at 09:00, gives a reason at 09:01 and browses at 09:02 and 09:20 (as WARN logged it)."""
    def at(clock: str) -> datetime:
        return datetime.fromisoformat(f"2026-11-02T{clock}+00:00")

    def access(rid: str, clock: str, decision: str, reason: str, rule: str) -> dict:
        return {"event": "access", "ts": at(clock), "request_id": rid, "user": "zoe", "roles": ["everyone"],
                "client_ip": "10.0.0.7", "method": "GET", "scheme": "https", "host": "www.tiktok.com", "path": "/",
                "site": "tiktok", "decision": decision, "reason": reason, "level": "warn", "rule": rule,
                "status": 200 if decision == "allow" else 403}  # fmt: skip

    return write_log(tmp_path / "warn.jsonl", [
        access("w1", "09:00:00", "block", "justification-required", "roles.everyone.access.tiktok"),
        {"event": "warn_continued", "ts": at("09:01:00"), "request_id": "w2", "user": "zoe", "client_ip": "10.0.0.7",
         "host": "www.tiktok.com", "site": "tiktok", "role": "everyone", "justification": "a customer asked",
         "rule": "roles.everyone.access.tiktok+continued", "until": at("09:31:00")},
        access("w3", "09:02:00", "allow", "allowed", "roles.everyone.access.tiktok+continued"),
        access("w4", "09:20:00", "allow", "allowed", "roles.everyone.access.tiktok+continued"),
    ])  # fmt: skip


@pytest.mark.parametrize("candidate, changed", [
    pytest.param(WARN, {}, id="the-same-warn-grant-changes-nothing"),
    pytest.param(WARN.replace("continue_minutes: 30", "continue_minutes: 10"), {"w4": "justification-required"},
                 id="a-shorter-continuation-closes-later-requests"),
    pytest.param(WARN.replace("{level: warn, continue_minutes: 30}", "deny"),
                 {"w3": "denied", "w4": "denied"}, id="no-warn-grant-no-continuation"),
    pytest.param(WARN.replace("{level: warn, continue_minutes: 30}", "full"), {"w1": "allowed"},
                 id="full-access-needs-no-reason"),
])  # fmt: skip
def test_replay_continues_warn_grants_as_logged(cli, tmp_path, policies, candidate, changed):
    status, out, err = cli("replay", str(policies(candidate)), str(warn_log(tmp_path)), "--json", "--no-cache")
    assert status == (1 if changed else 0), err
    report = json.loads(out)
    assert report["records"] == 3  # access records; the reason is not one
    examples = {rid for group in report["by_user"].values() for rid in group["examples"]}
    assert examples == set(changed)
    assert {r["to"] for r in report["reasons"]} == set(changed.values())


def test_text_report_calls_sites_by_their_display_names_json_keeps_the_keys(cli, log, policies):
    named = STRICTER.replace("facebook: {domains: [facebook.com]}",
                             'facebook: {domains: [facebook.com], name: "Facebook (Meta)"}')
    candidate = policies(named)
    status, out, _ = cli("replay", candidate, log)
    assert status == 1
    by_site = out.split("By site:", 1)[1].split("By user:", 1)[0]
    assert any(line.lstrip().startswith("Facebook (Meta)") for line in by_site.splitlines()), by_site
    assert not any(line.split()[:1] == ["facebook"] for line in by_site.splitlines()), by_site
    assert any(line.split()[:1] == ["x"] for line in by_site.splitlines()), "a site without a name keeps its key"
    _, out, _ = cli("replay", candidate, log, "--json")
    assert set(json.loads(out)["by_site"]) == {"facebook", "x"}


# -- writes decided on what they said they do (issue 21) ------------------------------

META = """
version: 1
sites:
  meta:
    domains: [meta.test]
    read_only_allow:
      - method: POST
        path: /api/graphql/
        operation: {name: "*Query", named_in: [header X-FB-Friendly-Name, form fb_api_req_friendly_name]}
roles:
  everyone: {members: [all], access: {meta: read-only}}
"""


def meta_log(tmp_path) -> Path:
    """What the proxy logged for zoe on meta: two reads (and their operation), a post, a read unnamed."""
    rows = [("m1", "CometNewsFeedPaginationQuery", "allow", "allowed"),
            ("m2", "ComposerStoryCreateMutation", "block", "read-only"),
            ("m3", "CometPhotoRootContentQuery", "allow", "allowed"),
            ("m4", None, "block", "read-only")]  # fmt: skip
    records = []
    for i, (rid, operation, decision, reason) in enumerate(rows):
        record = {"event": "access", "ts": datetime.fromisoformat(f"2026-11-02T09:0{i}:00+00:00"),
                  "request_id": rid, "user": "zoe", "roles": ["everyone"], "client_ip": "10.0.0.7",
                  "method": "POST", "scheme": "https", "host": "www.meta.test", "path": "/api/graphql/",
                  "site": "meta", "decision": decision, "reason": reason, "level": "read-only",
                  "rule": "roles.everyone.access.meta", "status": 200 if decision == "allow" else 403}
        if operation is not None:
            record["operation"] = operation
        records.append(record)
    return write_log(tmp_path / "meta.jsonl", records)


META_CANDIDATES = {
    "the-same-rules-change-nothing": (META, 0, []),
    "switched-off-blocks-the-reads-again": (META + "read_only_operations: {meta: off}\n", 2, ["m1", "m3"]),
    "a-narrower-name-blocks-the-read-outside-it": (META.replace('"*Query"', '"*PaginationQuery"'), 1, ["m3"]),
    "a-rule-on-the-path-alone-lets-the-post-through-too": (
        META.replace("        operation: {name: \"*Query\", named_in: [header X-FB-Friendly-Name, form "
                     "fb_api_req_friendly_name]}\n", ""), 2, ["m2", "m4"]),
}  # fmt: skip


@pytest.mark.parametrize("candidate, changes, examples", META_CANDIDATES.values(), ids=META_CANDIDATES.keys())
def test_replay_decides_again_on_the_logged_operation(cli, tmp_path, policies, candidate, changes, examples):
    status, out, err = cli("replay", policies(candidate), meta_log(tmp_path), "--json")
    report = json.loads(out)
    assert (status, report["changes"]) == (1 if changes else 0, changes), err
    assert report["by_site"].get("meta", {"examples": []})["examples"] == examples
