"""Paths and tools shared by the operations-pack tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "accessgate.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "accessgate.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "accessgate.json"
UNIT = DEPLOY / "systemd" / "accessgate.service"
LOGROTATE = DEPLOY / "logrotate" / "accessgate"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
INSTALL_GUIDE = DEPLOY / "README.md"
ARTIFACTS = ROOT / "test-artifacts"


def tool(name: str, package: str) -> str:
    """Path of `name`, or skip the test naming the Debian package that has it."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package}; scripts/test installs it)")
    return path
