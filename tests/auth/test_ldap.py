"""Sign-in and groups against a real slapd: injection, canonical names, nesting, TLS, outages.

The directory (tests/support/slapd.py) holds:

    ou=people:      alice, bob, carol, müller, dup, dave (uid: dave and dave.alias), noone-in-groups
    ou=contractors: dup (a second entry with the same uid)
    ou=groups:      pr [alice]; marcom [pr]; all-staff [marcom]; sales [bob];
                    PR Team [carol]; cyc1 [cyc2, alice]; cyc2 [cyc1]
"""

from __future__ import annotations

import time

import pytest

from accessgate.auth.authenticator import Authenticator
from accessgate.auth.base import OK, REFUSED, UNAVAILABLE, UNKNOWN_USER
from accessgate.auth.directory import Directory, LdapMethod, LdapSettings, escape_filter_value, normalize_dn
from support.authfiles import basic_header
from support.slapd import slapd  # noqa: F401  (the fixture)

PW = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "müller": "mü-pw", "dup": "dup-pw",
      "dave": "dave-pw", "loner": "loner-pw"}


@pytest.fixture
def directory_data(slapd):
    for uid in ("alice", "bob", "carol", "müller", "loner"):
        slapd.add_user(uid, PW[uid])
    slapd.add_user("dup", PW["dup"])
    slapd.add_user("dup", PW["dup"], ou="contractors")
    slapd.add_user("dave", PW["dave"], aliases=("dave.alias",))
    g = slapd.group_dn
    slapd.add_group("pr", [slapd.user_dn("alice")])
    slapd.add_group("marcom", [g("pr")])
    slapd.add_group("all-staff", [g("marcom")])
    slapd.add_group("sales", [slapd.user_dn("bob")])
    slapd.add_group("PR Team", [slapd.user_dn("carol")])
    slapd.add_group("cyc1", [slapd.user_dn("alice")])
    slapd.add_group("cyc2", [g("cyc1")])
    slapd.set_members("cyc1", [g("cyc2"), slapd.user_dn("alice")])
    return slapd


def settings_for(server, **overrides) -> LdapSettings:
    values = dict(url=server.url, base_dn=server.suffix, bind_dn=server.reader_dn,
                  bind_password=server.reader_password, user_attribute="uid",
                  user_filter="(objectClass=inetOrgPerson)", timeout=2.0)
    values.update(overrides)
    return LdapSettings(**values)


@pytest.fixture
def directory(directory_data):
    return Directory(settings_for(directory_data))


# ---- sign-in ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "typed, password, outcome, user",
    [
        pytest.param("alice", PW["alice"], OK, "alice", id="right-password"),
        pytest.param("ALICE", PW["alice"], OK, "alice", id="typed-in-capitals-decided-as-stored"),
        pytest.param("Müller", PW["müller"], OK, "müller", id="utf8-name-found-and-canonical"),
        pytest.param("dave.alias", PW["dave"], OK, "dave", id="second-uid-value-decided-as-the-rdn"),
        # slapd's caseIgnoreMatch folds compatibility forms: the directory says this is alice.
        pytest.param("ａｌｉｃｅ", PW["alice"], OK, "alice", id="fullwidth-typed-decided-as-stored"),
        pytest.param("alice", "wrong", REFUSED, None, id="wrong-password"),
        pytest.param("alice", PW["bob"], REFUSED, None, id="another-users-password"),
        pytest.param("nobody", "x", UNKNOWN_USER, None, id="unknown-user"),
        pytest.param("dup", PW["dup"], UNKNOWN_USER, None, id="two-entries-same-name-refused"),
    ],
)
def test_sign_in_by_binding_as_the_one_entry(directory, typed, password, outcome, user):
    verdict = directory.authenticate(typed, password.encode())
    assert (verdict.outcome, verdict.user) == (outcome, user)


@pytest.mark.parametrize(
    "typed",
    [
        pytest.param("*", id="star"),
        pytest.param("ali*", id="prefix-wildcard"),
        pytest.param("*lice", id="suffix-wildcard"),
        pytest.param("alice)(uid=*", id="close-and-add-clause"),
        pytest.param("*)(|(uid=*", id="or-clause"),
        pytest.param("alice)(|(objectClass=*", id="or-objectclass"),
        pytest.param("\\2a", id="escaped-star-typed-literally"),
        pytest.param("ali\\2a", id="escaped-star-suffix"),
        pytest.param("alice\x00", id="nul-byte"),
        pytest.param("alice\\00", id="escaped-nul-typed-literally"),
        pytest.param("a" * 300, id="over-long"),
        pytest.param("alice\u00ad", id="soft-hyphen"),
        pytest.param("alice\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), id="replacement-char"),
    ],
)
def test_injection_attempts_with_alices_password_never_sign_in(directory, directory_data, typed):
    before = directory_data.log_text().count("BIND dn=\"uid=alice")
    verdict = directory.authenticate(typed, PW["alice"].encode())
    assert verdict.outcome == UNKNOWN_USER and verdict.user is None
    assert directory_data.log_text().count("BIND dn=\"uid=alice") == before  # no bind as alice was tried


def test_the_filter_the_server_receives_is_fully_escaped(directory, directory_data):
    directory.authenticate("ali*)(uid=*", b"x")
    filters = [line.split("filter=", 1)[1] for line in directory_data.log_text().splitlines()
               if "SRCH base=" in line and "uid=ali" in line]
    assert filters, "slapd logged no search"
    # slapd prints the assertion value it parsed: the star and parentheses arrived as data.
    assert filters[-1] == '"(&(objectClass=inetOrgPerson)(uid=ali\\2A\\29\\28uid=\\2A))"'


def test_a_non_utf8_password_is_a_wrong_password_not_a_crash(directory):
    assert directory.authenticate("alice", b"\xff\xfe\x00bad").outcome == REFUSED


def test_an_empty_password_is_refused_before_any_bind(directory, directory_data):
    before = directory_data.log_text().count("BIND dn=")
    verdict = directory.authenticate("alice", b"")
    assert (verdict.outcome, verdict.reason) == (REFUSED, "empty-password")
    assert directory_data.log_text().count("BIND dn=") == before  # not even the service account bound


def test_through_the_authenticator_the_decided_user_is_the_entry_name(directory):
    auth = Authenticator([LdapMethod(directory)])
    result = auth.check(basic_header("ALICE", PW["alice"]), "192.0.2.1")
    assert (result.outcome, result.user, result.method) == ("accepted", "alice", "ldap")
    again = auth.check(basic_header("ALICE", PW["alice"]), "192.0.2.1")
    assert (again.reason, again.user) == ("cached", "alice")
    assert auth.challenges == ('Basic realm="accessgate", charset="UTF-8"',)
    auth.close()


def test_a_changed_directory_password_applies_after_the_cache_ttl(directory, directory_data):
    auth = Authenticator([LdapMethod(directory)], cache_ttl=0.5)
    header = basic_header("bob", PW["bob"])
    assert auth.check(header).ok
    directory_data.set_password(directory_data.user_dn("bob"), "new-bob-pw")
    assert auth.check(header).reason == "cached"
    time.sleep(0.6)
    assert auth.check(header).outcome == "refused"
    assert auth.check(basic_header("bob", "new-bob-pw")).ok
    auth.close()


def test_escape_filter_value_escapes_every_byte_but_plain_ones():
    assert escape_filter_value("a.b-c_d@E9") == "a.b-c_d@E9"
    assert escape_filter_value("*()\\\x00 ü") == "\\2a\\28\\29\\5c\\00\\20\\c3\\bc"


# ---- groups -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["walk", "member_of"])
@pytest.mark.parametrize(
    "user, groups",
    [
        pytest.param("alice", {"pr", "marcom", "all-staff", "cyc1", "cyc2"}, id="nested-three-deep-and-a-cycle"),
        pytest.param("bob", {"sales"}, id="one-direct-group"),
        pytest.param("loner", set(), id="in-no-group"),
        pytest.param("carol", set(), id="cn-that-is-no-policy-name-left-out"),
    ],
)
def test_nested_groups(directory_data, mode, user, groups):
    directory = Directory(settings_for(directory_data, group_search=mode))
    assert directory.groups_of(user) == frozenset(groups)


def test_groups_of_an_unknown_or_ambiguous_user_are_none(directory):
    assert directory.groups_of("nobody") is None
    assert directory.groups_of("dup") is None
    assert directory.groups_of("*") is None


def test_depth_is_bounded(directory_data):
    directory = Directory(settings_for(directory_data, max_depth=1))
    assert directory.groups_of("alice") == frozenset({"pr", "cyc1"})


def test_group_map_by_dn_and_by_cn(directory_data):
    server = directory_data
    mapping = {"CN=PR Team, OU=Groups, DC=example, DC=test": "pr-team", "MARCOM": "marketing"}
    directory = Directory(settings_for(server, group_map=mapping))
    assert directory.groups_of("carol") == frozenset({"pr-team"})
    assert directory.groups_of("alice") == frozenset({"marketing"})  # unmapped groups are left out


def test_in_chain_search_asks_for_the_active_directory_matching_rule(directory_data):
    # OpenLDAP does not implement 1.2.840.113556.1.4.1941 (AD's LDAP_MATCHING_RULE_IN_CHAIN):
    # checked here are the filter (escaped DN, the rule's OID) and that slapd received an
    # extensible match it could not evaluate, not Active Directory's answer.
    directory = Directory(settings_for(directory_data, group_search="in_chain",
                                       group_filter="(objectClass=group)"))
    assert directory.in_chain_filter("CN=Smith\\, J*,OU=Staff,DC=corp") == (
        "(&(objectClass=group)(member:1.2.840.113556.1.4.1941:="
        "CN\\3dSmith\\5c\\2c\\20J\\2a\\2cOU\\3dStaff\\2cDC\\3dcorp))")
    assert directory.groups_of("alice") == frozenset()
    assert "(?=undefined))" in [l for l in directory_data.log_text().splitlines() if "SRCH base" in l][-1]


def test_normalize_dn_ignores_case_and_spaces():
    assert normalize_dn("CN=PR Team, OU=Groups,DC=Example") == "cn=pr team,ou=groups,dc=example"


# ---- TLS --------------------------------------------------------------------------------------

def test_ldaps_with_the_company_ca(directory_data):
    server = directory_data
    directory = Directory(settings_for(server, url=f"ldaps://localhost:{server.ldaps_port}", ca_file=str(server.ca_file)))
    assert directory.authenticate("alice", PW["alice"].encode()).user == "alice"
    assert directory.groups_of("bob") == frozenset({"sales"})


def test_starttls_with_the_company_ca(directory_data):
    server = directory_data
    directory = Directory(settings_for(server, start_tls=True, ca_file=str(server.ca_file)))
    assert directory.authenticate("alice", PW["alice"].encode()).user == "alice"
    assert "STARTTLS" in server.log_text()


@pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "starttls"])
def test_a_certificate_from_an_unknown_ca_is_refused(directory_data, start_tls):
    server = directory_data
    url = server.url if start_tls else f"ldaps://127.0.0.1:{server.ldaps_port}"
    directory = Directory(settings_for(server, url=url, start_tls=start_tls))  # system CAs only
    assert directory.authenticate("alice", PW["alice"].encode()).outcome == UNAVAILABLE


@pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "starttls"])
def test_a_certificate_for_another_host_name_is_refused(directory_data, start_tls):
    server = directory_data
    server.stop()
    server.wrong_name_cert()
    server.start()
    url = server.url if start_tls else f"ldaps://127.0.0.1:{server.ldaps_port}"
    directory = Directory(settings_for(server, url=url, start_tls=start_tls, ca_file=str(server.ca_file)))
    assert directory.authenticate("alice", PW["alice"].encode()).outcome == UNAVAILABLE


# ---- outages ------------------------------------------------------------------------------------

def test_a_stopped_directory_is_unavailable_not_a_wrong_password(directory, directory_data):
    directory_data.stop()
    started = time.monotonic()
    assert directory.authenticate("alice", PW["alice"].encode()).outcome == UNAVAILABLE
    assert time.monotonic() - started < 2.5
    directory_data.start()
    assert directory.authenticate("alice", PW["alice"].encode()).outcome == OK


def test_a_hung_directory_answers_unavailable_within_the_timeout(directory_data):
    directory = Directory(settings_for(directory_data, timeout=0.5))
    directory_data.pause()
    try:
        started = time.monotonic()
        assert directory.authenticate("alice", PW["alice"].encode()).outcome == UNAVAILABLE
        assert time.monotonic() - started < 4.0  # reads time out in whole seconds
    finally:
        directory_data.resume()


def test_a_wrong_service_password_is_unavailable_and_says_what_to_check(directory_data):
    from accessgate.auth.directory import DirectoryUnavailable

    directory = Directory(settings_for(directory_data, bind_password="nope"))
    with pytest.raises(DirectoryUnavailable, match="check bind_dn and bind_password_file"):
        directory.groups_of("alice")
    assert directory.authenticate("alice", PW["alice"].encode()).outcome == UNAVAILABLE


# ---- settings from the policy -------------------------------------------------------------------

def test_settings_from_policy_with_active_directory_defaults(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    settings = LdapSettings.from_policy({"url": "ldaps://dc1.corp.example", "kind": "ad",
                                         "base_dn": "DC=corp,DC=example", "bind_dn": "CN=svc,DC=corp,DC=example",
                                         "bind_password_file": "pw", "cache_seconds": 60,
                                         "group_map": {"CN=PR,OU=Groups,DC=corp,DC=example": "pr"}},
                                        base_dir=tmp_path)
    assert (settings.user_attribute, settings.group_search, settings.group_filter) == (
        "sAMAccountName", "in_chain", "(objectClass=group)")
    assert (settings.port, settings.ldaps, settings.cache_seconds) == (636, True, 60.0)
    assert settings.bind_password == "s3cret" and "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    "values, message",
    [
        pytest.param({"base_dn": "dc=x"}, "needs 'url'", id="no-url"),
        pytest.param({"url": "http://x", "base_dn": "dc=x"}, "not an LDAP URL", id="http-url"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "kind": "novell"}, "use 'ad'", id="unknown-kind"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "bind_dn": "cn=a"}, "set bind_password_file",
                     id="bind-dn-without-password"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "bind_password_file": "/nonexistent/pw"},
                     "cannot be read", id="unreadable-password-file"),
        pytest.param({"url": "ldaps://x", "base_dn": "dc=x", "start_tls": True}, "ldaps:// URL is TLS already",
                     id="starttls-on-ldaps"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "user_attribute": "uid)(x"}, "not an attribute name",
                     id="attribute-injection"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "user_filter": "objectClass=*"}, "in parentheses",
                     id="filter-without-parentheses"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "group_map": {"CN=A": "not a name"}},
                     "not a policy group name", id="map-to-invalid-name"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "on_outage": "open"}, "use 'closed'", id="outage-rule"),
        pytest.param({"url": "ldap://x", "base_dn": "dc=x", "serverr": "x"}, "unknown key 'serverr'", id="unknown-key"),
    ],
)
def test_bad_settings_say_what_to_fix(values, message):
    with pytest.raises(ValueError, match=message):
        LdapSettings.from_policy(values)
