"""Kerberos single sign-on against a real MIT KDC (tests/support/kdc.py), clients made with gssapi.

A token is what a browser puts after `Proxy-Authorization: Negotiate`: a
SPNEGO token for HTTP/localhost@ACCESSGATE.TEST from the user's ticket.
The realm's clock skew is 2 s, so expiry and stale tokens take seconds.
"""

from __future__ import annotations

import base64
import threading
import time

import pytest

from support.kdc import running_realm

gssapi = pytest.importorskip("gssapi")

from accessgate.auth.authenticator import Authenticator  # noqa: E402
from accessgate.auth.base import OK, REFUSED  # noqa: E402
from accessgate.auth.credentials import Negotiate  # noqa: E402
from accessgate.auth.negotiate import NegotiateMethod, ReplayCache, authenticator_tag, split_principal

SKEW = 2


@pytest.fixture(scope="module")
def realm():
    with running_realm(clockskew=SKEW) as r:
        for user in ("alice", "bob", "alice/admin"):
            r.add_user(user)
        r.kadmin(f"addprinc -randkey HTTP/elsewhere@{r.realm_name}")
        yield r


def method_for(realm, **kwargs) -> NegotiateMethod:
    kwargs.setdefault("replays", ReplayCache())
    return NegotiateMethod(realm.keytab, **kwargs)


def header(token: bytes) -> str:
    return "Negotiate " + base64.b64encode(token).decode()


def inner_krb5_token(spnego: bytes) -> bytes:
    """The Kerberos token inside a SPNEGO NegTokenInit (same AP-REQ, other wrapping)."""
    from accessgate.auth.negotiate import _Der

    _, start, _ = _Der.read(spnego, 0)
    _, _, oid_end = _Der.read(spnego, start)
    _, nstart, _ = _Der.read(spnego, oid_end)
    _, sstart, send = _Der.read(spnego, nstart)
    for tag, cstart, cend in _Der.children(spnego, sstart, send):
        if tag == 0xA2:
            _, istart, iend = _Der.read(spnego, cstart)
            return spnego[istart:iend]
    raise AssertionError("no mechToken")


def test_a_browser_token_signs_in_as_the_principal_and_gets_a_mutual_auth_reply(realm):
    token, client = realm.spnego_token("alice")
    verdict = method_for(realm).check(Negotiate(token))
    assert (verdict.outcome, verdict.user) == (OK, "alice")
    assert verdict.reply.startswith("Negotiate ")
    client.step(base64.b64decode(verdict.reply.split(" ", 1)[1]))  # the client verifies the server
    assert client.complete


def test_through_the_authenticator(realm):
    auth = Authenticator([method_for(realm)])
    token, _ = realm.spnego_token("bob")
    result = auth.check(header(token), "192.0.2.1")
    assert (result.outcome, result.user, result.method) == ("accepted", "bob", "negotiate")
    assert result.reply and auth.challenges == ("Negotiate",)
    again = auth.check(header(token), "192.0.2.1")
    assert (again.outcome, again.reason) == ("refused", "replayed")  # never served from the cache
    auth.close()


def test_an_instance_principal_keeps_its_instance(realm):
    token, _ = realm.spnego_token("alice/admin")
    assert method_for(realm).check(Negotiate(token)).user == "alice/admin"


# ---- replays -----------------------------------------------------------------------------

def test_mit_alone_accepts_a_replayed_token_that_asks_for_mutual_auth(realm):
    # Why accessgate keeps its own replay cache: MIT 1.20's does not stop this one.
    token, _ = realm.spnego_token("alice")
    creds = gssapi.Credentials(usage="accept", store={"keytab": realm.keytab})
    for _ in range(2):
        gssapi.SecurityContext(creds=creds, usage="accept").step(token)


@pytest.mark.parametrize(
    "replay",
    [
        pytest.param(lambda t: t, id="same-bytes"),
        pytest.param(inner_krb5_token, id="same-ap-req-without-spnego-wrapper"),
    ],
)
def test_a_replayed_token_is_refused(realm, replay):
    method = method_for(realm)
    token, _ = realm.spnego_token("alice")
    assert method.check(Negotiate(token)).ok
    verdict = method.check(Negotiate(replay(token)))
    assert (verdict.outcome, verdict.reason) == (REFUSED, "replayed")


def test_a_replay_is_refused_by_a_rebuilt_method_too(realm):
    token, _ = realm.spnego_token("alice")
    assert NegotiateMethod(realm.keytab).check(Negotiate(token)).ok
    assert NegotiateMethod(realm.keytab).check(Negotiate(token)).reason == "replayed"


def test_concurrent_replays_sign_in_once(realm):
    method = method_for(realm)
    token, _ = realm.spnego_token("alice")
    verdicts = []

    def check():
        verdicts.append(method.check(Negotiate(token)))

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(v.outcome for v in verdicts) == [OK] + [REFUSED] * 7


def test_a_tampered_copy_does_not_spend_the_genuine_token(realm):
    # A flipped byte inside the ticket keeps the authenticator (and its tag) the same.
    method = method_for(realm)
    token, _ = realm.spnego_token("alice")
    tampered = bytearray(token)
    tampered[len(token) // 3] ^= 0x01
    assert authenticator_tag(bytes(tampered)) == authenticator_tag(token)
    assert method.check(Negotiate(bytes(tampered))).outcome == REFUSED
    assert method.check(Negotiate(token)).ok


def test_a_full_replay_cache_refuses_rather_than_forgets(realm):
    method = method_for(realm, replays=ReplayCache(max_entries=1))
    first, _ = realm.spnego_token("alice")
    second, _ = realm.spnego_token("bob")
    assert method.check(Negotiate(first)).ok
    verdict = method.check(Negotiate(second))
    assert (verdict.outcome, verdict.reason) == ("unavailable", "replay-cache-full")


# ---- garbage, expiry, realms ---------------------------------------------------------------

GARBAGE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"garbage", id="ascii"),
    pytest.param(bytes(range(256)), id="every-byte"),
    pytest.param(b"NTLMSSP\x00\x01\x00\x00\x00\x07\x82\x08\xa2" + b"\x00" * 24, id="ntlm-negotiate"),
    pytest.param(b"\x60\x82\xff\xff\x06\x06\x2b\x06\x01\x05\x05\x02", id="length-past-the-end"),
    pytest.param(b"\x60\x0e\x06\x06\x2b\x06\x01\x05\x05\x02\xa0\x04\x30\x02\xa0\x00", id="spnego-without-mech-token"),
    pytest.param(b"\x60\x84\x7f\xff\xff\xff", id="huge-length"),
]


@pytest.mark.parametrize("token", GARBAGE)
def test_garbage_is_refused_without_reaching_kerberos(realm, token):
    method = method_for(realm)
    verdict = method.check(Negotiate(token))
    assert (verdict.outcome, verdict.reason) == (REFUSED, "garbage")
    assert len(method.replays) == 0


def test_a_truncated_token_is_refused(realm):
    token, _ = realm.spnego_token("alice")
    for cut in (10, len(token) // 2, len(token) - 1):
        assert method_for(realm).check(Negotiate(token[:cut])).outcome == REFUSED


def test_a_token_held_past_the_clock_skew_is_refused(realm):
    token, _ = realm.spnego_token("alice")
    time.sleep(SKEW + 1.5)
    verdict = method_for(realm).check(Negotiate(token))
    assert (verdict.outcome, verdict.reason) == (REFUSED, "clock-skew")


def test_a_token_from_an_expired_ticket_is_refused(realm):
    ccache = realm.kinit("bob", lifetime="3s")
    token, _ = realm.spnego_token("bob", ccache=ccache)
    time.sleep(3 + SKEW + 1)
    verdict = method_for(realm).check(Negotiate(token))
    assert verdict.outcome == REFUSED and verdict.reason in ("ticket-expired", "clock-skew")


def test_a_token_for_another_service_is_refused(realm):
    token, _ = realm.spnego_token("alice", service_host="elsewhere")
    verdict = method_for(realm).check(Negotiate(token))
    assert verdict.outcome == REFUSED and verdict.reason in ("no-key", "wrong-service", "refused-by-kerberos")


@pytest.mark.parametrize(
    "kwargs, outcome, user, reason",
    [
        pytest.param({}, OK, "alice", "", id="service-realm-stripped"),
        pytest.param({"strip_realm": False}, OK, "alice@ACCESSGATE.TEST", "", id="realm-kept"),
        pytest.param({"realms": ("OTHER.TEST",)}, REFUSED, None, "wrong-realm", id="realm-not-allowed"),
        pytest.param({"realms": ("OTHER.TEST", "ACCESSGATE.TEST")}, OK, "alice@ACCESSGATE.TEST", "",
                     id="allowed-non-default-realm-kept"),
        pytest.param({"realms": ("accessgate.test",)}, REFUSED, None, "wrong-realm", id="realms-are-case-sensitive"),
    ],
)
def test_realm_rules(realm, kwargs, outcome, user, reason):
    token, _ = realm.spnego_token("alice")
    verdict = method_for(realm, **kwargs).check(Negotiate(token))
    assert (verdict.outcome, verdict.user) == (outcome, user)
    assert verdict.reason == reason


def test_a_missing_keytab_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="ktpass or msktutil"):
        NegotiateMethod(tmp_path / "nope.keytab")


@pytest.mark.parametrize(
    "principal, split",
    [
        ("alice@CORP.EXAMPLE", ("alice", "CORP.EXAMPLE")),
        ("alice/admin@CORP", ("alice/admin", "CORP")),
        ("a\\@b@CORP", ("a\\@b", "CORP")),
        ("noreal", ("noreal", "")),
    ],
)
def test_split_principal(principal, split):
    assert split_principal(principal) == split
