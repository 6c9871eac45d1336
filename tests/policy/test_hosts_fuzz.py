"""Fuzzing host normalization: no input crashes it, and no spelling changes a decision.

A proxy sees hosts written by attackers.  `normalize_host` may only answer
with a NormalHost or raise InvalidHost (which the engine turns into a
block); and every spelling that the network stack would send to the same
place must land on the same site and get the same decision.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from accessgate import decision as engine
from accessgate.decision import Identity, Request
from accessgate.errors import InvalidHost
from accessgate.policy.hosts import NormalHost, normalize_host
from accessgate.policy.loader import load_policy

POLICY = load_policy(Path(__file__).parents[1] / "adversarial" / "policy.yaml")
ZOE = Identity(user="zoe")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
NAMES = st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(
    lambda n: not n.rsplit(".", 1)[-1].isdigit() and not n.rsplit(".", 1)[-1].startswith("0x")
)
GOVERNED = st.sampled_from(["facebook.test", "www.facebook.test", "linkedin.test", "фейсбук.test"])


def decide(host: str, method: str = "GET") -> engine.Decision:
    return engine.decide(Request(method=method, hosts=(host,), path="/"), ZOE, POLICY, NOW)


@FUZZ
@given(st.text(max_size=300))
def test_any_text_is_a_host_or_invalid_host(raw):
    try:
        result = normalize_host(raw)
    except InvalidHost as exc:
        assert str(exc)  # a sentence, not an empty error
        return
    assert isinstance(result, NormalHost)
    assert result.name == result.name.lower()
    assert not result.name.endswith(".")
    assert result.name.isascii()
    assert normalize_host(result.name) == result  # canonical is a fixed point


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_from_the_wire_decide_without_crashing(data):
    # mitmproxy hands undecodable header bytes over as surrogate escapes.
    decision = decide(data.decode("utf-8", "surrogateescape"))
    assert decision.decision in ("allow", "block")


def _spellings(name: str):
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in name)
    return [
        name, name.upper(), name + ".", name.title() + ".", f"{name}:443", f"{name}:00443",
        f"{name.upper()}.:8080", fullwidth, name.replace(".", "\u3002"), "\u200b" + name,
    ]  # fmt: skip


@FUZZ
@given(st.one_of(GOVERNED, NAMES), st.sampled_from(["GET", "POST", "DELETE"]))
def test_a_decision_never_depends_on_the_spelling(name, method):
    base = decide(name, method)
    for spelling in _spellings(name):
        other = decide(spelling, method)
        assert (other.decision, other.reason, other.site) == (base.decision, base.reason, base.site), spelling


@FUZZ
@given(st.one_of(GOVERNED, NAMES), NAMES)
def test_a_governed_name_beside_a_harmless_one_is_never_more_permissive(governed, harmless):
    alone = decide(governed, "POST")
    both = engine.decide(Request(method="POST", hosts=(harmless, governed), path="/"), ZOE, POLICY, NOW)
    if not alone.allowed:
        assert not both.allowed


def _ipv4_spellings(value: int) -> list[str]:
    a, b, c, d = ipaddress.IPv4Address(value).packed
    return [
        str(ipaddress.IPv4Address(value)), str(value), hex(value), f"0{value:o}",
        f"{hex(a)}.{hex(b)}.{hex(c)}.{hex(d)}", f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",
        f"{a}.{(b << 16) | (c << 8) | d}", f"{a}.{b}.{(c << 8) | d}",
        f"[::ffff:{a}.{b}.{c}.{d}]", f"[::ffff:{(a << 8) | b:x}:{(c << 8) | d:x}]",
    ]  # fmt: skip


@FUZZ
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_spelling_is_one_address(value):
    expected = ipaddress.IPv4Address(value)
    for spelling in _ipv4_spellings(value):
        assert normalize_host(spelling).ip == expected, spelling
    decisions = {(decide(s).decision, decide(s).site) for s in _ipv4_spellings(value)}
    assert len(decisions) == 1
    loopback = expected in ipaddress.ip_network("127.0.0.0/8")
    assert decisions == ({("block", "facebook")} if loopback else {("allow", None)})


@FUZZ
@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_ipv6_literals_are_canonical(value):
    addr = ipaddress.IPv6Address(value)
    assume(addr.ipv4_mapped is None)
    assert normalize_host(f"[{addr.exploded.upper()}]:443") == normalize_host(f"[{addr.compressed}]")


# -- One normalization (issue 14, hole 1) ------------------------------------
# A name is normalized once: case, one root dot, port, UTS-46 mapping (full
# stops, fullwidth forms, deleted characters), A-labels.  Whatever still
# differs after that (two root dots, an empty label) is no host name.  So a
# spelling of a governed name is either that name or invalid, never unlisted.

DOTS = [".", "\u3002", "\uff0e", "\uff61"]  # a dot, and the full stops UTS-46 maps to one
ENDINGS = ["", ".", "..", "\u3002", ".\u3002", "\u3002.", "\uff0e.", "\u3002\u3002", ".\u200b.", "\u200b.", "..."]
PORTS = ["", ":", ":443", ":00080"]


def _fullwidth(c: str) -> str:
    return chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c


@st.composite
def spellings(draw, name=st.one_of(GOVERNED, NAMES)):
    """A name and one way to write it: case, full stops, fullwidth letters and
    zero-width characters (each none, all or some), then a root dot (or more),
    then a port."""
    base = draw(name)
    case, stops, wide, zero = (draw(st.sampled_from(["none", "all", "some"])) for _ in range(4))

    def applies(mode: str) -> bool:
        return mode == "all" or (mode == "some" and draw(st.booleans()))

    out = []
    for c in base:
        if c == ".":
            out.append(draw(st.sampled_from(DOTS[1:])) if applies(stops) else c)
            continue
        c = c.upper() if applies(case) else c
        out.append(_fullwidth(c) if applies(wide) else c)
        if zero != "none" and applies(zero):
            out.append("\u200b")
    return base, "".join(out) + draw(st.sampled_from(ENDINGS)) + draw(st.sampled_from(PORTS))


IDN_FORMS = st.sampled_from(["xn--90ahmf7anc.test", "www.xn--90ahmf7anc.test", "www.фейсбук.test"])


@FUZZ
@given(spellings(st.one_of(GOVERNED, IDN_FORMS)), st.sampled_from(["GET", "POST"]))
def test_no_spelling_of_a_governed_name_decides_as_unlisted(spelled, method):
    name, spelling = spelled
    base = decide(name, method)
    other = decide(spelling, method)
    if other.rule == engine.RULE_INVALID_HOST:
        assert not other.allowed
    else:
        assert (other.decision, other.reason, other.site) == (base.decision, base.reason, base.site), spelling


@FUZZ
@given(st.one_of(spellings().map(lambda s: s[1]), st.text(max_size=40)))
def test_what_the_engine_decides_is_normalize_hosts_answer_and_a_fixed_point(raw):
    decided = decide(raw, "POST")
    try:
        host = normalize_host(raw)
    except InvalidHost:
        assert decided.rule == engine.RULE_INVALID_HOST and not decided.allowed
        return
    assert decided.host == host.name
    again = decide(host.name, "POST")
    assert (again.decision, again.reason, again.site, again.host) == (
        decided.decision, decided.reason, decided.site, decided.host
    )  # fmt: skip


@FUZZ
@given(spellings())
def test_a_name_that_ends_in_two_dots_after_mapping_is_no_host(spelled):
    _, spelling = spelled
    host_part = spelling.rsplit(":", 1)[0] if spelling.count(":") == 1 else spelling
    mapped = host_part.replace("\u200b", "")
    for dot in DOTS[1:]:
        mapped = mapped.replace(dot, ".")
    if mapped.endswith(".."):
        try:
            normalize_host(spelling)
        except InvalidHost:
            return
        raise AssertionError(f"{spelling!r} ends in two dots and was taken as a host")
