"""What a user gets through the real proxy, by case: real mitmdump, real curl, real origin.

Each case states who asks for what and what must happen: the status the
client sees, the reason accessgate gives, and whether the request reached
the origin.  Every case runs over plain HTTP and over intercepted HTTPS.
"""

from __future__ import annotations

import pytest

from support.clients import curl, httpx_client
from support.policies import policy_text
from support.proxy import start_proxy

pytestmark = pytest.mark.e2e

ALLOW, BLOCK = 200, 403

# id, user, method, path-on-site, headers, body, status, reason
CASES = [
    ("pr-has-full-access", "alice", "GET", "facebook.test/", {}, None, ALLOW, None),
    ("pr-may-post-with-full-access", "alice", "POST", "facebook.test/post", {}, b"hi", ALLOW, None),
    ("denied-site-is-blocked", "zoe", "GET", "facebook.test/", {}, None, BLOCK, "denied"),
    ("star-deny-covers-every-other-site", "zoe", "GET", "x.test/", {}, None, BLOCK, "denied"),
    ("subdomain-belongs-to-its-site", "zoe", "GET", "www.facebook.test/", {}, None, BLOCK, "denied"),
    ("read-only-allows-get", "zoe", "GET", "linkedin.test/feed", {}, None, ALLOW, None),
    ("read-only-allows-head", "zoe", "HEAD", "linkedin.test/feed", {}, None, ALLOW, None),
    ("read-only-blocks-post", "zoe", "POST", "linkedin.test/feed", {}, b"status", BLOCK, "read-only"),
    ("read-only-blocks-delete", "zoe", "DELETE", "linkedin.test/post/1", {}, None, BLOCK, "read-only"),
    ("read-only-allow-rule-lets-post-through", "zoe", "POST", "linkedin.test/search/people", {}, b"q", ALLOW, None),
    ("method-override-header-is-a-write", "zoe", "GET", "linkedin.test/feed",
     {"X-HTTP-Method-Override": "DELETE"}, None, BLOCK, "read-only"),
    ("websocket-upgrade-is-a-write", "zoe", "GET", "linkedin.test/ws",
     {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, None, BLOCK, "read-only"),
    ("outside-its-window-is-blocked", "zoe", "GET", "youtube.test/", {}, None, BLOCK, "outside-window"),
    ("unlisted-host-is-not-governed", "zoe", "GET", "example.test/", {}, None, ALLOW, None),
    ("case-and-trailing-dot-do-not-escape", "zoe", "GET", "FaceBook.TEST./", {}, None, BLOCK, "denied"),
]  # fmt: skip


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize(
    "user,method,target,headers,body,status,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decision_reaches_the_client_and_origin(
    auth_proxy, origin, scheme, user, method, target, headers, body, status, reason
):
    extra = ["-I"] if method == "HEAD" else []
    result = curl(
        auth_proxy, f"{scheme}://{target}", user=user, method=None if method == "HEAD" else method,
        headers=headers, data=body, extra=extra,
    )
    assert result.status == status, result
    assert result.reason == reason
    if status == BLOCK:
        assert result.headers["x-accessgate-decision"] == "block"
        assert result.headers["x-accessgate-request-id"]
        assert origin.requests == [], "a blocked request reached the origin"
    else:
        seen = origin.wait_for(1)
        assert [(s.method, s.path) for s in seen] == [(method, "/" + target.split("/", 1)[1])]


ANONYMOUS = [
    # id, proxy fixture, path, status, reason
    ("anonymous-gets-unauthenticated-on-governed-site", "anon_proxy", "linkedin.test/", BLOCK, "unauthenticated"),
    ("anonymous-may-use-unlisted-sites", "anon_proxy", "example.test/", ALLOW, None),
    ("anonymous-with-a-role-reads", "visitor_proxy", "linkedin.test/", ALLOW, None),
    ("anonymous-with-a-role-is-still-read-only", "visitor_proxy", "linkedin.test/post", BLOCK, "read-only"),
    ("anonymous-role-grants-nothing-else", "visitor_proxy", "facebook.test/", BLOCK, "denied"),
]  # fmt: skip


@pytest.fixture(scope="module")
def visitor_proxy(mitm_confdir, session_origin, tmp_path_factory):
    path = tmp_path_factory.mktemp("visitors") / "policy.yaml"
    path.write_text(policy_text(unauthenticated="visitors"))
    proxy = start_proxy(
        policy=path, confdir=mitm_confdir, origin=session_origin,
        workdir=tmp_path_factory.mktemp("visitor-proxy"),
    )
    yield proxy
    proxy.stop()


@pytest.mark.parametrize(
    "fixture,target,status,reason", [c[1:] for c in ANONYMOUS], ids=[c[0] for c in ANONYMOUS]
)
def test_anonymous_clients(request, origin, fixture, target, status, reason):
    proxy = request.getfixturevalue(fixture)
    method = "POST" if target.endswith("/post") else "GET"
    result = curl(proxy, f"https://{target}", method=method, data=b"x" if method == "POST" else None)
    assert (result.status, result.reason) == (status, reason)
    assert bool(origin.requests) == (status == ALLOW)


def test_proxyauth_rejects_wrong_password_before_accessgate(auth_proxy, origin):
    result = curl(auth_proxy, "http://example.test/", user="zoe", password="wrong")
    assert result.status == 407
    assert "x-accessgate-decision" not in result.headers
    assert origin.requests == []


def test_proxyauth_requires_credentials(auth_proxy, origin):
    assert curl(auth_proxy, "http://example.test/").status == 407
    assert origin.requests == []


def test_http2_through_interception_is_decided(auth_proxy, origin):
    blocked = curl(auth_proxy, "https://linkedin.test/feed", user="zoe", method="POST", data=b"x", http2=True)
    allowed = curl(auth_proxy, "https://linkedin.test/feed", user="zoe", http2=True)
    assert (blocked.status, blocked.reason) == (403, "read-only")
    assert allowed.status == 200
    assert [s.method for s in origin.wait_for(1)] == ["GET"]


def test_python_client_over_intercepted_https(auth_proxy, origin):
    with httpx_client(auth_proxy, user="zoe") as client:
        ok = client.get("https://linkedin.test/feed")
        blocked = client.post("https://linkedin.test/feed", content=b"x", headers={"Accept": "application/json"})
    assert ok.status_code == 200
    assert blocked.status_code == 403
    assert blocked.json()["reason"] == "read-only"
    assert [s.method for s in origin.wait_for(1)] == ["GET"]
