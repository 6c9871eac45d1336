"""Host normalization, from a table of spellings (cases/hosts.yaml)."""

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from accessgate.errors import InvalidHost
from accessgate.policy.hosts import normalize_host

CASES = yaml.safe_load((Path(__file__).parent / "cases" / "hosts.yaml").read_text("utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_spelling(case):
    if case.get("invalid"):
        with pytest.raises(InvalidHost):
            normalize_host(case["raw"])
    else:
        assert normalize_host(case["raw"]).name == case["name"]


def test_invalid_host_is_a_value_error_with_a_sentence():
    with pytest.raises(ValueError, match="empty label"):
        normalize_host("a..b")


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
def _ends_in_number(name: str) -> bool:
    last = name.split(".")[-1]
    return last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:]))


# Names whose last label is a number are IPv4 addresses (or invalid), not names.
names = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda n: not _ends_in_number(n))


@given(names)
def test_normalization_is_idempotent(name):
    once = normalize_host(name).name
    assert normalize_host(once).name == once


@given(
    names,
    st.lists(st.booleans(), min_size=1, max_size=64),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 65535)),
    st.integers(0, 3),
)
def test_every_case_dot_and_port_spelling_is_the_same_host(name, upper, dot, port, zeros):
    spelled = "".join(c.upper() if upper[i % len(upper)] else c for i, c in enumerate(name))
    if dot:
        spelled += "."
    if port is not None:
        spelled += ":" + "0" * zeros + str(port)
    assert normalize_host(spelled).name == normalize_host(name).name


@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_spelling_is_the_same_address(value):
    dotted = normalize_host(str(value)).name
    octets = [int(x) for x in dotted.split(".")]
    spellings = [
        hex(value),
        ".".join(hex(o) for o in octets),
        ".".join("0" + oct(o)[2:] for o in octets),
        f"{octets[0]}.{(octets[1] << 16) + (octets[2] << 8) + octets[3]}",
        f"[::ffff:{dotted}]",
    ]
    assert {normalize_host(s).name for s in spellings} == {dotted}


@given(st.text(max_size=40))
def test_any_text_normalizes_or_raises_invalid_host(text):
    try:
        result = normalize_host(text)
    except InvalidHost:
        return
    assert result.name == result.name.lower()
    assert not result.name.endswith(".")
    assert normalize_host(result.name) == result


@pytest.mark.parametrize(
    "prefix, plain",
    [
        ("www", True), ("static", True), ("a1", True), ("api.v2", True), ("a-b", True), ("_dmarc", True),
        ("-a", False), ("a-", False), ("a.-b", False), ("a..b", False), ("", False), ("é", False),
        ("a" * 63, True), ("a" * 64, False), ("WWW", False), ("Www", False), ("123", True),
    ],
)  # fmt: skip
def test_plain_labels_before_a_known_domain(prefix, plain):
    from accessgate.policy.hosts import plain_labels

    assert plain_labels(prefix) is plain


@given(st.text(alphabet="ab09x-_.F", max_size=24) | st.builds(lambda n, tail: "a" * n + "." + tail,
                                                              st.integers(55, 70), st.text("ab0.-", max_size=8)))
def test_the_plain_name_shortcut_gives_what_the_full_path_gives(text):
    # plain_name answers most names before the full normalization runs; it
    # may decline (None) anything, but a name it gives must be the full path's.
    from accessgate.policy import hosts

    shortcut = hosts.plain_name(text)
    if shortcut is None:
        return
    try:
        full = hosts.normalize_host_fully(text).name
    except InvalidHost:
        full = None
    assert shortcut == full
