"""Whose minutes a quota row holds: one person per login, named as the audit log names them.

- A login is case-insensitive (directories match `ALICE` to alice): roles,
  quota subjects and the audit record all use the case-folded name.
- With `accessgate_pseudonymize_key`, the quota store keeps the audit log's
  pseudonym, never the name; a join of the two identifies no one without
  the key.  The key file must be private to the proxy.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from accessgate.audit.pseudonym import pseudonymize, read_key
from support.clients import curl, write_htpasswd
from support.policies import QUOTA_POLICY
from support.proxy import ProxyFailed

pytestmark = pytest.mark.e2e

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(QUOTA_POLICY)
    return path


@pytest.fixture(scope="module")
def any_case_htpasswd(tmp_path_factory) -> Path:
    """A directory that signs alice in however she spells her login."""
    return write_htpasswd(tmp_path_factory.mktemp("auth") / "htpasswd", ["alice", "ALICE", "Alice", "bob"])


def key_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(KEY)
    path.chmod(mode)
    return path


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


def test_with_pseudonyms_the_quota_store_names_no_one(proxy_factory, any_case_htpasswd, policy, origin, tmp_path):
    db = tmp_path / "quota.sqlite3"
    key = key_file(tmp_path, 0o600)
    proxy = proxy_factory(
        policy=policy, state=f"sqlite:{db}",
        options={"proxyauth": f"@{any_case_htpasswd}", "accessgate_pseudonymize_key": str(key)},
    )
    same_minute()
    assert curl(proxy, "http://facebook.test/", user="alice").status == 200
    assert curl(proxy, "http://facebook.test/", user="bob").status == 200
    assert proxy.stop() == 0
    logged = {r["user"] for r in proxy.audit_records()}
    assert logged == {pseudonymize(KEY, "alice"), pseudonymize(KEY, "bob")}
    # The store holds the same pseudonyms as the log, and no name anywhere in its file.
    assert {subject for subject, _ in rows(db)} == {f"user:{p}" for p in logged}
    for path in db.parent.glob("quota.sqlite3*"):
        data = path.read_bytes()
        assert b"alice" not in data and b"bob" not in data, path


@pytest.mark.parametrize("mode, starts", [(0o600, True), (0o640, True), (0o644, False), (0o666, False),
                                          (0o604, False), (0o660, False)],
                         ids=["owner-only", "group-may-read", "world-readable", "world-writable",
                              "other-may-read", "group-may-write"])
def test_the_proxy_refuses_a_key_file_others_can_read(proxy_factory, policy, tmp_path, mode, starts):
    key = key_file(tmp_path, mode)
    options = {"accessgate_pseudonymize_key": str(key)}
    if starts:
        assert proxy_factory(policy=policy, options=options, metrics=False).alive()
        return
    with pytest.raises(ProxyFailed) as failed:
        proxy_factory(policy=policy, options=options, metrics=False)
    assert "exited with 1" in str(failed.value)
    assert f"chmod 600 {key}" in str(failed.value)


def test_the_auditors_tools_warn_loudly_about_a_key_file_others_can_read(tmp_path, capsys):
    key = key_file(tmp_path, 0o644)
    assert read_key(key) == KEY
    assert "WARNING" in capsys.readouterr().err
    key.chmod(0o600)
    assert read_key(key) == KEY
    assert capsys.readouterr().err == ""
