"""`accessgate_state` strings: the accepted forms, and a sentence for everything else."""

from __future__ import annotations

import pytest

from accessgate.stores import StateSpec, parse_spec

GOOD = [
    ("memory:", StateSpec("memory"), "memory"),
    ("sqlite:state/quota.sqlite3", StateSpec("sqlite", path="state/quota.sqlite3"), "sqlite-relative"),
    ("sqlite:/var/lib/accessgate/q.db", StateSpec("sqlite", path="/var/lib/accessgate/q.db"), "sqlite-absolute"),
    ("redis://127.0.0.1:6379/0", StateSpec("redis", url="redis://127.0.0.1:6379/0"), "redis-defaults"),
    ("redis://redis.internal", StateSpec("redis", url="redis://redis.internal/0"), "redis-db-defaults-to-0"),
    (
        "redis://10.0.0.5:6380/2?timeout=0.2&on_error=local",
        StateSpec("redis", url="redis://10.0.0.5:6380/2", timeout=0.2, on_error="local"),
        "redis-timeout-and-local-rule",
    ),
    (
        "redis://h/0?on_error=closed&retry=5&prefix=staging",
        StateSpec("redis", url="redis://h/0", on_error="closed", retry=5.0, prefix="staging"),
        "redis-retry-and-prefix",
    ),
    (
        "rediss://:s3cret@h:6380/1",
        StateSpec("redis", url="rediss://:s3cret@h:6380/1"),
        "rediss-with-password",
    ),
    ("redis://[::1]:6379/0", StateSpec("redis", url="redis://[::1]:6379/0"), "redis-ipv6"),
]


@pytest.mark.parametrize("text,expected", [g[:2] for g in GOOD], ids=[g[2] for g in GOOD])
def test_accepted_forms_parse(text, expected):
    assert parse_spec(text) == expected


BAD = [
    ("", "it names no known store", "empty"),
    ("sqlite:", "needs a file path", "sqlite-without-path"),
    ("postgres://db/quota", "it names no known store", "unknown-scheme"),
    ("memory", "it names no known store", "memory-without-colon"),
    ("redis://", "needs a host", "redis-without-host"),
    ("redis://h:notaport/0", "port must be a number", "redis-bad-port"),
    ("redis://h/zero", "database after the host must be a number", "redis-bad-db"),
    ("redis://h/0?timeout=0", "`timeout` must be a number of seconds above 0", "zero-timeout"),
    ("redis://h/0?timeout=fast", "`timeout` must be a number of seconds above 0", "word-timeout"),
    ("redis://h/0?timeout=600", "at most 60", "huge-timeout"),
    ("redis://h/0?on_error=open", "`on_error` must be `closed` or `local`", "fail-open-is-not-a-rule"),
    ("redis://h/0?ttl=5", "unknown parameter `ttl`", "unknown-parameter"),
]


@pytest.mark.parametrize("text,why", [b[:2] for b in BAD], ids=[b[2] for b in BAD])
def test_bad_specs_say_why_and_the_accepted_forms(text, why):
    with pytest.raises(ValueError) as info:
        parse_spec(text)
    message = str(info.value)
    assert why in message
    for form in ("sqlite:PATH", "redis://HOST:PORT/DB", "memory:"):
        assert form in message


def test_the_description_of_a_redis_store_never_shows_its_password():
    spec = parse_spec("redis://user:s3cret@h:6380/1?timeout=0.1")
    assert "s3cret" not in str(spec)
    assert str(spec) == "redis://h:6380/1?timeout=0.1&on_error=closed"
