"""Sign-in: what one Proxy-Authorization header gets, the cache, the limits, the pool.

Every method here is the real htpasswd method on a file written by Apache's
htpasswd; `CountingHtpasswd` only counts how often a hash was checked.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import threading
import time

import pytest
import structlog

from accessgate.auth.authenticator import (
    ACCEPTED,
    ANONYMOUS,
    BUSY,
    LIMITED,
    MALFORMED,
    REFUSED_,
    UNAVAILABLE_,
    UNSUPPORTED,
    Authenticator,
)
from accessgate.auth.base import Verdict
from accessgate.auth.credentials import MAX_HEADER, Basic, Negotiate, parse
from accessgate.auth.limits import FailureLimiter
from support.authfiles import CountingHtpasswd, basic_header, write_entry

PASSWORD = "Tr0ub4dor&3"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users(tmp_path):
    path = tmp_path / "htpasswd"
    write_entry(path, "alice", PASSWORD)
    write_entry(path, "bob", PASSWORD, "-m")
    return path


@pytest.fixture
def method(users):
    return CountingHtpasswd(users)


@pytest.fixture
def auth(method):
    a = Authenticator([method])
    yield a
    a.close()


@pytest.mark.parametrize(
    "header, outcome, reason",
    [
        pytest.param(None, ANONYMOUS, "no-credentials", id="no-header-is-anonymous"),
        pytest.param("", ANONYMOUS, "no-credentials", id="empty-header-is-anonymous"),
        pytest.param(basic_header("alice", PASSWORD), ACCEPTED, "checked", id="right-password-accepted"),
        pytest.param("basic " + basic_header("alice", PASSWORD)[6:], ACCEPTED, "checked", id="scheme-is-case-insensitive"),
        pytest.param(basic_header("alice", "wrong"), REFUSED_, "bad-password", id="wrong-password-refused"),
        pytest.param(basic_header("mallory", PASSWORD), REFUSED_, "unknown-user", id="unknown-user-refused"),
        pytest.param(basic_header("alice", ""), REFUSED_, "empty-password", id="empty-password-refused"),
        pytest.param("Basic !!notbase64!!", MALFORMED, "malformed", id="basic-not-base64"),
        pytest.param("Basic " + base64.b64encode(b"alice").decode(), MALFORMED, "malformed", id="basic-without-colon"),
        pytest.param(basic_header(b"\xff\xfealice", PASSWORD), MALFORMED, "malformed", id="user-not-utf8"),
        pytest.param(basic_header("al\x00ice", PASSWORD), MALFORMED, "malformed", id="user-with-nul"),
        pytest.param(basic_header("alice\n", PASSWORD), MALFORMED, "malformed", id="user-with-newline"),
        pytest.param(basic_header(" alice", PASSWORD), MALFORMED, "malformed", id="user-with-leading-space"),
        pytest.param(basic_header("a" * 257, PASSWORD), MALFORMED, "malformed", id="user-over-256-bytes"),
        pytest.param(basic_header(":" + PASSWORD, ""), MALFORMED, "malformed", id="empty-user"),
        pytest.param("Basic " + "A" * (MAX_HEADER + 4), MALFORMED, "malformed", id="header-over-64k"),
        pytest.param("Bearer abc", UNSUPPORTED, "unsupported-scheme", id="bearer-unsupported"),
        pytest.param("Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXagDTAL", UNSUPPORTED, "no-negotiate-method",
                     id="negotiate-without-negotiate-method"),
    ],
)
def test_what_one_header_gets(auth, header, outcome, reason):
    result = auth.check(header, "192.0.2.1")
    assert (result.outcome, result.reason) == (outcome, reason)
    assert result.ok == (outcome == ACCEPTED)
    assert result.user == ("alice" if outcome == ACCEPTED else None)


def test_a_password_with_colons_is_split_at_the_first_colon_only(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "alice", "a:b:c")
    auth = Authenticator([CountingHtpasswd(path)])
    assert auth.check(basic_header("alice", "a:b:c")).ok
    assert not auth.check(basic_header("alice", "a:b")).ok
    auth.close()


def test_a_verified_credential_is_checked_once_per_ttl(users):
    clock = Clock()
    method = CountingHtpasswd(users)
    auth = Authenticator([method], cache_ttl=300, clock=clock)
    header = basic_header("alice", PASSWORD)
    assert auth.check(header).reason == "checked"
    for _ in range(50):
        assert auth.check(header).reason == "cached"
    assert method.checks == 1
    clock.now += 299
    assert auth.check(header).reason == "cached"
    clock.now += 2
    assert auth.check(header).reason == "checked"
    assert method.checks == 2
    auth.close()


def test_a_different_password_is_never_served_from_the_cache(auth, method):
    assert auth.check(basic_header("alice", PASSWORD)).ok
    assert auth.check(basic_header("alice", PASSWORD + "!")).outcome == REFUSED_
    assert auth.check(basic_header("alice", PASSWORD[:-1])).outcome == REFUSED_
    assert method.checks == 3


def test_a_changed_htpasswd_file_ends_cached_sign_ins_at_once(users):
    clock = Clock()
    method = CountingHtpasswd(users)
    auth = Authenticator([method], clock=clock)
    header = basic_header("alice", PASSWORD)
    assert auth.check(header).ok
    write_entry(users, "alice", "a new one")
    clock.now += 1.5  # the file is looked at no more than once a second
    assert auth.check(header).outcome == REFUSED_
    assert auth.check(basic_header("alice", "a new one")).ok
    auth.close()


def test_the_cache_is_bounded(users):
    method = CountingHtpasswd(users)
    auth = Authenticator([method], cache_size=1)
    alice, bob = basic_header("alice", PASSWORD), basic_header("bob", PASSWORD)
    assert auth.check(alice).ok and auth.check(bob).ok
    assert len(auth.cache) == 1
    assert auth.check(alice).reason == "checked"
    auth.close()


def test_concurrent_checks_of_one_credential_share_one_check(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "alice", PASSWORD, "-B", "-C", "10")
    method = CountingHtpasswd(path)
    auth = Authenticator([method], workers=4)
    header = basic_header("alice", PASSWORD)

    async def many():
        return await asyncio.gather(*(auth.check_async(header, f"192.0.2.{i}") for i in range(8)))

    results = asyncio.run(many())
    assert all(r.ok and r.user == "alice" for r in results)
    assert method.checks == 1
    assert auth.counters.get("signin_coalesced_total") == 7
    auth.close()


def test_failures_from_one_address_are_limited_without_checking(auth, method):
    limiter = FailureLimiter(burst=3, per_minute=6)
    auth.limiter = limiter
    for i in range(3):
        assert auth.check(basic_header("alice", f"guess{i}"), "198.51.100.7").outcome == REFUSED_
    checks = method.checks
    result = auth.check(basic_header("alice", PASSWORD), "198.51.100.7")
    assert (result.outcome, result.reason) == (LIMITED, "address")
    assert 0 < result.retry_after <= 10.0
    assert method.checks == checks  # refused without a hash being computed
    assert auth.check(basic_header("bob", PASSWORD), "198.51.100.8").ok  # another address is not limited


def test_guessing_one_name_limits_new_sign_ins_as_it_but_not_a_signed_in_browser(users):
    clock = Clock()
    method = CountingHtpasswd(users)
    auth = Authenticator([method], limiter=FailureLimiter(burst=3, per_minute=6, clock=clock), clock=clock)
    header = basic_header("alice", PASSWORD)
    assert auth.check(header, "10.0.0.1").ok  # alice's browser signed in earlier
    for i in range(3):  # someone guesses from three other addresses
        assert auth.check(basic_header("alice", f"guess{i}"), f"10.0.1.{i}").outcome == REFUSED_
    assert auth.check(basic_header("ALICE", "guess"), "10.0.2.1").reason == "user"  # the name is limited, any case
    assert auth.check(header, "10.0.0.1").reason == "cached"   # her browser carries on
    assert auth.check(header, "10.0.0.9").reason == "cached"
    clock.now += 11  # a token back after 10 s at 6 a minute
    assert auth.check(basic_header("alice", "guess"), "10.0.2.1").outcome == REFUSED_
    auth.close()


def test_the_limiter_forgets_the_oldest_key_when_full():
    clock = Clock()
    limiter = FailureLimiter(burst=1, per_minute=1, max_keys=2, clock=clock)
    for address in ("a", "b", "c"):
        limiter.failed(address, None)
    assert limiter.limited("a", None) is None
    assert limiter.limited("c", None) == "address"


def test_a_wrong_bcrypt_password_never_stalls_the_event_loop(tmp_path):
    # Cost 12: each check takes a quarter of a second or more here.
    path = write_entry(tmp_path / "htpasswd", "alice", PASSWORD, "-B", "-C", "12")
    write_entry(path, "bob", PASSWORD, "-B", "-C", "4")
    auth = Authenticator([CountingHtpasswd(path)], workers=2, limiter=FailureLimiter(burst=1000))
    good = basic_header("bob", PASSWORD)
    assert auth.check(good).ok

    async def scenario():
        stop = time.monotonic() + 2.0

        async def attacker(n):
            i = 0
            while time.monotonic() < stop:
                await auth.check_async(basic_header("alice", f"wrong{n}-{i}"), f"203.0.113.{n}")
                i += 1
            return i

        async def client():
            delays = []
            while time.monotonic() < stop:
                t = time.perf_counter()
                assert (await auth.check_async(good, "192.0.2.50")).ok
                await asyncio.sleep(0.005)
                delays.append(time.perf_counter() - t - 0.005)
            return delays

        *tries, delays = await asyncio.gather(*(attacker(n) for n in range(4)), client())
        return tries, delays

    tries, delays = asyncio.run(scenario())
    assert sum(tries) >= 4  # the attackers really did get wrong passwords checked
    delays.sort()
    p99 = delays[int(len(delays) * 0.99) - 1]
    assert len(delays) > 100
    assert p99 < 0.05, f"a cached check waited {p99 * 1000:.1f} ms (median {statistics.median(delays) * 1000:.2f} ms)"
    auth.close()


def test_too_many_waiting_checks_are_refused_as_busy(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "alice", PASSWORD, "-B", "-C", "12")
    auth = Authenticator([CountingHtpasswd(path)], workers=1, max_pending=1, limiter=FailureLimiter(burst=100))

    async def scenario():
        slow = asyncio.ensure_future(auth.check_async(basic_header("alice", "wrong-1"), "192.0.2.1"))
        await asyncio.sleep(0.01)
        second = await auth.check_async(basic_header("alice", "wrong-2"), "192.0.2.2")
        return second, await slow

    second, first = asyncio.run(scenario())
    assert (second.outcome, first.outcome) == (BUSY, REFUSED_)
    auth.close()


def test_a_check_that_takes_too_long_answers_unavailable(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "alice", PASSWORD, "-B", "-C", "13")
    auth = Authenticator([CountingHtpasswd(path)], timeout=0.05)
    started = time.monotonic()
    result = auth.check(basic_header("alice", PASSWORD))
    assert (result.outcome, result.reason) == (UNAVAILABLE_, "timeout")
    assert time.monotonic() - started < 0.5
    auth.close()


@pytest.mark.skipif(not hasattr(threading, "get_native_id") or not hasattr(os, "getpriority"),
                    reason="per-thread priorities are Linux's")
def test_checks_run_nicer_than_the_caller_when_asked(users):
    seen: list[int] = []

    class Niceness(CountingHtpasswd):
        def check(self, credentials):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().check(credentials)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for nice, expected in ((0, mine), (10, min(19, mine + 10))):
        auth = Authenticator([Niceness(users)], nice=nice)
        assert auth.check(basic_header("alice", PASSWORD), "192.0.2.1").outcome == ACCEPTED
        auth.close()
        assert seen[-1] == expected
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller's own is unchanged


class Broken:
    name = "htpasswd"
    scheme = "basic"
    generation = 0

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def challenge(self):
        return 'Basic realm="x"'

    def check(self, credentials):
        raise RuntimeError(f"exploded while holding {self.secret}")

    def poll(self):
        pass

    def close(self):
        pass


def test_a_method_that_raises_is_unavailable_and_its_message_is_not_logged():
    auth = Authenticator([Broken("SEKRIT-IN-EXCEPTION")])
    with structlog.testing.capture_logs() as logs:
        result = auth.check(basic_header("alice", PASSWORD), "192.0.2.1")
    assert (result.outcome, result.reason) == (UNAVAILABLE_, "error")
    assert any(e["event"] == "signin_method_error" and e["error"] == "RuntimeError" for e in logs)
    assert "SEKRIT" not in repr(logs)
    auth.close()


def test_passwords_and_tokens_appear_in_no_log_repr_or_message(auth):
    secret_pw = "pw-Zq8#unique"
    token = base64.b64encode(b"\x60\x82kerberos-token-bytes-XYZ").decode()
    headers = [basic_header("alice", secret_pw), basic_header("alice", PASSWORD),
               basic_header("no-such", secret_pw), "Negotiate " + token, "Basic " + "!" * 10]
    auth.limiter = FailureLimiter(burst=2)
    with structlog.testing.capture_logs() as logs:
        results = [auth.check(h, "192.0.2.9") for _ in range(3) for h in headers]
    seen = repr(logs) + repr(results) + repr(auth) + repr(auth.limiter) + repr(auth.cache)
    seen += "".join(repr(parse(h)) + str(parse(h)) for h in headers)
    assert {e["event"] for e in logs} >= {"signin_refused", "signin_limited", "signin_malformed"}
    for secret in (secret_pw, PASSWORD, token, "kerberos-token", basic_header("alice", secret_pw)[6:]):
        assert secret not in seen
    assert "alice" in repr(logs)  # the typed name is logged, so it is the password that is missing


def test_negotiate_and_basic_reprs_hide_the_secret():
    assert "hunter2" not in repr(Basic("alice", b"hunter2")) + str(Basic("alice", b"hunter2"))
    assert "Zq9" not in repr(Negotiate(b"Zq9")) + str(Negotiate(b"Zq9"))


def test_challenges_follow_the_configured_order_with_one_basic(users):
    class FakeNegotiate(Broken):
        name = "negotiate"
        scheme = "negotiate"

        def challenge(self):
            return "Negotiate"

    class Other(Broken):
        name = "ldap"

        def challenge(self):
            return 'Basic realm="accessgate", charset="UTF-8"'

    auth = Authenticator([FakeNegotiate(""), Other(""), CountingHtpasswd(users)])
    assert auth.challenges == ("Negotiate", 'Basic realm="accessgate", charset="UTF-8"')
    auth.close()


class Unavailable(Broken):
    name = "ldap"

    def check(self, credentials):
        return Verdict("unavailable", reason="directory-down")


def test_a_directory_outage_passes_basic_sign_in_to_the_next_method(users):
    method = CountingHtpasswd(users)
    auth = Authenticator([Unavailable(""), method])
    assert auth.check(basic_header("alice", PASSWORD)).method == "htpasswd"
    result = auth.check(basic_header("carol", PASSWORD))
    assert (result.outcome, result.method, result.reason) == (UNAVAILABLE_, "ldap", "directory-down")
    auth.close()


def test_counters_have_fixed_labels_only(auth):
    auth.check(basic_header("alice", PASSWORD), "192.0.2.1")
    auth.check(basic_header("alice", PASSWORD), "192.0.2.1")
    auth.check(basic_header("eve", "x"), "192.0.2.66")
    samples = auth.samples()
    assert auth.counters.get("signin_total", method="htpasswd", result="accepted") == 2
    assert auth.counters.get("signin_total", method="none", result="refused") == 1
    assert auth.counters.get("signin_cache_total", result="hit") == 1
    for sample in samples:
        for _, value in sample.labels:
            assert value not in ("alice", "eve", "192.0.2.1", "192.0.2.66")


def test_the_sync_check_works_from_many_threads(auth, method):
    header = basic_header("alice", PASSWORD)
    results = []

    def run():
        results.append(auth.check(header, "192.0.2.3"))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8 and all(r.ok for r in results)
    assert method.checks <= 2
