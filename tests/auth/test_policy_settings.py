"""The policy's directory.ldap, as the loader reads it, is what LdapSettings takes."""

from __future__ import annotations

import pytest

from accessgate.auth.ldapsettings import LDAP_SETTINGS_KEYS, LdapSettings
from accessgate.policy.loader import load_policy
from accessgate.policy.validate import LDAP_KEYS

FULL = """\
version: 1
directory:
  ldap:
    url: ldap://127.0.0.1:3389
    kind: ad
    base_dn: DC=corp,DC=example
    group_base_dn: OU=Groups,DC=corp,DC=example
    bind_dn: CN=svc,DC=corp,DC=example
    bind_password_file: ldap-password
    user_attribute: userPrincipalName
    user_filter: (objectClass=user)
    group_search: member_of
    group_filter: (objectClass=group)
    group_attribute: member
    group_map:
      CN=PR,OU=Groups,DC=corp,DC=example: pr
      Sales Team: sales
    max_depth: 4
    start_tls: true
    ca_file: corp-ca.pem
    timeout_seconds: 3
    cache_seconds: 60
    stale_seconds: 600
    on_outage: last
    first_lookup_seconds: 1
roles:
  staff: {members: ["group:pr"]}
"""


def test_the_loader_reads_every_key_the_settings_know():
    assert set(LDAP_KEYS) == set(LDAP_SETTINGS_KEYS)


def test_a_full_directory_ldap_becomes_settings(tmp_path):
    (tmp_path / "ldap-password").write_text("s3cret\n")
    path = tmp_path / "policy.yaml"
    path.write_text(FULL)
    policy = load_policy(path)
    s = LdapSettings.from_policy(policy.ldap, base_dir=tmp_path)
    assert (s.user_attribute, s.group_search, s.max_depth, s.start_tls, s.on_outage) == (
        "userPrincipalName", "member_of", 4, True, "last")
    assert (s.timeout, s.cache_seconds, s.stale_seconds, s.first_lookup_seconds) == (3, 60, 600, 1)
    assert dict(s.group_map) == {"CN=PR,OU=Groups,DC=corp,DC=example": "pr", "Sales Team": "sales"}
    assert s.bind_password == "s3cret" and "s3cret" not in repr(s)
    assert s.ca_file == str(tmp_path / "corp-ca.pem")


def test_a_missing_password_file_is_named_when_the_proxy_builds_the_settings(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(FULL)
    with pytest.raises(ValueError, match="bind_password_file .* cannot be read"):
        LdapSettings.from_policy(load_policy(path).ldap, base_dir=tmp_path)
