"""The shipped Prometheus config and rules, checked by Prometheus' own promtool.

`promtool test rules` runs deploy/prometheus/tests/accessgate.rules.test.yml:
each alert fires in the situation it is for and stays quiet otherwise.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from .conftest import INSTALL_GUIDE, PROMETHEUS_YML, RULE_TESTS, RULES, tool

ALERTS = [
    "AccessgatePolicyReloadFailing",
    "AccessgateFailingClosed",
    "AccessgateAuditRecordsNotWritten",
    "AccessgateStateStoreUnreachable",
    "AccessgateBlockRateSpike",
    "AccessgateProxyDown",
    "AccessgateDecisionLatencyHigh",
]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool", "prometheus"), *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [("check", "config", str(PROMETHEUS_YML)), ("check", "rules", str(RULES))],
    ids=["the scrape config is valid", "the rule file is valid"],
)
def test_promtool_accepts(args):
    done = promtool(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alerts_fire_when_they_should_and_only_then():
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def _alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_every_alert_is_shipped():
    assert sorted(_alert_rules()) == sorted(ALERTS)


def test_every_alert_has_a_unit_test():
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert sorted(tested) == sorted(ALERTS)


def _slug(heading: str) -> str:
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("alert", ALERTS)
def test_alert_says_what_is_wrong_and_links_its_runbook(alert):
    rule = _alert_rules()[alert]
    notes = rule["annotations"]
    assert notes["summary"] and notes["description"]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    path, _, anchor = notes["runbook"].partition("#")
    assert path == "deploy/README.md"
    headings = {
        _slug(line.lstrip("#")) for line in INSTALL_GUIDE.read_text().splitlines() if line.startswith("#")
    }
    assert anchor in headings, f"deploy/README.md has no heading for #{anchor}"
