"""The soak's CI variant: two minutes of mixed traffic at saturation through a real
mitmdump + accessgate, then every verdict of benchmarks/soak.py must hold.

Needs nginx (Debian nginx-light); skipped without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "benchmarks" / "soak.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()),
                       reason="needs nginx: apt-get install nginx-light"),
]


@pytest.fixture(scope="module")
def soak(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert out.exists(), f"soak.py wrote no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())
    report["_output"] = done.stdout + done.stderr
    report["_exit"] = done.returncode
    return report


@pytest.mark.parametrize(
    "verdict",
    [
        pytest.param("records_equal", id="one audit record per request sent, none lost on SIGINT"),
        pytest.param("outcomes_equal", id="audit log agrees with what clients got, per decision and reason"),
        pytest.param("rss_flat", id="RSS of the last quarter within 10 percent of the first"),
        pytest.param("clean_exit", id="mitmdump exits 0 after SIGINT"),
    ],
)
def test_verdict_holds(soak, verdict):
    assert soak["verdicts"][verdict], soak["_output"]


def test_exit_status_follows_the_verdicts(soak):
    assert soak["_exit"] == (0 if soak["ok"] else 1), soak["_output"]


def test_traffic_was_real_and_answered(soak):
    # A soak that sent almost nothing, or whose requests went unanswered, proves nothing.
    assert soak["requests"] >= 1000, soak["_output"]
    assert soak["errors"] == 0 and soak["connect_errors"] == 0, soak["_output"]


@pytest.mark.parametrize(
    "outcome",
    ["allow/allowed", "allow/unlisted", "block/denied", "block/read-only"],
    ids=lambda o: f"mix contains {o}",
)
def test_mix_covers_each_kind_of_decision(soak, outcome):
    assert soak["audit_by_reason"].get(outcome, 0) > 0, soak["audit_by_reason"]
