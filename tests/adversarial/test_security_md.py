"""SECURITY.md lists exactly the cases of the bypass table, with the same decisions."""

from __future__ import annotations

import re
from pathlib import Path

from cases import CASES

SECURITY_MD = Path(__file__).resolve().parents[2] / "SECURITY.md"
ROW = re.compile(r"^\| `([a-z0-9.-]+)` \| (.+?) \| (plain|passthrough|streaming|inspect|inspect-refuse-ech|balanced) "
                 r"\| (allow|block) \|$")


def listed() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in SECURITY_MD.read_text().splitlines():
        if m := ROW.match(line):
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = (m.group(3), m.group(4))
    return rows


def test_every_case_is_listed_with_its_decision():
    assert listed() == {c.id: (c.proxy, c.decision) for c in CASES}


def test_bypasses_named_as_fixed_are_cases():
    text = SECURITY_MD.read_text().split("## Bypasses found and fixed", 1)[1].split("##", 1)[0]
    named = re.findall(r"\(`([a-z0-9.*-]+)`\)", text)
    ids = [c.id for c in CASES]
    assert named
    for name in named:
        assert any(re.fullmatch(name.replace("*", ".*"), i) for i in ids), name
