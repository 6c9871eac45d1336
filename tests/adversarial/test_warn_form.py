"""Attacks on the warn page's form, each through a real mitmdump (SECURITY.md lists them).

The form at /__accessgate/continue opens a `warn` site for a user.  Each
case fetches a real warn page (token and cookie as the proxy issued them)
and then sends what an attacker could: a post from another origin (CSRF),
a replay, a forged or altered token, one issued to another user or for
another site, no cookie, an oversize reason or body, script in the reason.
Each must leave the site closed (the origin never hears of it) and be
audited with why; the honest form is honoured once.

Users: each case continues as a user of its own, since a continuation is
per user and site.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import pytest

from support.clients import Result, curl, write_htpasswd
from support.policies import everyone_policy
from support.proxy import start_proxy

pytestmark = pytest.mark.e2e

SECURITY_MD = Path(__file__).resolve().parents[2] / "SECURITY.md"
POLICY = everyone_policy({"forum": "{level: warn, continue_minutes: 5}", "chat": "warn"}, None,
                         unauthenticated="deny", unlisted="allow")
PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
FORM = "application/x-www-form-urlencoded"
SCRIPT = '<script>alert(document.cookie)</script>"><img src=x onerror=alert(1)>'


@dataclass
class Form:
    """A warn page's form as the proxy issued it, and how to post it."""

    url: str  # the page it was shown for
    token: str
    cookie: str
    user: str

    def post(self, proxy, *, user: str | None = None, to: str | None = None, origin: str | None = "",
             cookie: str | None = "", token: str | None = None, reason: str = "a customer asked there",
             headers: dict | None = None, body: bytes | None = None) -> Result:
        own = "/".join(self.url.split("/", 3)[:3])
        sent = {"Content-Type": FORM, **PAGE}
        origin = own if origin == "" else origin
        if origin is not None:
            sent["Origin"] = origin
        cookie = self.cookie if cookie == "" else cookie
        if cookie is not None:
            sent["Cookie"] = f"accessgate_warn={cookie}"
        sent.update(headers or {})
        data = body if body is not None else urlencode({"token": token or self.token, "reason": reason}).encode()
        return curl(proxy, (to or own) + "/__accessgate/continue", user=user or self.user, method="POST",
                    headers=sent, data=data)


def form(proxy, url: str, user: str) -> Form:
    page = curl(proxy, url, user=user, headers=PAGE)
    assert page.reason == "justification-required", page
    token = html.unescape(re.search(rb'name="token" value="([^"]+)"', page.body).group(1).decode())
    cookie = re.match(r"accessgate_warn=([^;]*)", page.headers["set-cookie"]).group(1)
    return Form(url, token, cookie, user)


def flipped(token: str) -> str:
    payload, mac = token.split(".")
    return payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]


def other_return_url(token: str) -> str:
    """The token with its return address changed to another site, the MAC kept."""
    import base64
    import json

    payload, mac = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields["u"] = "https://evil.test/phish"
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode() + "." + mac


@dataclass(frozen=True)
class Attack:
    id: str
    rule: str
    user: str
    send: Callable[[object, Form], Result]
    status: int  # 403 refused, 405 not a form post, 0 killed unread, 303 honoured
    note: str | None = None  # in the warn_refused event
    url: str = "https://forum.test/thread/7"
    # The site is open to the user anyway (the honest form went first, or it asks no reason):
    # the form post is decided as allowed, and only the proxy's answer refuses it.
    open_site: bool = False


def replay(proxy, f: Form) -> Result:
    assert f.post(proxy).status == 303
    return f.post(proxy)


# What a browser sends for a script's fetch() on the page's own origin.
SCRIPT_FETCH = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}


def harvested_by_a_script(proxy, f: Form) -> Result:
    """A script of the site (or injected into it) fetches the warn page to read a token, then posts it."""
    page = curl(proxy, f.url, user=f.user, headers={**PAGE, **SCRIPT_FETCH})
    assert page.status == 403 and page.reason == "justification-required", page
    assert b'name="token"' not in page.body and "set-cookie" not in page.headers  # nothing to read
    framed = curl(proxy, f.url, user=f.user,
                  headers={**PAGE, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate",
                           "Sec-Fetch-Dest": "iframe"})
    assert b'name="token"' not in framed.body and "set-cookie" not in framed.headers
    return f.post(proxy, headers=SCRIPT_FETCH)  # the token of a real page, posted by script: refused


def twice_here(proxy, f: Form) -> Result:
    return f.post(proxy, reason=SCRIPT)


ATTACKS = [
    Attack("warn-form-csrf-from-another-origin", "a post from another site's page is refused (Origin)", "alice",
           lambda p, f: f.post(p, origin="https://evil.test"), 403, "another origin"),
    Attack("warn-form-csrf-null-origin", "a post from an opaque origin (sandboxed frame, data: URL) is refused",
           "alice", lambda p, f: f.post(p, origin="null"), 403, "another origin"),
    Attack("warn-form-csrf-referer-only", "without Origin, the Referer must be the page's own origin", "alice",
           lambda p, f: f.post(p, origin=None, headers={"Referer": "https://evil.test/x"}), 403, "Referer"),
    Attack("warn-form-no-origin-no-referer", "a post naming no origin at all is refused", "alice",
           lambda p, f: f.post(p, origin=None), 403, "names no origin"),
    Attack("warn-form-cross-site-fetch", "Sec-Fetch-Site other than same-origin is refused", "alice",
           lambda p, f: f.post(p, headers={"Sec-Fetch-Site": "cross-site"}), 403, "another site"),
    Attack("warn-form-posted-by-a-script", "a same-origin script's fetch() cannot post the form for the user "
           "(Sec-Fetch-Mode must be navigate)", "alice",
           lambda p, f: f.post(p, headers=SCRIPT_FETCH), 403, "sent by a script"),
    Attack("warn-form-token-fetched-by-a-script", "a script's fetch or a frame of the warn page gets no token "
           "and no cookie (Sec-Fetch-Dest must be document)", "alice", harvested_by_a_script, 403,
           "sent by a script"),
    Attack("warn-form-without-cookie", "the SameSite=Strict cookie must come with the form", "alice",
           lambda p, f: f.post(p, cookie=None), 403, "cookie"),
    Attack("warn-form-cookie-of-another-form", "the cookie must be the one set with this form", "alice",
           lambda p, f: f.post(p, cookie="someone-elses-nonce"), 403, "cookie"),
    Attack("warn-form-replayed", "a form is good once: its nonce is spent in the shared store", "bob",
           replay, 403, "sent already", open_site=True),
    Attack("warn-form-forged-token", "a token whose MAC is wrong is refused", "alice",
           lambda p, f: f.post(p, token=flipped(f.token)), 403, "not issued by this proxy"),
    Attack("warn-form-altered-return-url", "the return address is under the MAC: no open redirect", "alice",
           lambda p, f: f.post(p, token=other_return_url(f.token)), 403, "not issued by this proxy"),
    Attack("warn-form-token-for-another-user", "a token issued to one user does not continue another", "carol",
           lambda p, f: f.post(p, user="quinn"), 403, "someone else"),
    Attack("warn-form-token-for-another-site", "a token for one site does not continue another", "alice",
           lambda p, f: f.post(p, to="https://chat.test", origin="https://chat.test"), 403, "another site"),
    Attack("warn-form-on-an-unwarned-site", "the continue path of a site without a warn grant is refused, "
           "never forwarded", "alice",
           lambda p, f: f.post(p, to="https://example.test", origin="https://example.test"), 403,
           "does not ask for a reason", open_site=True),
    Attack("warn-form-as-get", "only a POST is a form: a GET with the fields in the query is refused", "alice",
           lambda p, f: curl(p, f"https://forum.test/__accessgate/continue?{urlencode({'token': f.token})}",
                             user="alice", headers=PAGE), 405, "only the warn page's form"),
    Attack("warn-form-oversize-reason", "a reason over 500 characters is refused, not cut", "alice",
           lambda p, f: f.post(p, reason="x" * 501), 403, "longer than 500"),
    Attack("warn-form-empty-reason", "a reason of only whitespace is refused", "alice",
           lambda p, f: f.post(p, reason=" \t\n "), 403, "empty"),
    Attack("warn-form-oversize-body", "a form body over 16 KiB is not read: the connection is closed", "alice",
           lambda p, f: f.post(p, body=b"token=x&reason=" + b"y" * 20_000), 0, "larger than a reason"),
    Attack("warn-form-fields-repeated", "two tokens or two reasons in one form are refused", "alice",
           lambda p, f: f.post(p, body=urlencode([("token", f.token), ("token", f.token),
                                                  ("reason", "x")]).encode()), 403, "one token and one reason"),
    Attack("warn-form-script-in-reason", "script in the reason is kept as text in the audit log and shown "
           "nowhere unescaped", "zoe", twice_here, 303),
]  # fmt: skip


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, mitm_confdir, session_origin):
    folder = tmp_path_factory.mktemp("warn-form")
    (folder / "policy.yaml").write_text(POLICY)
    htpasswd = write_htpasswd(folder / "htpasswd", ["alice", "bob", "carol", "quinn", "zoe"])
    running = start_proxy(policy=folder / "policy.yaml", confdir=mitm_confdir, origin=session_origin,
                          workdir=folder / "proxy", options={"proxyauth": f"@{htpasswd}"})
    yield running
    running.stop()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_warn_form_attack(attack: Attack, proxy, origin):
    f = form(proxy, attack.url, attack.user)
    reply = attack.send(proxy, f)
    if attack.status == 0:  # closed without an answer (after the CONNECT's 200)
        assert reply.exit_code == 52 and b"HTTP/" not in reply.body, (attack.rule, reply)
    else:
        assert reply.status == attack.status, (attack.rule, reply.status, reply.body[:300])
    assert origin.requests == [], "the continue path reached the site"
    if attack.status == 0:
        events = proxy.wait_audit(lambda rs: any(attack.note in r["note"] for r in rs), event="warn_refused")
        assert any(attack.note in r["note"] for r in events)
        return
    request_id = reply.headers["x-accessgate-request-id"]
    if attack.status == 303:
        event = proxy.wait_audit(lambda rs: any(r["request_id"] == request_id for r in rs),
                                 event="warn_continued")[-1]
        assert event["justification"] == SCRIPT  # as typed, in a JSON string
        assert reply.body == b""  # the redirect shows nothing, the reason least of all
        return
    assert reply.reason == "justification-required"
    assert b"<script>" not in reply.body and b"xxxxxxxxxx" not in reply.body  # nothing of the form echoed
    event = proxy.wait_audit(lambda rs: any(r["request_id"] == request_id for r in rs), event="warn_refused")[-1]
    assert attack.note in event["note"], event
    record = proxy.wait_audit(lambda rs: any(r["request_id"] == request_id for r in rs))
    (access,) = [r for r in record if r["request_id"] == request_id]
    assert access["status"] == attack.status
    if attack.open_site:
        return
    assert access["decision"] == "block"
    # The user stays where they were: asked again.
    again = curl(proxy, f.url, user=reply_user(attack), headers=PAGE)
    assert again.reason == "justification-required" and origin.requests == []


def reply_user(attack: Attack) -> str:
    return "quinn" if attack.id == "warn-form-token-for-another-user" else attack.user


def test_security_md_lists_exactly_these_attacks():
    rows = re.findall(r"^\| `(warn-form-[a-z0-9-]+)` \| .+ \| (refused|honoured once|closed unread) \|$",
                      SECURITY_MD.read_text(), re.M)
    listed = dict(rows)
    expected = {a.id: {403: "refused", 405: "refused", 0: "closed unread", 303: "honoured once"}[a.status]
                for a in ATTACKS}
    assert listed == expected
