"""Fuzzing window parsing: any text is a Window or a ValueError with a plain sentence."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from accessgate.policy.windows import parse_window

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
TIME = st.tuples(st.integers(0, 24), st.integers(0, 59)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")
DAYSPEC = st.one_of(
    st.sampled_from(DAYS),
    st.tuples(st.sampled_from(DAYS), st.sampled_from(DAYS)).map("-".join),
    st.lists(st.sampled_from(DAYS), min_size=1, max_size=3, unique=True).map(",".join),
)
NEAR = st.tuples(DAYSPEC, TIME, TIME).map(lambda t: f"{t[0]} {t[1]}-{t[2]}")
ALPHABET = st.sampled_from(list("monthuwedfrisatsun0123456789:- ,\t\n\u00a0２"))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=60), NEAR, st.text(ALPHABET, max_size=40)))
def test_window_text_parses_or_says_why(text):
    try:
        window = parse_window(text)
    except ValueError as exc:
        message = str(exc)
        assert message and not message.startswith("Traceback")
        return
    assert window is not None


@settings(max_examples=300, deadline=None)
@given(NEAR)
def test_well_formed_windows_parse_unless_a_time_is_out_of_range(text):
    times = text.split(" ", 1)[1].split("-")
    bad = any(int(t[:2]) > 24 or (t.startswith("24") and t != "24:00") for t in times)
    try:
        parse_window(text)
    except ValueError:
        empty = times[0] == times[1]  # a window must have some length
        assert bad or empty or times[0] == "24:00", text
