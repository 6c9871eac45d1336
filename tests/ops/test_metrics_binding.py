"""The shipped configs and docs keep the unauthenticated metrics endpoint off client networks.

Metrics are labelled by role and site, minute by minute: whoever reads them
learns what roles (and a one-person role's member) do.  Every place the
project tells operators how to run a proxy binds them to loopback or to a
management address, never to every interface of a host clients reach.  The
container image is the one exception: it binds inside its own network, and
the compose file publishes no port of the proxies.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EVERY_INTERFACE = re.compile(r"--metrics[ =](0\.0\.0\.0|\[?::\]?):\d+|accessgate_metrics=(0\.0\.0\.0|\[?::\]?):")
# Files an operator copies or follows to run a proxy.
SHIPPED = ["deploy/systemd/accessgate.default", "deploy/systemd/accessgate.service", "deploy/README.md",
           "docs/running.md", "README.md", "scripts/run"]


def test_no_shipped_config_or_doc_binds_metrics_to_every_interface():
    found = [f"{name}: {m.group(0)}" for name in SHIPPED if (ROOT / name).exists()
             for line in (ROOT / name).read_text().splitlines()
             if (m := EVERY_INTERFACE.search(line)) and not re.search(r"\bnever\b|\bNever\b", line)]
    assert not found, found


def test_the_systemd_example_binds_metrics_to_a_management_address():
    text = (ROOT / "deploy/systemd/accessgate.default").read_text()
    (example,) = re.findall(r"^# ACCESSGATE_OPTS=.*$", text, re.M)
    address = re.search(r"--metrics (\S+)", example).group(1)
    assert not address.startswith(("0.0.0.0", "[::]", "::")), example


def test_compose_publishes_no_port_of_the_proxies():
    services = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())["services"]
    proxies = [name for name in services if name.startswith("accessgate-")]
    assert proxies
    for name in proxies:
        assert "ports" not in services[name], f"{name} publishes {services[name]['ports']}"


def test_the_docs_say_how_to_keep_metrics_to_prometheus():
    text = (ROOT / "deploy/README.md").read_text()
    section = text.split("## Metrics: who may read them", 1)[1].split("\n## ", 1)[0]
    assert "meta skuid accessgate tcp dport 9464 reject" in section  # the proxy cannot fetch them for a client
    assert "tcp dport 9464 ip saddr" in section  # only Prometheus may connect
