"""Rule paths: how servers may read a request's path (paths.readings), and
what a read_only_allow rule then lets through (issue 14, hole 3)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from accessgate.decision import Identity, Request, decide
from accessgate.policy.loader import parse_policy
from accessgate.policy.paths import readings, remove_dot_segments

# path, its readings (() = servers may read it as other segments: no rule matches)
READINGS = [
    ("a-plain-path-has-one-reading", "/login/x", ("/login/x",)),
    ("the-root", "/", ("/",)),
    ("a-trailing-slash-is-kept", "/login/", ("/login/",)),
    ("a-dot-inside-a-name-is-no-dot-segment", "/a.b/c..d/.well-known", ("/a.b/c..d/.well-known",)),
    ("dot-segments-removed", "/login/../feed", ("/login/../feed", "/feed")),
    ("single-dot-removed", "/a/./b", ("/a/./b", "/a/b")),
    ("dot-dot-at-the-end-keeps-a-slash", "/a/b/..", ("/a/b/..", "/a/")),
    ("no-climbing-above-the-root", "/../login/x", ("/../login/x", "/login/x")),
    ("encoded-dots-decoded-in-any-case", "/login/%2e%2E/feed", ("/login/%2e%2E/feed", "/login/../feed", "/feed")),
    ("unreserved-escapes-decoded", "/log%69n/x", ("/log%69n/x", "/login/x")),
    ("other-pchars-are-plain", "/a/b!$&'()*+,=:@c", ("/a/b!$&'()*+,=:@c",)),
    ("empty-path-has-none", "", ()),
    ("relative-path-has-none", "login/x", ()),
    ("absolute-url-has-none", "http://linkedin.test/login/x", ()),
    ("asterisk-form-has-none", "*", ()),
    ("encoded-slash-has-none", "/login/..%2ffeed", ()),
    ("encoded-slash-upper-case-has-none", "/login/..%2Ffeed", ()),
    ("backslash-has-none", "/login/..\\feed", ()),
    ("encoded-backslash-has-none", "/login/..%5cfeed", ()),
    ("semicolon-parameter-has-none", "/login/..;/feed", ()),
    ("encoded-semicolon-has-none", "/login/..%3b/feed", ()),
    ("double-encoded-dot-has-none", "/login/%252e%252e/feed", ()),
    ("encoded-percent-has-none", "/login/%25", ()),
    ("broken-escape-has-none", "/login/%2g", ()),
    ("truncated-escape-has-none", "/login/%2", ()),
    ("encoded-nul-has-none", "/login/x%00/../../feed", ()),
    ("raw-control-has-none", "/login/x\x00/feed", ()),
    ("tab-has-none", "/login/\t/feed", ()),
    ("space-has-none", "/login/x /feed", ()),
    ("fragment-has-none", "/i/api/graphql/abc/CreateTweet#/HomeTimeline", ()),
    ("encoded-fragment-has-none", "/login/x%23/../../feed", ()),
    ("question-mark-has-none", "/login/x?/../../feed", ()),
    ("encoded-question-mark-has-none", "/login/x%3f/../../feed", ()),
    ("empty-segment-has-none", "/login//../feed", ()),
    ("leading-double-slash-has-none", "//feed/login/x", ()),
    ("three-dots-has-none", "/login/.../feed", ()),
    ("three-encoded-dots-have-none", "/login/%2e%2e%2e/feed", ()),
    ("non-ascii-has-none", "/login/\u00e9", ()),
    ("fullwidth-dots-have-none", "/login/\uff0e\uff0e/feed", ()),
    ("overlong-utf8-dot-has-none", "/login/%c0%ae%c0%ae/feed", ()),
    ("undecodable-bytes-have-none", "/login/\udcff", ()),
]  # fmt: skip


@pytest.mark.parametrize("path, expected", [c[1:] for c in READINGS], ids=[c[0] for c in READINGS])
def test_readings(path, expected):
    assert readings(path) == expected


@pytest.mark.parametrize(
    "path, resolved",
    [("/", "/"), ("/a/b/c", "/a/b/c"), ("/a/./b/../c", "/a/c"), ("/a/b/../../..", "/"), ("/a/.", "/a/"),
     ("/a/b/../", "/a/"), ("/..", "/"), ("/./", "/")],
)  # fmt: skip
def test_remove_dot_segments_as_rfc_3986(path, resolved):
    assert remove_dot_segments(path) == resolved


POLICY = parse_policy(
    """
version: 1
sites:
  facebook:
    domains: [facebook.com]
    read_only_allow:
      - {method: POST, path: "/login/*"}
      - {method: POST, path: "/login.php"}
      - {method: POST, path: "/checkpoint/*"}
      - {method: POST, path: "/i/api/graphql/*/HomeTimeline"}
  linkedin:
    domains: [linkedin.com]
roles:
  everyone: {members: [all], access: {"*": read-only}}
unauthenticated: deny
unlisted: allow
""",
    "<paths>",
)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def post(path: str, host: str = "facebook.com", method: str = "POST", headers=()) -> str:
    decision = decide(Request(method, (host,), path, "https", headers), Identity(user="erin"), POLICY, NOW)
    return decision.decision


# id, path, decision for POST by a read-only user
WRITES = [
    ("rule-lets-its-write-through", "/login/device-based/", "allow"),
    ("exact-rule", "/login.php", "allow"),
    ("encoded-slash-inside-the-rule-is-still-ambiguous", "/checkpoint/a%2fb", "block"),
    ("query-is-not-part-of-the-path", "/login.php?next=/feed", "allow"),
    ("glob-in-the-middle", "/i/api/graphql/abc/HomeTimeline", "allow"),
    ("dot-segment-that-stays-inside", "/login/a/../b", "allow"),
    ("encoded-unreserved-that-stays-inside", "/login/%61", "allow"),
    ("dot-segments-leave-the-rule", "/login/../api/graphql/", "block"),
    ("encoded-dot-segments-leave-the-rule", "/login/%2e%2e/api/graphql/", "block"),
    ("encoded-slash-after-dots", "/checkpoint/..%2fapi/graphql/", "block"),
    ("fragment-hides-the-operation", "/i/api/graphql/abc/CreateTweet#/HomeTimeline", "block"),
    ("climbing-back-into-the-rule", "/api/graphql/%2e%2e/%2e%2e/login/x", "block"),
    ("climbing-back-with-plain-dots", "/api/graphql/../../login/x", "block"),
    ("spelled-rule-not-resolved-by-all", "/log%69n/x", "block"),
    ("tomcat-parameter-climb", "/login/..;/api/graphql", "block"),
    ("iis-backslash-climb", "/login/..\\api\\graphql", "block"),
    ("double-encoded-climb", "/login/%252e%252e/api/graphql", "block"),
    ("merged-slashes-climb", "/login//../api/graphql", "block"),
    ("relative-path", "login/x", "block"),
]  # fmt: skip


@pytest.mark.parametrize("path, expected", [c[1:] for c in WRITES], ids=[c[0] for c in WRITES])
def test_a_rule_matches_the_path_as_every_server_reads_it(path, expected):
    assert post(path) == expected


def test_a_site_without_rules_allows_no_write_at_any_path():
    assert post("/login/x", host="linkedin.com") == "block"


def test_reads_never_look_at_the_path():
    assert post("/login/..;/x%2f#", method="GET") == "allow"


def test_an_override_to_a_write_is_matched_the_same_way():
    override = (("x-http-method-override", "POST"),)
    assert post("/login/x", method="GET", headers=override) == "allow"
    assert post("/login/../feed", method="GET", headers=override) == "block"


def test_a_path_servers_may_read_differently_says_so():
    decision = decide(Request("POST", ("facebook.com",), "/login/..;/feed"), Identity(user="erin"), POLICY, NOW)
    assert decision.reason == "read-only"
    assert "servers may read differently" in decision.message
