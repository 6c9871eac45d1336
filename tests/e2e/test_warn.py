"""The `warn` level through a real mitmdump: the warn page, the form, and exactly continue_minutes.

zoe has `tiktok: {level: warn, continue_minutes: 1}` and `youtube: warn`.
Her first page load of tiktok gets the warn page (403, reason
justification-required) over plain HTTP and intercepted HTTPS; the form
posted back to the same origin opens tiktok for her for exactly one minute
(the audit record's `until`), redirects to the page she asked for, and is
good once.  The origin's record is the ground truth of what got through.
"""

from __future__ import annotations

import html
import re
import time
from datetime import datetime
from urllib.parse import urlencode

import pytest

from support.clients import curl

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
sites:
  tiktok: {domains: [tiktok.test]}
  youtube: {domains: [youtube.test]}
  facebook: {domains: [facebook.test]}
roles:
  marcom:
    members: ["user:alice"]
    access:
      "*": full
  everyone:
    members: [all]
    access:
      tiktok: {level: warn, continue_minutes: 1}
      youtube: warn
      "*": deny
unauthenticated: deny
unlisted: allow
"""
PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


# Each test continues as a user of its own: a continuation is per user and site.
USERS = ["alice", "zoe", "yann", "xena", "will", "vera", "uma", "tom", "sam"]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, mitm_confdir, session_origin):
    from support.clients import write_htpasswd
    from support.proxy import start_proxy

    folder = tmp_path_factory.mktemp("warn-policy")
    (folder / "policy.yaml").write_text(POLICY)
    htpasswd = write_htpasswd(folder / "htpasswd", USERS)
    proxy = start_proxy(policy=folder / "policy.yaml", confdir=mitm_confdir, origin=session_origin,
                        workdir=tmp_path_factory.mktemp("warn-proxy"), options={"proxyauth": f"@{htpasswd}"})
    yield proxy
    proxy.stop()


def warn_page(proxy, url: str, user: str = "zoe"):
    """GET `url` as a browser: the warn page, its form's token and the cookie it sets."""
    result = curl(proxy, url, user=user, headers=PAGE)
    token = re.search(rb'name="token" value="([^"]+)"', result.body)
    cookie = re.match(r"accessgate_warn=([^;]*)", result.headers.get("set-cookie", ""))
    return result, html.unescape(token.group(1).decode()) if token else None, cookie.group(1) if cookie else None


def post_form(proxy, origin_url: str, token: str, cookie: str | None, reason: str = "answering a customer",
              user: str = "zoe", origin: str | None = None, extra: dict | None = None, post_to: str | None = None):
    """POST the warn form as the browser would from the page at `origin_url`."""
    scheme_host = origin_url.split("/", 3)
    own = f"{scheme_host[0]}//{scheme_host[2]}"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin or own, **PAGE}
    if cookie is not None:
        headers["Cookie"] = f"accessgate_warn={cookie}"
    headers.update(extra or {})
    return curl(proxy, (post_to or own) + "/__accessgate/continue", user=user, method="POST", headers=headers,
                data=urlencode({"token": token, "reason": reason}).encode())


def continued(proxy, request_id: str) -> dict:
    return proxy.wait_audit(lambda rs: any(r.get("request_id") == request_id for r in rs), event="warn_continued")[-1]


@pytest.mark.parametrize("scheme, user", [("http", "zoe"), ("https", "yann")])
def test_warn_page_then_a_reason_opens_the_site_for_the_user(proxy, origin, scheme, user):
    url = f"{scheme}://tiktok.test/videos/1?ref=feed"
    page, token, cookie = warn_page(proxy, url, user)
    assert page.status == 403 and page.reason == "justification-required"
    assert page.headers["content-type"].startswith("text/html")
    assert b"Tell us why you need tiktok" in page.body and b'action="/__accessgate/continue"' in page.body
    assert "form-action 'self'" in page.headers["content-security-policy"]
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    assert "SameSite=Strict" in page.headers["set-cookie"] and "Path=/__accessgate/continue" in page.headers["set-cookie"]
    assert ("Secure" in page.headers["set-cookie"]) == (scheme == "https")
    assert token and cookie and origin.requests == []

    answer = post_form(proxy, url, token, cookie, reason=f"a customer asked on tiktok ({scheme})", user=user)
    assert answer.status == 303, answer.body
    assert answer.headers["location"] == url  # back to the page first asked for
    assert origin.requests == []  # the form never reaches the site

    after = curl(proxy, url, user=user, headers=PAGE)
    assert after.status == 200 and [r.path for r in origin.requests] == ["/videos/1?ref=feed"]
    record = proxy.wait_audit(lambda rs: any(r["status"] == 200 and r["site"] == "tiktok" for r in rs))[-1]
    assert (record["level"], record["rule"]) == ("warn", "roles.everyone.access.tiktok+continued")

    event = continued(proxy, answer.headers["x-accessgate-request-id"])
    assert event["justification"] == f"a customer asked on tiktok ({scheme})"
    assert (event["user"], event["site"], event["rule"]) == (user, "tiktok", "roles.everyone.access.tiktok+continued")

    # Only this user, only tiktok: sam is still asked, and youtube still asks the user.
    assert curl(proxy, url, user="sam", headers=PAGE).reason == "justification-required"
    assert curl(proxy, "http://youtube.test/", user=user, headers=PAGE).reason == "justification-required"


def test_a_reason_opens_the_site_for_exactly_continue_minutes(proxy, origin):
    url = "http://tiktok.test/clock"
    _, token, cookie = warn_page(proxy, url, user="xena")
    answer = post_form(proxy, url, token, cookie, user="xena")
    assert answer.status == 303
    event = continued(proxy, answer.headers["x-accessgate-request-id"])
    posted = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(event["until"].replace("Z", "+00:00"))
    assert abs((until - posted).total_seconds() - 60) < 1.0  # continue_minutes: 1
    # Open up to its end, asked again from its end on (bounded: about a minute).
    deadline = until.timestamp()
    while time.time() < deadline - 2:
        assert curl(proxy, url, user="xena").status == 200
        time.sleep(min(10.0, max(0.0, deadline - 2 - time.time())))
    while time.time() < deadline + 0.5:
        time.sleep(0.1)
    again = curl(proxy, url, user="xena", headers=PAGE)
    assert again.status == 403 and again.reason == "justification-required"
    assert b"Tell us why you need tiktok" in again.body


def test_requests_that_are_not_page_loads_get_the_json_answer(proxy, origin):
    xhr = curl(proxy, "https://youtube.test/api/feed", user="zoe", headers={"Accept": "application/json"})
    assert xhr.status == 403 and xhr.json()["reason"] == "justification-required"
    post = curl(proxy, "https://youtube.test/comment", user="zoe", method="POST", data=b"x=1",
                headers={"Accept": "application/json"})
    assert post.status == 403 and post.json()["reason"] == "justification-required"
    assert "set-cookie" not in post.headers and origin.requests == []


def test_full_access_elsewhere_is_never_warned(proxy, origin):
    assert curl(proxy, "https://tiktok.test/", user="alice", headers=PAGE).status == 200


# -- the form refused: each refusal leaves the site closed and is audited ---------------


def _refused(proxy, answer, why: str):
    assert answer.status in (403, 405), answer.body
    assert answer.reason == "justification-required"
    event = proxy.wait_audit(
        lambda rs: any(r.get("request_id") == answer.headers["x-accessgate-request-id"] for r in rs),
        event="warn_refused")[-1]
    assert why in event["note"], event


def test_a_replayed_form_is_refused(proxy, origin):
    url = "https://youtube.test/watch"
    _, token, cookie = warn_page(proxy, url, user="will")
    assert post_form(proxy, url, token, cookie, user="will").status == 303
    _refused(proxy, post_form(proxy, url, token, cookie, user="will"), "sent already")


def test_a_forged_token_is_refused(proxy, origin):
    url = "https://youtube.test/forged"
    _, token, cookie = warn_page(proxy, url)
    payload, mac = token.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    _refused(proxy, post_form(proxy, url, forged, cookie), "not issued by this proxy")
    assert curl(proxy, url, user="zoe").reason == "justification-required"


def test_a_form_from_another_origin_is_refused(proxy, origin):
    url = "https://youtube.test/csrf"
    _, token, cookie = warn_page(proxy, url)
    _refused(proxy, post_form(proxy, url, token, cookie, origin="https://evil.test"), "another origin")


def test_a_token_for_one_site_does_not_continue_another(proxy, origin):
    _, token, cookie = warn_page(proxy, "https://tiktok.test/a", user="vera")
    answer = post_form(proxy, "https://tiktok.test/a", token, cookie, user="vera", post_to="https://youtube.test",
                       origin="https://youtube.test")
    _refused(proxy, answer, "another site")
    assert curl(proxy, "https://youtube.test/a", user="vera").reason == "justification-required"
    assert curl(proxy, "https://tiktok.test/a", user="vera").reason == "justification-required"


def test_a_token_issued_to_one_user_does_not_continue_another(proxy, origin):
    url = "https://youtube.test/b"
    _, token, cookie = warn_page(proxy, url, user="uma")
    _refused(proxy, post_form(proxy, url, token, cookie, user="tom"), "someone else")
    assert curl(proxy, url, user="tom").reason == "justification-required"
    assert curl(proxy, url, user="uma").reason == "justification-required"


def test_proxies_sharing_key_and_state_honour_each_others_forms_once(tmp_path, mitm_confdir, session_origin, origin):
    """Behind a balancer the page may come from one proxy and the form go to another."""
    from support.clients import write_htpasswd
    from support.proxy import start_proxy

    (tmp_path / "policy.yaml").write_text(POLICY)
    htpasswd = write_htpasswd(tmp_path / "htpasswd", ["zoe"])
    key = tmp_path / "warn.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    shared = {"proxyauth": f"@{htpasswd}", "accessgate_warn_key": str(key)}
    state = f"sqlite:{tmp_path / 'state.sqlite3'}"
    one, two = (start_proxy(policy=tmp_path / "policy.yaml", confdir=mitm_confdir, origin=session_origin,
                            workdir=tmp_path / name, state=state, options=shared) for name in ("one", "two"))
    lone = start_proxy(policy=tmp_path / "policy.yaml", confdir=mitm_confdir, origin=session_origin,
                       workdir=tmp_path / "lone", state=state, options={"proxyauth": f"@{htpasswd}"})
    try:
        url = "https://youtube.test/shared"
        _, token, cookie = warn_page(one, url)
        assert post_form(lone, url, token, cookie).status == 403  # another key: not its form
        assert post_form(two, url, token, cookie).status == 303
        assert post_form(one, url, token, cookie).status == 403  # spent, in the shared store
        assert curl(one, url, user="zoe").status == 200 and curl(lone, url, user="zoe").status == 200
    finally:
        for proxy in (one, two, lone):
            proxy.stop()


def test_a_warn_key_others_can_read_is_refused(tmp_path, mitm_confdir):
    from support.proxy import ProxyFailed, start_proxy

    (tmp_path / "policy.yaml").write_text(POLICY)
    key = tmp_path / "warn.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    with pytest.raises(ProxyFailed, match="chmod 600"):
        start_proxy(policy=tmp_path / "policy.yaml", confdir=mitm_confdir, workdir=tmp_path / "p",
                    options={"accessgate_warn_key": str(key)})
