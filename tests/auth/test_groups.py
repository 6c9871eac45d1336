"""Directory groups through the resolver, against a real slapd: TTL, background refresh, outages.

Rules under test:
- a known user never waits for the directory, even when it hangs;
- a change in the directory reaches the resolver within about one TTL, without anyone asking twice;
- in an outage known users keep their groups for `stale` seconds past the TTL, then the outage
  rule applies (`closed`: no directory groups; `last`: keep them), and it shows in the samples;
- a new user waits at most `first_wait`.
"""

from __future__ import annotations

import time

import pytest

from accessgate.auth.directory import Directory, LdapSettings
from accessgate.auth.groups import (
    EXPIRED,
    FRESH,
    PENDING,
    STALE,
    UNAVAILABLE,
    UNKNOWN,
    DirectoryGroups,
    GroupResolver,
    GroupSource,
    sources_of,
)
from support.slapd import slapd  # noqa: F401  (the fixture)


@pytest.fixture
def server(slapd):
    slapd.add_user("alice", "pw")
    slapd.add_user("bob", "pw")
    slapd.add_user("carol", "pw")
    slapd.add_group("pr", [slapd.user_dn("alice")])
    slapd.add_group("marcom", [slapd.group_dn("pr")])
    slapd.add_group("sales", [slapd.user_dn("carol")])
    return slapd


def directory_for(server, timeout=1.0) -> Directory:
    return Directory(LdapSettings(url=server.url, base_dn=server.suffix, bind_dn=server.reader_dn,
                                  bind_password=server.reader_password, timeout=timeout))


def resolver_for(server, **kwargs) -> GroupResolver:
    kwargs.setdefault("ttl", 0.5)
    kwargs.setdefault("stale", 1.0)
    kwargs.setdefault("retry", 0.2)
    kwargs.setdefault("first_wait", 2.0)
    return GroupResolver(directory_for(server).groups_of, **kwargs)


def wait_for(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def sample(resolver, name, **labels):
    want = tuple(sorted(labels.items()))
    return next(s.value for s in resolver.samples() if s.name == name and s.labels == want)


def test_first_lookup_then_answers_from_the_cache(server):
    resolver = resolver_for(server, ttl=60)
    try:
        first = resolver.groups("alice")
        assert (first.groups, first.state) == (frozenset({"pr", "marcom"}), FRESH)
        lookups = resolver.counters.total("directory_lookups_total")
        for _ in range(100):
            assert resolver.groups("alice").groups == frozenset({"pr", "marcom"})
        assert resolver.counters.total("directory_lookups_total") == lookups
    finally:
        resolver.close()


def test_a_user_the_directory_does_not_know_has_no_directory_groups(server):
    resolver = resolver_for(server)
    try:
        answer = resolver.groups("nobody")
        assert (answer.groups, answer.state) == (frozenset(), UNKNOWN)
    finally:
        resolver.close()


def test_a_group_change_is_picked_up_after_the_ttl_in_the_background(server):
    resolver = resolver_for(server, ttl=0.5)
    try:
        assert resolver.groups("bob").groups == frozenset()
        assert resolver.groups("carol").groups == frozenset({"sales"})
        server.set_members("pr", [server.user_dn("alice"), server.user_dn("bob")])
        server.set_members("sales", [])
        assert resolver.groups("bob").groups == frozenset()  # within the TTL: the cached answer
        time.sleep(1.2)  # one TTL and a sweep later, without anyone asking in between
        lookups = resolver.counters.total("directory_lookups_total")
        assert resolver.groups("bob").groups == frozenset({"pr", "marcom"})
        assert resolver.counters.total("directory_lookups_total") == lookups  # the answer was already there
        assert resolver.groups("carol").groups == frozenset()
        assert resolver.counters.get("directory_group_changes_total") >= 2
    finally:
        resolver.close()


def test_a_known_user_never_waits_for_a_hung_directory(server):
    resolver = resolver_for(server, ttl=0.2, stale=30)
    try:
        assert resolver.groups("alice").state == FRESH
        server.pause()
        try:
            time.sleep(0.3)  # past the TTL: every answer now starts (or shares) a refresh
            worst = 0.0
            for _ in range(200):
                started = time.perf_counter()
                answer = resolver.groups("alice")
                worst = max(worst, time.perf_counter() - started)
                assert answer.groups == frozenset({"pr", "marcom"})
            assert answer.state == STALE
            assert worst < 0.05, f"a known user waited {worst * 1000:.1f} ms"
        finally:
            server.resume()
    finally:
        resolver.close()


@pytest.mark.parametrize("rule, after", [("closed", EXPIRED), ("last", STALE)])
def test_an_outage_keeps_groups_for_a_bounded_time_then_the_rule_applies(server, rule, after):
    resolver = resolver_for(server, ttl=0.4, stale=1.0, on_outage=rule)
    try:
        assert resolver.groups("alice").state == FRESH
        server.stop()
        down = wait_for(lambda: sample(resolver, "directory_up") == 0.0, 3.0)
        assert down, "the outage did not show in directory_up"
        kept = resolver.groups("alice")
        assert (kept.groups, kept.state) == (frozenset({"pr", "marcom"}), STALE)
        time.sleep(1.5)  # past ttl + stale
        gone = resolver.groups("alice")
        assert gone.state == after
        assert gone.groups == (frozenset() if rule == "closed" else frozenset({"pr", "marcom"}))
        assert sample(resolver, "directory_users", state=after) == 1.0
        assert resolver.counters.get("directory_lookups_total", result="error") >= 1
        # The directory is asked at most once per retry interval while down, not once per request.
        errors = resolver.counters.get("directory_lookups_total", result="error")
        for _ in range(200):
            resolver.groups("alice")
        assert resolver.counters.get("directory_lookups_total", result="error") <= errors + 1

        server.start()
        back = wait_for(lambda: resolver.groups("alice").state == FRESH, 5.0)
        assert back, "groups did not come back after the directory did"
        assert resolver.groups("alice").groups == frozenset({"pr", "marcom"})
        assert sample(resolver, "directory_up") == 1.0
    finally:
        resolver.close()


def test_a_new_user_during_an_outage_gets_no_directory_groups_at_once(server):
    resolver = resolver_for(server)
    try:
        assert resolver.groups("alice").state == FRESH
        server.stop()
        assert wait_for(lambda: resolver.groups("alice") and sample(resolver, "directory_up") == 0.0, 3.0)
        started = time.monotonic()
        answer = resolver.groups("carol")
        assert (answer.groups, answer.state) == (frozenset(), UNAVAILABLE)
        assert time.monotonic() - started < 1.5
    finally:
        resolver.close()


def test_a_new_users_first_lookup_waits_at_most_first_wait(server):
    resolver = resolver_for(server, first_wait=0.3)
    server.pause()
    try:
        started = time.monotonic()
        answer = resolver.groups("carol")
        waited = time.monotonic() - started
        assert (answer.groups, answer.state) == (frozenset(), PENDING)
        assert 0.25 <= waited < 0.8
    finally:
        server.resume()
    try:
        assert wait_for(lambda: resolver.groups("carol").groups == frozenset({"sales"}), 8.0)
    finally:
        resolver.close()


async def _async_groups(resolver, user):
    return await resolver.groups_async(user)


def test_the_async_answer_is_the_same(server):
    import asyncio

    resolver = resolver_for(server)
    try:
        answer = asyncio.run(_async_groups(resolver, "alice"))
        assert (answer.groups, answer.state) == (frozenset({"pr", "marcom"}), FRESH)
    finally:
        resolver.close()


def test_the_cache_is_bounded(server):
    resolver = resolver_for(server, ttl=60, max_users=2)
    try:
        for user in ("alice", "bob", "carol"):
            resolver.groups(user)
        assert resolver.cached("alice") is None
        assert resolver.cached("carol").groups == frozenset({"sales"})
    finally:
        resolver.close()


def test_each_group_keeps_its_source():
    ldap = DirectoryGroups(frozenset({"pr", "marcom"}), FRESH, 1.0)
    assert sources_of({"pr", "sales"}, ldap) == (
        GroupSource("marcom", ("ldap",)),
        GroupSource("pr", ("yaml", "ldap")),
        GroupSource("sales", ("yaml",)),
    )
    assert sources_of({"sales"}, None) == (GroupSource("sales", ("yaml",)),)
