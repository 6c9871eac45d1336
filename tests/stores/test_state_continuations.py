"""Warn grants through the engine, with a controlled clock, on every store.

A user who gave a reason is allowed for exactly the grant's
continue_minutes, then asked again; a form's nonce is claimed once.  Every
store keeps both where every proxy behind a balancer sees them (SQLite
file, Redis), so two store objects on one backing store agree.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from accessgate.decision import Identity, Request, decide
from accessgate.policy.loader import parse_policy
from accessgate.stores import open_store
from support.policies import everyone_policy
from support.redis_server import store_spec

POLICY = parse_policy(everyone_policy({"tiktok": "{level: warn, continue_minutes: 7}"}, "Europe/Berlin",
                                      domains="{site}.com", unauthenticated="deny", unlisted="allow"))
ZOE = Identity("zoe")
VISIT = Request("GET", ("www.tiktok.com",))
T0 = datetime(2026, 11, 23, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def spec(request, tmp_path):
    return store_spec(request, tmp_path / "state.sqlite3")


def outcome(store, at: datetime, who: Identity = ZOE) -> str:
    decision = decide(VISIT, who, POLICY, at, quota=store, continuations=store)
    return decision.rule if decision.allowed else decision.reason


def test_a_continuation_opens_the_site_for_exactly_continue_minutes(spec):
    store = open_store(spec)
    try:
        assert outcome(store, T0) == "justification-required"
        store.continue_until("user:zoe", "tiktok", (T0 + timedelta(minutes=7)).timestamp(), T0.timestamp())
        timeline = [
            (T0, "roles.everyone.access.tiktok+continued"),
            (T0 + timedelta(minutes=6, seconds=59), "roles.everyone.access.tiktok+continued"),
            (T0 + timedelta(minutes=7), "justification-required"),  # the end is excluded
            (T0 + timedelta(hours=3), "justification-required"),
        ]
        assert [(at, outcome(store, at)) for at, _ in timeline] == timeline
        # Only zoe, only tiktok.
        assert outcome(store, T0, Identity("yusuf")) == "justification-required"
        assert store.continued_until("user:zoe", "youtube") is None
    finally:
        store.close()


def test_a_nonce_is_claimed_once_until_it_expires(spec):
    store = open_store(spec)
    try:
        until = T0.timestamp() + 600
        assert store.claim_nonce("n-1", until, T0.timestamp()) is True
        assert store.claim_nonce("n-1", until, T0.timestamp() + 5) is False  # replay
        assert store.claim_nonce("n-2", until, T0.timestamp() + 5) is True
    finally:
        store.close()


@pytest.mark.parametrize("shared", ["sqlite", "redis"])
def test_proxies_sharing_a_store_share_continuations_and_nonces(shared, tmp_path, request):
    spec = (f"sqlite:{tmp_path / 'state.sqlite3'}" if shared == "sqlite"
            else request.getfixturevalue("redis_server").url(timeout=1))
    one, two = open_store(spec), open_store(spec)
    try:
        one.continue_until("user:zoe", "tiktok", (T0 + timedelta(minutes=7)).timestamp(), T0.timestamp())
        assert outcome(two, T0 + timedelta(minutes=1)) == "roles.everyone.access.tiktok+continued"
        assert one.claim_nonce("n-1", T0.timestamp() + 600, T0.timestamp()) is True
        assert two.claim_nonce("n-1", T0.timestamp() + 600, T0.timestamp()) is False
    finally:
        one.close()
        two.close()


def test_pseudonymized_stores_keep_continuations_under_the_pseudonym(tmp_path):
    store = open_store(f"sqlite:{tmp_path / 'state.sqlite3'}", pseudonymize_key=b"k" * 32)
    try:
        store.continue_until("user:zoe", "tiktok", (T0 + timedelta(minutes=7)).timestamp(), T0.timestamp())
        assert outcome(store, T0) == "roles.everyone.access.tiktok+continued"
        assert store.store.continued_until("user:zoe", "tiktok") is None  # the name is not stored
    finally:
        store.close()
