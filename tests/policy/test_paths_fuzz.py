"""Fuzzing rule paths: a write that a read_only_allow rule lets through is
one every kind of server reads as a path the rule allows (issue 14, hole 3).

Paths are built from the pieces attackers use (dot segments, encoded and
double-encoded dots and slashes, backslashes, `;` parameters, fragments,
NULs, empty segments) around a rule's prefix and a write endpoint.  Each
is read by models of how real servers resolve a path; whenever the engine
allows the write, every model must land on a path a rule allows.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime, timezone
from urllib.parse import unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accessgate.decision import Decision, Identity, Request, decide
from accessgate.policy.loader import parse_policy
from accessgate.policy.paths import readings, remove_dot_segments

RULES = ["/login/*", "/checkpoint/*", "/i/api/graphql/*/HomeTimeline", "/login.php"]
POLICY = parse_policy(
    "version: 1\nsites:\n  facebook:\n    domains: [facebook.com]\n    read_only_allow:\n"
    + "".join(f'      - {{method: POST, path: "{rule}"}}\n' for rule in RULES)
    + "roles:\n  everyone: {members: [all], access: {facebook: read-only}}\n"
    "unauthenticated: deny\nunlisted: allow\n",
    "<paths-fuzz>",
)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEGMENTS = ["login", "checkpoint", "i", "api", "graphql", "abc", "HomeTimeline", "CreateTweet", "login.php",
            "feed", "x", "", ".", "..", "...", "%2e", "%2e%2e", "%2E%2e", ".%2e", "%252e%252e", "..;", "x;y",
            ";", "#", "x#", "%23", "%00", "x%00", "log%69n", "%6c%6f%67%69%6e", "\\..", "..\\..", "%5c..",
            "%c0%ae%c0%ae", "\uff0e\uff0e", "%3f", "?"]  # fmt: skip
SEPARATORS = ["/", "/", "/", "/", "//", "%2f", "%2F", "\\", "%5c", "%5C", "%252f"]


@st.composite
def attack_paths(draw) -> str:
    start = draw(st.sampled_from(["/login/", "/checkpoint/", "/i/api/graphql/", "/", "/api/graphql/", ""]))
    parts = draw(st.lists(st.tuples(st.sampled_from(SEGMENTS), st.sampled_from(SEPARATORS)), max_size=7))
    end = draw(st.sampled_from(["", "HomeTimeline", "api/graphql/", "x", "/"]))
    return start + "".join(seg + sep for seg, sep in parts) + end


def _resolve(path: str) -> str:
    return remove_dot_segments(path) if path.startswith("/") else path


def server_readings(target: str) -> list[str]:
    """What kinds of origin servers make of a request target's path: each
    model a server or framework that exists.  Every one ends the path at '?'."""
    path = target.split("?", 1)[0]
    cut = path.split("#", 1)[0]
    decoded = unquote(path, errors="surrogateescape")
    models = [
        path,  # routes on the path as sent
        _resolve(path),  # removes dot segments, decodes nothing
        _resolve(cut),  # drops a fragment first
        _resolve(decoded),  # decodes every escape, then resolves
        _resolve(unquote(decoded, errors="surrogateescape")),  # decodes twice (IIS of old)
        _resolve(decoded.replace("\\", "/")),  # IIS: a backslash is a slash
        _resolve(re.sub(r";[^/]*", "", decoded)),  # Tomcat: drops ;parameters from each segment
        _resolve(re.sub(r"/{2,}", "/", decoded)),  # nginx: merges slashes
        _resolve(decoded.split("\x00", 1)[0]),  # C code: stops at a NUL
    ]
    return models


def allowed_by_a_rule(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, rule) for rule in RULES)


def post(path: str) -> Decision:
    return decide(Request("POST", ("facebook.com",), path), Identity(user="erin"), POLICY, NOW)


@FUZZ
@given(attack_paths())
def test_a_write_a_rule_allows_is_allowed_by_every_server_reading(path):
    if post(path).allowed:
        for reading in server_readings(path):
            assert allowed_by_a_rule(reading), (path, reading)


@FUZZ
@given(st.one_of(attack_paths(), st.text(max_size=40)))
def test_a_write_the_engine_allows_is_allowed_again_once_resolved(path):
    # Normalized again, an allowed path is decided the same: resolution is a fixed point.
    if post(path).allowed:
        resolved = readings(path.split("?", 1)[0])[-1]
        assert readings(resolved) == (resolved,)
        assert post(resolved).allowed


@FUZZ
@given(st.text(max_size=60))
def test_any_path_is_read_or_refused_without_crashing(path):
    found = readings(path)
    assert all(reading.startswith("/") for reading in found)
    assert post(path).decision in ("allow", "block")
