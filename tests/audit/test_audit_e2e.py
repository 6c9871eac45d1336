"""The auditors' tools over a log written by a real mitmdump + accessgate run."""

from __future__ import annotations

import json

import pytest

from support.clients import curl
from support.policies import policy_text

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# (user, method, url) and what the proxy decides under support.policies.
TRAFFIC = [
    ("alice", "GET", "http://www.facebook.test/", "allow"),
    ("bob", "GET", "http://www.facebook.test/", "block"),
    ("bob", "GET", "http://www.linkedin.test/in/bob", "allow"),
    ("bob", "POST", "http://www.linkedin.test/post", "block"),
    ("carol", "GET", "http://intranet.example.org/", "allow"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, mitm_confdir, session_origin, htpasswd):
    """One proxy run; returns (policy path, audit log path) after a clean stop."""
    from support.proxy import start_proxy

    work = tmp_path_factory.mktemp("audit-e2e")
    policy = work / "policy.yaml"
    policy.write_text(policy_text())
    proxy = start_proxy(
        policy=policy, confdir=mitm_confdir, origin=session_origin, workdir=work / "proxy",
        options={"proxyauth": f"@{htpasswd}"},
    )  # fmt: skip
    try:
        for user, method, url, expected in TRAFFIC:
            got = curl(proxy, url, user=user, method=method)
            assert (got.status == 403) == (expected == "block"), (user, url, got.status, got.stderr)
    finally:
        assert proxy.stop() == 0
    return policy, proxy.audit_path


def test_verify_a_real_log(cli, run):
    _, log = run
    status, out, _ = cli("audit", "verify", log)
    assert status == 0, out
    assert out.splitlines()[-1].startswith("OK: ")


def test_query_a_real_log(cli, run):
    _, log = run
    status, out, _ = cli("audit", "query", log, "--event", "access", "--format", "jsonl")
    got = [(r["user"], r["method"], r["host"], r["decision"]) for r in map(json.loads, out.splitlines())]
    assert status == 0
    assert got == [(u, m, url.split("/")[2], d) for u, m, url, d in TRAFFIC]
    status, out, _ = cli("audit", "query", log, "--user", "bob", "--decision", "block", "--format", "jsonl")
    assert [json.loads(line)["reason"] for line in out.splitlines()] == ["denied", "read-only"]


def test_every_field_the_proxy_wrote_reads_back_through_the_tools(cli, run):
    _, log = run
    written = [json.loads(line) for line in log.read_bytes().splitlines()]
    status, out, _ = cli("audit", "query", log, "--event", "all", "--format", "jsonl")
    selected = {row["seq"]: row for row in map(json.loads, out.splitlines())}
    assert status == 0 and {r["event"] for r in written} == {"policy_loaded", "access"}
    for record in written:
        assert {key: selected[record["seq"]].get(key) for key in record} == record


def test_replay_under_the_same_policy_changes_nothing(cli, run):
    policy, log = run
    status, out, _ = cli("replay", policy, log)
    assert status == 0, out
    assert "Replayed 5 access records" in out


def test_replay_under_a_stricter_policy(cli, run, tmp_path):
    policy, log = run
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(policy.read_text().replace('      "*": full\n', '      linkedin: full\n', 1))
    status, out, _ = cli("replay", stricter, log, "--json")
    report = json.loads(out)
    assert status == 1
    assert (report["allow_to_block"], report["block_to_allow"]) == (1, 0)
    assert list(report["by_user"]) == ["alice"] and list(report["by_site"]) == ["facebook"]


def test_report_on_a_real_log(cli, run, tmp_path):
    _, log = run
    status, out, _ = cli("audit", "report", log, "--since", "1d", "--html", tmp_path / "r.html")
    assert status == 0
    assert out.splitlines()[1].startswith("5 requests: 3 allowed, 2 blocked; 1 to unlisted hosts")
