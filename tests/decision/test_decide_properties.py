"""Properties of decide() that must hold for every policy and request (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from accessgate.decision import Identity, Request, decide, plan, rules, site_for
from accessgate.decision.plan import index_of
from accessgate.decision.sites import host_info
from accessgate.errors import InvalidHost
from accessgate.policy.hosts import normalize_host
from accessgate.policy.loader import parse_policy
from accessgate.policy.model import Grant, Level, Role
from accessgate.decision.quota import MemoryLedger
from accessgate.policy.windows import parse_window

POLICY_TEXT = """
version: 1
timezone: Europe/Berlin
sites:
  facebook: {domains: [facebook.com, fbcdn.net], read_only_allow: [{method: POST, path: "/login/*"}]}
  linkedin: {domains: [linkedin.com]}
  x: {domains: [x.com]}
directory:
  groups: {pr: [alice], sales: [carol]}
roles:
  marcom: {members: ["group:pr"], access: {"*": full}}
  sales: {members: ["group:sales"], access: {linkedin: full, x: {level: full, windows: ["mon-fri 09:00-17:00"]}}}
  everyone:
    members: [all]
    access:
      linkedin: read-only
      facebook: {level: full, windows: ["mon-fri 12:00-13:00"], daily_minutes: 20}
      "*": deny
unauthenticated: deny
unlisted: allow
"""
POLICY = parse_policy(POLICY_TEXT, "<properties>")

users = st.sampled_from([None, "alice", "carol", "erin"])
hosts = st.sampled_from(
    ["facebook.com", "www.facebook.com", "static.fbcdn.net", "linkedin.com", "x.com", "example.org"]
)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
paths = st.sampled_from(["/", "/login/x", "/feed?x=1", "/compose"])
times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(timezone.utc)
)
grants = st.builds(
    Grant,
    level=st.sampled_from(list(Level)),
    windows=st.sampled_from([(), (parse_window("mon-fri 12:00-13:00"),), (parse_window("sat,sun 00:00-24:00"),)]),
    daily_minutes=st.sampled_from([None, 1, 20]),
    rule=st.just("roles.extra.access.facebook"),
)


def spell(host: str, upper: bool, dot: bool, port: int | None) -> str:
    spelled = host.upper() if upper else host
    spelled += "." if dot else ""
    return spelled + (f":{port}" if port is not None else "")


@given(users, hosts, methods, paths, times, st.booleans(), st.booleans(), st.one_of(st.none(), st.integers(1, 65535)))
def test_a_host_decides_the_same_in_every_spelling(user, host, method, path, now, upper, dot, port):
    identity = Identity(user=user)
    plain = decide(Request(method, (host,), path), identity, POLICY, now)
    spelled = decide(Request(method, (spell(host, upper, dot, port),), path), identity, POLICY, now)
    assert (spelled.decision, spelled.reason, spelled.site, spelled.rule) == (
        plain.decision, plain.reason, plain.site, plain.rule
    )


def _with_extra_role(grant: Grant, site: str):
    extra = Role(name="extra", members=POLICY.roles["everyone"].members, access=MappingProxyType({site: grant}))
    return replace(POLICY, roles=MappingProxyType({**POLICY.roles, "extra": extra}))


STRICTNESS = {"block": 0, "allow": 1}


@settings(max_examples=300)
@given(users.filter(lambda u: u is not None), hosts, methods, paths, times, grants,
       st.sampled_from(["facebook", "linkedin", "x"]), st.integers(0, 25))
def test_adding_a_grant_never_makes_a_decision_stricter(user, host, method, path, now, grant, site, used):
    ledger = MemoryLedger()
    identity = Identity(user=user)
    request = Request(method, (host,), path)
    before = decide(request, identity, POLICY, now, ledger)
    after = decide(request, identity, _with_extra_role(grant, site), now, ledger)
    assert STRICTNESS[after.decision] >= STRICTNESS[before.decision], (before, after)
    if before.allowed and before.level is not None:
        # An allowed request keeps at least the level it had.
        assert after.level is not None and after.level.rank >= before.level.rank, (before, after)


@given(users, hosts, methods, paths, times)
def test_decide_is_deterministic(user, host, method, path, now):
    request, identity = Request(method, (host,), path), Identity(user=user)
    assert decide(request, identity, POLICY, now) == decide(request, identity, POLICY, now)


@given(users, hosts, hosts, methods, times)
def test_more_names_never_loosen_a_decision(user, first, second, method, now):
    identity = Identity(user=user)
    one = decide(Request(method, (first,)), identity, POLICY, now)
    both = decide(Request(method, (first, second)), identity, POLICY, now)
    assert STRICTNESS[both.decision] <= STRICTNESS[one.decision]


def _forget_everything(policy) -> None:
    index = index_of(policy)
    index.forget()
    index.hosts.clear()
    index.windows_now = (None, {})


spellings = st.builds(
    lambda host, upper, dot, prefix: (prefix + (host.upper() if upper else host) + dot),
    hosts, st.booleans(), st.sampled_from(["", ".", "..", "\u3002", ".\u3002", "\uff0e.", ":443", "..:443"]),
    st.sampled_from(["", "www.", "api.", "-x.", "x-.", "0x1.", "ｗｗｗ.", ".", "a..", "_x.", "x_.", "a.-.", "1.2.", "a-b.c.", "x" * 64 + "."]),
)


@settings(max_examples=200)
@given(st.lists(st.tuples(users, spellings, methods, paths, times), min_size=1, max_size=30))
def test_what_the_caches_remember_never_changes_an_answer(requests):
    # One policy decides a whole sequence with its caches (plans shared by
    # role set, site plans reused at other hosts, window state per minute,
    # remembered allows); the answer for each must be what an empty cache gives.
    warm = parse_policy(POLICY_TEXT, "<warm>")
    cold = parse_policy(POLICY_TEXT, "<cold>")
    for user, host, method, path, now in requests:
        request = Request(method, (host,), path)
        identity = Identity(user=user)
        _forget_everything(cold)
        assert decide(request, identity, warm, now, MemoryLedger()) == decide(
            request, identity, cold, now, MemoryLedger()
        )


@given(st.text(alphabet="abcxyz019-_.:[]ＡＢ", max_size=30) | spellings)
def test_the_engines_short_way_to_a_hosts_site_is_the_long_way(raw):
    index = index_of(POLICY)
    info = host_info(raw, index.domains, index.naming, POLICY)
    try:
        host = normalize_host(raw)
    except InvalidHost:
        assert info.invalid is not None
        return
    assert (info.name, info.site, info.invalid) == (host.name, site_for(host, POLICY), None)


def test_a_scan_of_many_hosts_and_clients_keeps_every_cache_bounded(monkeypatch):
    # An attacker (or a crawler) can name endless hosts and, with `net:`
    # roles, come from endless addresses; the caches must stay bounded and
    # the answers the same.
    import ipaddress

    monkeypatch.setattr(plan, "_CACHE_SIZE", 40)
    text = POLICY_TEXT.replace('members: [all]', 'members: [all, "net:10.0.0.0/8"]')
    scanned = parse_policy(text, "<scanned>")
    fresh = parse_policy(text, "<fresh>")
    now = datetime(2026, 11, 23, 11, 30, tzinfo=timezone.utc)
    index = index_of(scanned)
    for i in range(600):
        request = Request("GET", (f"h{i}.facebook.com" if i % 3 else f"h{i}.example.org",), "/")
        identity = Identity(user=None if i % 2 else "erin", client_ip=ipaddress.IPv4Address(0x0A000000 + i))
        got = decide(request, identity, scanned, now)
        _forget_everything(fresh)
        assert got == decide(request, identity, fresh, now)
        assert index.planned <= 40
        assert len(index.hosts) <= 40 and len(index.identities) <= 40 + len(index.directory_roles)
        assert sum(len(r.plans) for r in index.rolesets.values()) <= 40


def test_a_site_no_role_names_is_planned_the_short_way_as_the_long_way():
    # Sites none of a client's roles names are planned from a template per
    # role set; it must give exactly what planning grant by grant gives.
    from accessgate.decision.types import placed
    from accessgate.policy.loader import load_policy

    for policy in (POLICY, load_policy("policy/example.yaml")):
        index = index_of(policy)
        users = [None, "nobody-in-particular", *policy.user_groups, *index.by_user]
        checked = 0
        for user in users:
            roleset = index.roleset_of(Identity(user=user), (user, frozenset(), None), policy)
            for site in policy.sites:
                naming = index.naming.get(site)
                if roleset.unnamed is None or not (naming is None or naming.isdisjoint(roleset.roles)):
                    continue
                long_way = plan._site_plan(roleset, site, f"www.{site}.test", index)
                assert placed(roleset.unnamed, site, f"www.{site}.test", index.titles[site]) == long_way
                checked += 1
        assert checked > 0


def test_refusals_kept_per_host_are_few_whatever_methods_a_client_invents():
    # Read-only refusals are remembered per host and role set; the method is
    # the client's to choose, so only a handful may be kept, and the answers
    # past that handful are the same.
    policy = parse_policy(POLICY_TEXT, "<refusals>")
    fresh = parse_policy(POLICY_TEXT, "<fresh>")
    now = datetime(2026, 11, 23, 11, 30, tzinfo=timezone.utc)
    identity = Identity(user="erin")  # everyone: linkedin read-only
    for i in range(50):
        request = Request(f"INVENTED{i}", ("linkedin.com",), "/")
        got = decide(request, identity, policy, now)
        _forget_everything(fresh)
        assert got == decide(request, identity, fresh, now)
        assert got.reason == "read-only" and f"INVENTED{i} requests are writes" in got.message
    roleset = index_of(policy).identities[("erin", frozenset(), None)]
    assert 0 < len(roleset.plans["linkedin.com"].refusals) <= rules._REFUSALS_KEPT
