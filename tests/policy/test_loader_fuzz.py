"""Fuzzing the policy loader: damaged policies are rejected with PolicyError, never a crash.

Starts from a valid policy and breaks it the ways files really break:
truncated, bytes deleted or inserted, lines swapped, arbitrary text.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accessgate.errors import PolicyError
from accessgate.policy.loader import parse_policy
from accessgate.policy.model import Policy

SEEDS = [
    (Path(__file__).parents[1] / "adversarial" / "policy.yaml").read_text(),
    (Path(__file__).parents[2] / "policy" / "minimal.yaml").read_text(),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NASTY = st.sampled_from(["", ":", "- ", "{", "}", "[", "]", "&a", "*a", "!!python/object:os.system", "\t",
                         "'", '"', "\x00", "\ufeff", "~", "? ", "%YAML 1.1\n", "---\n", "<<: *a",
                         "99999999999999999999", "-1", "24:60", "::/0", "mon-fri 25:00-26:00"])  # fmt: skip


def _check(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        assert exc.problems, "a PolicyError names at least one problem"
        for problem in exc.problems:
            assert problem.message and str(problem)
        return
    assert isinstance(policy, Policy)


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_truncated_policy(seed, data):
    _check(seed[: data.draw(st.integers(0, len(seed)))])


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_spliced_policy(seed, data):
    start = data.draw(st.integers(0, len(seed)))
    end = data.draw(st.integers(start, min(len(seed), start + 20)))
    insert = data.draw(st.one_of(NASTY, st.text(max_size=10)))
    _check(seed[:start] + insert + seed[end:])


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_shuffled_lines(seed, data):
    lines = seed.splitlines()
    _check("\n".join(data.draw(st.permutations(lines))))


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    _check(text)
