"""accessgate_auth=htpasswd:PATH through a real mitmdump, with files Apache's htpasswd wrote.

Every hash kind signs in over plain HTTP and through a CONNECT tunnel; the
audit record's user is the file's name, case-folded; a missing or wrong
password gets a 407 with the Basic challenge; the credentials reach
neither the origin nor any log; failures are limited and counted; a
changed file is read again; slow checks never hold up other clients.
"""

from __future__ import annotations

import base64
import re
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.authfiles import write_entry
from support.clients import curl, httpx_client
from support.policies import policy_text
from support.proxy import ProxyFailed, start_proxy

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw:with-colon", "carol": "carol-pw", "dave": "dave-pw",
             "erin": "erin-pw", "Zoe": "zoe-pw"}
FLAGS = {
    "alice": ("-B", "-C", "5"),   # bcrypt
    "bob": ("-m",),               # APR1-MD5
    "carol": ("-2",),             # SHA-256-crypt
    "dave": ("-5",),              # SHA-512-crypt
    "erin": ("-s",),              # {SHA}
    "Zoe": ("-B", "-C", "5"),     # a name with a capital: decided as 'zoe'
}
CHALLENGE = 'Basic realm="accessgate", charset="UTF-8"'


def make_htpasswd(path: Path) -> Path:
    for user, password in PASSWORDS.items():
        write_entry(path, user, password, *FLAGS[user])
    return path


@pytest.fixture(scope="module")
def htfile(tmp_path_factory) -> Path:
    return make_htpasswd(tmp_path_factory.mktemp("ht") / "htpasswd")


@pytest.fixture(scope="module")
def signin_policy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(policy_text())
    return path


@pytest.fixture(scope="module")
def proxy(signin_policy, htfile, mitm_confdir, session_origin, tmp_path_factory):
    p = start_proxy(policy=signin_policy, confdir=mitm_confdir, origin=session_origin,
                    workdir=tmp_path_factory.mktemp("ht-proxy"),
                    options={"accessgate_auth": f"htpasswd:{htfile}"})
    yield p
    p.stop()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("user", list(PASSWORDS))
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_every_hash_htpasswd_writes_signs_in(proxy, origin, user, scheme):
    result = curl(proxy, f"{scheme}://www.linkedin.test/feed", user=user, password=PASSWORDS[user])
    assert result.status == 200, result.stderr
    records = proxy.wait_audit(lambda rs: any(r["path"] == "/feed" and r["user"] == user.lower() for r in rs))
    assert any(r["path"] == "/feed" and r["user"] == user.lower() for r in records)


@pytest.mark.parametrize(
    "user, password",
    [
        pytest.param(None, None, id="no-credentials"),
        pytest.param("alice", "wrong", id="wrong-password"),
        pytest.param("alice", "", id="empty-password"),
        pytest.param("ALICE", "alice-pw", id="names-match-exactly-as-apache-does"),
        pytest.param("mallory", "x", id="unknown-user"),
        pytest.param("bob", "bob-pw", id="password-cut-at-its-colon"),
    ],
)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_no_or_a_wrong_sign_in_gets_407_with_the_challenge(proxy, origin, user, password, scheme):
    extra = ["--proxy-user", f"{user}:{password}"] if user is not None else []
    result = curl(proxy, f"{scheme}://www.linkedin.test/refused", extra=extra)
    assert result.status == 407
    assert result.headers.get("proxy-authenticate") == CHALLENGE
    assert not [r for r in origin.requests if r.path == "/refused"]


def test_two_proxy_authorization_headers_are_refused(proxy, origin):
    alice = "Basic " + base64.b64encode(b"alice:" + PASSWORDS["alice"].encode()).decode()
    result = curl(proxy, "http://www.linkedin.test/two", headers=[("Proxy-Authorization", alice)] * 2)
    assert result.status == 407


def test_a_password_with_a_colon_signs_in_whole(proxy, origin):
    assert curl(proxy, "http://www.linkedin.test/colon", user="bob", password=PASSWORDS["bob"]).status == 200


def test_credentials_reach_neither_the_origin_nor_any_log(proxy, origin):
    secret = PASSWORDS["alice"]
    inner = "Basic " + base64.b64encode(b"bob:" + PASSWORDS["bob"].encode()).decode()
    assert curl(proxy, "http://www.facebook.test/secret-http", user="alice", password=secret).status == 200
    # Inside a tunnel a Proxy-Authorization is the site's business: stripped, and never who signs in.
    result = curl(proxy, "https://www.facebook.test/secret-https", user="alice", password=secret,
                  headers={"Proxy-Authorization": inner})
    assert result.status == 200
    seen = origin.wait_for(2)
    assert [s.header("proxy-authorization") for s in seen] == [None, None]
    records = proxy.wait_audit(lambda rs: sum(r["path"].startswith("/secret-") for r in rs) == 2)
    assert {r["user"] for r in records if r["path"].startswith("/secret-")} == {"alice"}
    encoded = base64.b64encode(f"alice:{secret}".encode()).decode()
    for text in (proxy.audit_path.read_text(), proxy.output()):
        for needle in (secret, encoded, PASSWORDS["bob"], inner.split()[1]):
            assert needle not in text


def test_accessgate_auth_and_proxyauth_at_once_do_not_start(signin_policy, htfile, htpasswd, mitm_confdir, tmp_path):
    # proxyauth gets a file every mitmproxy line reads (bcrypt), so that accessgate's refusal is what stops it.
    with pytest.raises(ProxyFailed, match="accessgate_auth and mitmproxy's proxyauth are both set"):
        start_proxy(policy=signin_policy, confdir=mitm_confdir, workdir=tmp_path,
                    options={"accessgate_auth": f"htpasswd:{htfile}", "proxyauth": f"@{htpasswd}"})


def test_a_misspelt_method_does_not_start(signin_policy, mitm_confdir, tmp_path):
    with pytest.raises(ProxyFailed, match="did you mean 'htpasswd'"):
        start_proxy(policy=signin_policy, confdir=mitm_confdir, workdir=tmp_path,
                    options={"accessgate_auth": "htpasswrd:/etc/x"})


def test_failures_are_limited_per_address_and_counted(signin_policy, htfile, mitm_confdir, origin, tmp_path):
    proxy = start_proxy(policy=signin_policy, confdir=mitm_confdir, origin=origin, workdir=tmp_path,
                        options={"accessgate_auth": f"htpasswd:{htfile}"})
    try:
        statuses = [curl(proxy, "http://www.linkedin.test/", user="carol", password=f"guess-{i}").status
                    for i in range(10)]
        assert statuses == [407] * 10
        limited = curl(proxy, "http://www.linkedin.test/", user="dave", password=PASSWORDS["dave"])
        assert limited.status == 407 and int(limited.headers["retry-after"]) >= 1
        assert limited.seconds >= 0.9  # held a second: a script retrying at once costs the proxy little
        text = proxy.metrics()
        assert metric(text, "accessgate_signin_failures_total", method="htpasswd", reason="bad-password") == 10
        assert metric(text, "accessgate_signin_failures_total", method="none", reason="limited") == 1
        assert metric(text, "accessgate_signin_limited_total", scope="address") == 1
        refusals = [r for r in proxy.oplog() if r.get("event") == "signin_refused"]
        assert len(refusals) == 10 and all(r["user"] == "'carol'" for r in refusals)
        assert not any("guess-" in line for line in proxy.output().splitlines())
    finally:
        proxy.stop()


def test_a_changed_file_is_read_again(signin_policy, htfile, mitm_confdir, origin, tmp_path):
    copy = Path(shutil.copy(htfile, tmp_path / "htpasswd"))
    proxy = start_proxy(policy=signin_policy, confdir=mitm_confdir, origin=origin, workdir=tmp_path / "p",
                        options={"accessgate_auth": f"htpasswd:{copy}"})
    try:
        assert curl(proxy, "http://www.linkedin.test/", user="erin", password="erin-pw").status == 200
        write_entry(copy, "erin", "erin-new-pw", "-B", "-C", "5")
        write_entry(copy, "frank", "frank-pw", "-m")
        deadline = time.monotonic() + 5
        while curl(proxy, "http://www.linkedin.test/", user="erin", password="erin-pw").status != 407:
            assert time.monotonic() < deadline, "the old password still signs in 5 s after the change"
            time.sleep(0.3)
        assert curl(proxy, "http://www.linkedin.test/", user="erin", password="erin-new-pw").status == 200
        assert curl(proxy, "http://www.linkedin.test/", user="frank", password="frank-pw").status == 200
    finally:
        proxy.stop()


def test_a_slow_wrong_password_holds_up_no_other_client(signin_policy, mitm_confdir, origin, tmp_path):
    # bcrypt cost 12 takes ~0.3 s per check here: on the event loop, each one would stall every client.
    path = write_entry(tmp_path / "htpasswd", "slow", "slow-pw", "-B", "-C", "12")
    write_entry(path, "alice", "alice-pw", "-B", "-C", "12")
    proxy = start_proxy(policy=signin_policy, confdir=mitm_confdir, origin=origin, workdir=tmp_path / "p",
                        options={"accessgate_auth": f"htpasswd:{path}"})
    stop = threading.Event()

    def attack() -> None:
        # From another loopback address, so the limit on 127.0.0.1 stays untouched; bounded by the limit.
        for i in range(12):
            if stop.is_set():
                return
            subprocess.run(["curl", "-s", "-o", "/dev/null", "--interface", "127.0.0.2", "-x", proxy.url,
                            "--proxy-user", f"slow:wrong-{i}", "http://www.linkedin.test/"], timeout=30)

    try:
        with httpx_client(proxy, user="alice", password="alice-pw") as client:
            assert client.get("http://www.linkedin.test/warm").status_code == 200  # cached from now on
            idle = _timings(client, 20)
            attacker = threading.Thread(target=attack)
            attacker.start()
            time.sleep(0.2)
            busy = _timings(client, 20)
            stop.set()
            attacker.join(60)
        checks = metric(proxy.metrics(), "accessgate_signin_failures_total", method="htpasswd", reason="bad-password")
        assert checks >= 2, "the attack made no bcrypt checks while the client was measured"
        assert max(busy) < 0.25, f"idle {statistics.median(idle):.3f}s, under attack {sorted(busy)}"
    finally:
        stop.set()
        proxy.stop()


def _timings(client, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        assert client.get("http://www.linkedin.test/timed").status_code == 200
        out.append(time.perf_counter() - started)
    return out
