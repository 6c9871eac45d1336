"""Whose minutes a quota row holds: one person per login, named as the audit log names them.

A login is case-insensitive (directories match `ALICE` to alice): roles,
quota subjects and the audit record all use the case-folded name.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from support.clients import curl, write_htpasswd

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
timezone: UTC
sites:
  facebook:
    domains: [facebook.test]
  linkedin:
    domains: [linkedin.test]
directory:
  groups:
    pr: [Alice]
roles:
  pr:
    members: ["group:pr"]
    access:
      linkedin: full
  everyone:
    members: [all]
    access:
      linkedin: read-only
      facebook: {level: full, daily_minutes: 3}
unauthenticated: deny
unlisted: allow
"""


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def any_case_htpasswd(tmp_path_factory) -> Path:
    """A directory that signs alice in however she spells her login."""
    return write_htpasswd(tmp_path_factory.mktemp("auth") / "htpasswd", ["alice", "ALICE", "Alice", "bob"])


def rows(spec_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(spec_path) as db:
        return db.execute("SELECT subject, site FROM quota_minutes ORDER BY subject").fetchall()


def same_minute() -> None:
    if time.time() % 60 > 50:  # the requests below must share one minute
        time.sleep(60 - time.time() % 60 + 0.2)


SPELLINGS = ["alice", "ALICE", "Alice"]


def test_a_login_in_any_case_is_one_person_for_roles_quotas_and_the_audit_log(
    proxy_factory, any_case_htpasswd, policy, origin, tmp_path
):
    db = tmp_path / "quota.sqlite3"
    proxy = proxy_factory(policy=policy, state=f"sqlite:{db}", options={"proxyauth": f"@{any_case_htpasswd}"})
    same_minute()
    for login in SPELLINGS:
        # group pr lists "Alice": every spelling has role pr, so may post to linkedin
        assert curl(proxy, "http://linkedin.test/", user=login, method="POST", data=b"x").status == 200, login
        assert curl(proxy, "http://facebook.test/", user=login).status == 200, login
    assert rows(db) == [("user:alice", "facebook")], "one person, one quota minute"
    standing = curl(proxy, "http://accessgate.status/", user="ALICE", headers={"Accept": "application/json"})
    facebook = next(s for s in standing.json()["sites"] if s["site"] == "facebook")
    assert facebook["minutes_used"] == 1
    assert proxy.stop() == 0
    assert {r["user"] for r in proxy.audit_records()} == {"alice"}
