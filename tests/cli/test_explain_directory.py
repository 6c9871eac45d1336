"""`accessgate explain --user` asks the policy's directory for the user's groups, as the proxy does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accessgate.cli import main
from support.slapd import running_slapd


def policy_for(url: str, server, folder: Path) -> str:
    (folder / "ldap-password").write_text(server.reader_password)
    path = folder / "policy.yaml"
    path.write_text(f"""\
version: 1
timezone: UTC
sites:
  facebook: {{domains: [facebook.com]}}
directory:
  groups:
    contractors: [alice]
  ldap:
    url: {url}
    base_dn: {server.suffix}
    bind_dn: {server.reader_dn}
    bind_password_file: ldap-password
    timeout_seconds: 1
roles:
  marcom:
    members: ["group:marketing"]
    access: {{facebook: full}}
  everyone:
    members: [all]
    access: {{facebook: deny}}
unauthenticated: deny
unlisted: allow
""")
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_slapd(tmp_path_factory.mktemp("slapd")) as s:
        s.add_user("alice", "pw")
        s.add_group("pr", [s.user_dn("alice")])
        s.add_group("marketing", [s.group_dn("pr")])
        yield s


def explain(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(["explain", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_groups_from_the_directory_give_their_roles_and_say_so(capsys, server, tmp_path):
    code, data, _ = explain(capsys, policy_for(server.url, server, tmp_path), "--url", "https://facebook.com/",
                            "--user", "ALICE")
    assert code == 0
    assert (data["decision"], data["role"]) == ("allow", "marcom")
    assert data["groups"] == [{"name": "contractors", "sources": ["yaml"]},
                              {"name": "marketing", "sources": ["ldap"]},
                              {"name": "pr", "sources": ["ldap"]}]
    assert data["directory"] == f"{server.url}: 2 groups"


def test_no_directory_decides_with_the_policys_groups_only(capsys, server, tmp_path):
    code, data, _ = explain(capsys, policy_for(server.url, server, tmp_path), "--url", "https://facebook.com/",
                            "--user", "alice", "--no-directory")
    assert (code, data["decision"], data["role"]) == (0, "block", "everyone")
    assert data["groups"] == [{"name": "contractors", "sources": ["yaml"]}]
    assert data["directory"] == "not asked (--no-directory)"


def test_a_directory_that_does_not_answer_is_a_warning(capsys, server, tmp_path):
    from support.processes import free_port

    code, data, err = explain(capsys, policy_for(f"ldap://127.0.0.1:{free_port()}", server, tmp_path),
                              "--url", "https://facebook.com/", "--user", "alice")
    assert (code, data["decision"]) == (0, "block")
    assert data["directory"].startswith("unavailable (cannot reach 127.0.0.1:")
    assert "deciding with the policy's own groups only" in err


def test_the_text_form_lists_groups_with_their_sources(capsys, server, tmp_path):
    assert main(["explain", policy_for(server.url, server, tmp_path), "--url", "https://facebook.com/",
                 "--user", "alice"]) == 0
    out = capsys.readouterr().out
    assert "groups    contractors (yaml), marketing (ldap), pr (ldap)" in out
