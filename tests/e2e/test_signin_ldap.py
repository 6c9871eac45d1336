"""accessgate_auth=ldap and directory groups through a real mitmdump against a real slapd.

Users sign in by binding as their own entry; nested groupOfNames give
roles; the audit record's user is always the entry's name; injection
attempts, empty and wrong passwords get 407 and never a bind as someone
else; a group change shows after the cache time; an outage keeps known
users' groups for the stale time, then the closed rule drops them, and
the metrics say so.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from support.authfiles import basic_header
from support.clients import curl
from support.proxy import start_proxy
from support.slapd import running_slapd

PW = {"alice": "alice-pw", "bob": "bob-pw", "dave": "dave-pw", "carol": "carol-pw"}
CACHE, STALE = 2, 3  # seconds: directory groups refreshed after 2 s, kept 3 s more in an outage


def seed(server) -> None:
    for uid in ("alice", "bob", "carol"):
        server.add_user(uid, PW[uid])
    server.add_user("dave", PW["dave"], aliases=("dave.alias",))
    server.add_group("pr", [server.user_dn("alice"), server.user_dn("carol")])
    server.add_group("marketing", [server.group_dn("pr")])  # alice and carol through pr: nested


def policy_for(server, folder: Path) -> Path:
    (folder / "ldap-password").write_text(server.reader_password + "\n")
    path = folder / "policy.yaml"
    path.write_text(f"""\
version: 1
timezone: UTC
sites:
  facebook: {{domains: [facebook.test]}}
  linkedin: {{domains: [linkedin.test]}}
directory:
  groups:
    contractors: [bob]
  ldap:
    url: {server.url}
    kind: openldap
    base_dn: {server.suffix}
    group_base_dn: ou=groups,{server.suffix}
    bind_dn: {server.reader_dn}
    bind_password_file: ldap-password
    user_filter: (objectClass=inetOrgPerson)
    timeout_seconds: 1
    cache_seconds: {CACHE}
    stale_seconds: {STALE}
    first_lookup_seconds: 2
roles:
  marcom:
    members: ["group:marketing"]
    access: {{"*": full}}
  contractors:
    members: ["group:contractors"]
    access: {{linkedin: full}}
  everyone:
    members: [all]
    access: {{linkedin: read-only, "*": deny}}
unauthenticated: deny
unlisted: allow
""")
    return path


@pytest.fixture(scope="module")
def ldap_server(tmp_path_factory):
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        seed(server)
        yield server


@pytest.fixture(scope="module")
def proxy(ldap_server, mitm_confdir, session_origin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ldap-policy")
    p = start_proxy(policy=policy_for(ldap_server, folder), confdir=mitm_confdir, origin=session_origin,
                    workdir=folder / "proxy", options={"accessgate_auth": "ldap"})
    yield p
    p.stop()


_next_address = iter(range(10, 250))


def elsewhere() -> list[str]:
    """curl arguments for a loopback address of its own: failures are limited per address."""
    return ["--interface", f"127.0.0.{next(_next_address)}"]


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def last_record(proxy, path: str) -> dict:
    records = proxy.wait_audit(lambda rs: any(r["path"] == path for r in rs))
    return [r for r in records if r["path"] == path][-1]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_nested_directory_group_gives_its_role(proxy, origin, scheme):
    result = curl(proxy, f"{scheme}://www.facebook.test/nested-{scheme}", user="alice", password=PW["alice"])
    assert result.status == 200, result.body
    record = last_record(proxy, f"/nested-{scheme}")
    assert (record["user"], record["role"]) == ("alice", "marcom")


def test_directory_and_policy_groups_add_up(proxy, origin):
    # bob is in no directory group; the policy's own contractors group gives him linkedin.
    assert curl(proxy, "http://www.linkedin.test/post", user="bob", password=PW["bob"], method="POST").status == 200
    assert curl(proxy, "http://www.facebook.test/bob", user="bob", password=PW["bob"]).status == 403


@pytest.mark.parametrize(
    "user, groups",
    [
        pytest.param("alice", [{"name": "marketing", "sources": ["ldap"]}, {"name": "pr", "sources": ["ldap"]}],
                     id="directory-groups"),
        pytest.param("bob", [{"name": "contractors", "sources": ["yaml"]}], id="policy-groups"),
    ],
)
def test_the_status_page_shows_where_each_group_came_from(proxy, user, groups):
    result = curl(proxy, "http://accessgate.status/", user=user, password=PW[user],
                  headers={"Accept": "application/json"})
    assert result.status == 200
    assert (result.json()["user"], result.json()["groups"]) == (user, groups)


@pytest.mark.parametrize(
    "typed, canonical",
    [
        pytest.param("ALICE", "alice", id="typed-in-capitals"),
        pytest.param("ａｌｉｃｅ", "alice", id="fullwidth-that-slapd-folds"),
        pytest.param("dave.alias", "dave", id="a-second-uid-value"),
    ],
)
def test_the_decided_user_is_the_entrys_name(proxy, origin, typed, canonical):
    password = PW[canonical]
    path = f"/canonical-{canonical}-{abs(hash(typed))}"
    result = curl(proxy, f"http://www.linkedin.test{path}", headers={"Proxy-Authorization": basic_header(typed, password)})
    assert result.status == 200
    assert last_record(proxy, path)["user"] == canonical


INJECTIONS = [
    pytest.param(b"*", id="star"),
    pytest.param(b"ali*", id="prefix-wildcard"),
    pytest.param(b"alice)(uid=*", id="close-and-add-clause"),
    pytest.param(b"*)(|(uid=*", id="or-clause"),
    pytest.param(b"\\2a", id="escaped-star-typed"),
    pytest.param(b"alice\x00", id="nul-byte"),
    pytest.param(b"alice\\00", id="escaped-nul-typed"),
    pytest.param(b"a" * 300, id="over-long"),
    pytest.param(b"al\xffice", id="not-utf-8"),
]


@pytest.mark.parametrize("typed", INJECTIONS)
def test_injection_attempts_with_alices_password_get_407_and_no_bind_as_alice(proxy, origin, ldap_server, typed):
    binds = ldap_server.log_text().count('BIND dn="uid=alice')
    header = basic_header(typed, PW["alice"])
    result = curl(proxy, "http://www.facebook.test/injected", headers={"Proxy-Authorization": header}, extra=elsewhere())
    assert result.status == 407
    assert ldap_server.log_text().count('BIND dn="uid=alice') == binds
    assert not [r for r in origin.requests if r.path == "/injected"]


@pytest.mark.parametrize("password", [pytest.param("", id="empty"), pytest.param("wrong", id="wrong"),
                                      pytest.param(PW["bob"], id="another-users")])
def test_empty_and_wrong_passwords_get_407(proxy, origin, ldap_server, password):
    binds = ldap_server.log_text().count("BIND dn=")
    result = curl(proxy, "http://www.facebook.test/pw", user="carol", password=password, extra=elsewhere())
    assert result.status == 407
    assert result.headers["proxy-authenticate"] == 'Basic realm="accessgate", charset="UTF-8"'
    if not password:
        assert ldap_server.log_text().count("BIND dn=") == binds  # refused before any bind


def test_the_credentials_reach_neither_the_origin_nor_any_log(proxy, origin):
    assert curl(proxy, "http://www.linkedin.test/secret", user="carol", password=PW["carol"]).status == 200
    assert curl(proxy, "https://www.linkedin.test/secret2", user="carol", password=PW["carol"]).status == 200
    assert [s.header("proxy-authorization") for s in origin.wait_for(2)] == [None, None]
    last_record(proxy, "/secret2")
    header = basic_header("carol", PW["carol"]).split()[1]
    for text in (proxy.audit_path.read_text(), proxy.output()):
        assert PW["carol"] not in text and header not in text


def test_the_directory_metrics_are_exported(proxy, origin):
    assert curl(proxy, "http://www.linkedin.test/m", user="alice", password=PW["alice"]).status == 200
    text = proxy.metrics()
    assert metric(text, "accessgate_directory_up") == 1.0
    assert metric(text, "accessgate_directory_lookups_total", result="ok") >= 1
    assert metric(text, "accessgate_signin_total", method="ldap", result="accepted") >= 1
    assert 'user="' not in text and "alice" not in text  # labels are never users


# ---- changes and outages: a directory of their own ---------------------------------------------

@pytest.fixture
def own(mitm_confdir, origin, tmp_path):
    with running_slapd(tmp_path / "slapd") as server:
        seed(server)
        proxy = start_proxy(policy=policy_for(server, tmp_path), confdir=mitm_confdir, origin=origin,
                            workdir=tmp_path / "proxy", options={"accessgate_auth": "ldap"})
        try:
            yield server, proxy
        finally:
            proxy.stop()


def facebook(proxy, user: str = "alice") -> int:
    return curl(proxy, "http://www.facebook.test/", user=user, password=PW[user]).status


def wait_for(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.25)
    return time.monotonic() - started


def test_a_group_change_shows_after_the_cache_time(own):
    server, proxy = own
    assert facebook(proxy) == 200
    server.set_members("pr", [server.user_dn("carol")])  # alice leaves pr, and so marketing
    wait_for(lambda: facebook(proxy) == 403, CACHE + 4, "alice kept marcom after the cache time")
    server.set_members("pr", [server.user_dn("carol"), server.user_dn("alice")])
    wait_for(lambda: facebook(proxy) == 200, CACHE + 4, "alice did not get marcom back")


def test_an_outage_keeps_known_groups_for_the_stale_time_then_closes(own):
    server, proxy = own
    assert facebook(proxy) == 200  # alice's groups are known, her password cached
    server.stop()
    stopped = time.monotonic()
    # Within cache + stale time she keeps marcom; no request waits for the dead server.
    while time.monotonic() - stopped < CACHE + STALE - 1.5:
        started = time.monotonic()
        assert facebook(proxy) == 200
        assert time.monotonic() - started < 0.5
        time.sleep(0.3)
    wait_for(lambda: facebook(proxy) == 403, 4, "alice kept directory groups past the stale time")
    # The closed rule drops only the directory's groups: everyone's linkedin stays.
    assert curl(proxy, "http://www.linkedin.test/", user="alice", password=PW["alice"]).status == 200
    text = proxy.metrics()
    assert metric(text, "accessgate_directory_up") == 0.0
    assert metric(text, "accessgate_directory_users", state="expired") >= 1
    assert metric(text, "accessgate_directory_lookups_total", result="error") >= 1
    # A password not yet verified cannot be checked: 503, not 407 (no new password prompt).
    assert facebook(proxy, "bob") == 503
    server.start()
    wait_for(lambda: facebook(proxy) == 200, 12, "alice did not get her groups back after the restart")
    assert metric(proxy.metrics(), "accessgate_directory_up") == 1.0
    assert facebook(proxy, "bob") == 403  # bob signs in again; facebook is still not his
