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

from accessgate import engine
from accessgate.engine import Identity, Request
from accessgate.errors import InvalidHost
from accessgate.hosts import NormalHost, normalize_host
from accessgate.loader import load_policy

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
