"""The compose stack and the Grafana dashboard, checked without Docker or Grafana.

Docker does not run where the tests run, so the compose file is held to
what can be checked honestly: every file it mounts exists and is the very
file the other tests validate (promtool, haproxy -c, the dashboard's
queries against a real Prometheus), and the services name each other
consistently.  The dashboard's queries are evaluated for real in
test_prometheus_live.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import COMPOSE, DASHBOARD, DEPLOY, PROMETHEUS_DIR, PROMETHEUS_YML, ROOT, tool

COMPOSE_DIR = COMPOSE.parent
SPEC = yaml.safe_load(COMPOSE.read_text())
SERVICES = SPEC["services"]


def bind_mounts(service: str) -> dict[str, Path]:
    """container path -> host path, for the service's bind mounts."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_mounted_file_exists(service):
    for target, source in bind_mounts(service).items():
        assert source.exists(), f"{service} mounts {source} at {target}, which does not exist"


@pytest.mark.parametrize("service", sorted(s for s in SERVICES if "build" in SERVICES[s]))
def test_every_build_has_its_dockerfile(service):
    build = SERVICES[service]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).is_file()


@pytest.mark.parametrize(
    "service, target, source",
    [
        ("prometheus", "/etc/prometheus", PROMETHEUS_DIR),
        ("grafana", "/etc/grafana/provisioning", DEPLOY / "grafana" / "provisioning"),
        ("grafana", "/var/lib/grafana/dashboards", DASHBOARD.parent),
        ("haproxy", "/usr/local/etc/haproxy/haproxy.cfg", DEPLOY / "haproxy" / "haproxy.cfg"),
        ("accessgate-1", "/etc/accessgate/policy", ROOT / "policy"),
        ("accessgate-2", "/etc/accessgate/policy", ROOT / "policy"),
    ],
    ids=lambda v: v if isinstance(v, str) and not v.startswith("/") else None,
)
def test_services_use_the_files_the_tests_check(service, target, source):
    assert bind_mounts(service)[target] == source.resolve()


def test_prometheus_reads_the_checked_config():
    command = SERVICES["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert (PROMETHEUS_DIR / "prometheus.yml") == PROMETHEUS_YML


def _entrypoint() -> list[str]:
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    return json.loads(re.search(r"ENTRYPOINT (\[.*?\])", text, re.S).group(1).replace("\\\n", ""))


def _entrypoint_settings(service: str | None = None) -> dict[str, str]:
    """What `accessgate run` hands mitmdump in the image (plus a service's command)."""
    from .test_service_files import set_options

    argv = _entrypoint()
    assert argv[:2] == ["accessgate", "run"]
    return set_options(argv[2:] + (SERVICES[service]["command"] if service else []))


def test_prometheus_scrapes_every_proxy_on_its_metrics_port():
    port = _entrypoint_settings()["accessgate_metrics"].rsplit(":", 1)[1]
    proxies = sorted(s for s in SERVICES if s.startswith("accessgate-"))
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    targets = sorted(t for c in jobs["accessgate"]["static_configs"] for t in c["targets"])
    assert targets == [f"{p}:{port}" for p in proxies]


def test_proxies_share_redis_and_one_ca():
    for name in (s for s in SERVICES if s.startswith("accessgate-")):
        service = SERVICES[name]
        assert _entrypoint_settings(name)["accessgate_state"] == "redis://redis:6379/0"
        assert "mitmproxy-ca:/var/lib/accessgate/mitmproxy" in service["volumes"]
        assert service["depends_on"]["ca"]["condition"] == "service_completed_successfully"
    assert _entrypoint_settings()["confdir"] == "/var/lib/accessgate/mitmproxy"


def test_image_uses_the_same_paths_as_the_systemd_unit():
    from .test_service_files import set_options

    unit, image = set_options(), _entrypoint_settings()
    for option in ("accessgate_audit_log", "accessgate_state", "confdir"):
        assert image[option] == unit[option], option


def test_grafana_datasource_points_at_the_compose_prometheus():
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/accessgate.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_haproxy_accepts_the_compose_settings(tmp_path):
    """`haproxy -c` on the shipped config with compose's environment.

    Compose names the proxies by service name, which only Docker's DNS
    resolves; the check swaps them for 127.0.0.1 and keeps everything else.
    """
    haproxy = tool("haproxy", "haproxy")
    cfg = DEPLOY / "haproxy" / "haproxy.cfg"
    env = dict(SERVICES["haproxy"]["environment"])
    used = set(re.findall(r"\$\{(\w+)", cfg.read_text()))
    assert set(env) <= used, f"compose sets variables the config does not read: {set(env) - used}"
    for name, value in env.items():
        host, _, port = value.rpartition(":")
        env[name] = f"127.0.0.1:{port}" if host.startswith("accessgate-") else value
    done = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_balances_over_every_proxy():
    env = SERVICES["haproxy"]["environment"]
    proxies = sorted(s for s in SERVICES if s.startswith("accessgate-"))
    argv = _entrypoint()
    listen_port = argv[argv.index("--listen-port") + 1] if "--listen-port" in argv else "8080"
    assert sorted(v for k, v in env.items() if k.startswith("ACCESSGATE_PROXY")) == [
        f"{p}:{listen_port}" for p in proxies
    ]


def test_proxies_believe_proxy_headers_from_haproxy_alone():
    haproxy = SERVICES["haproxy"]["networks"]["default"]["ipv4_address"]
    subnet = ipaddress.ip_network(SPEC["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(haproxy) in subnet
    for name in (s for s in SERVICES if s.startswith("accessgate-")):
        assert _entrypoint_settings(name)["accessgate_trusted_proxies"] == f"{haproxy}/32"
    assert "send-proxy-v2" in (DEPLOY / "haproxy" / "haproxy.cfg").read_text()


# --- the dashboard ----------------------------------------------------------

BOARD = json.loads(DASHBOARD.read_text())
PANELS = [p for p in BOARD["panels"] if p["type"] != "row"]


def test_dashboard_json_is_generated_from_dashboard_py():
    done = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "dashboard.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == BOARD, "regenerate: python deploy/grafana/dashboard.py > " + str(DASHBOARD)


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_every_panel_has_queries(panel):
    assert panel["targets"], "a panel without targets shows nothing"
    for target in panel["targets"]:
        assert target["expr"].strip()
        assert target["datasource"]["uid"] == "${datasource}"


def test_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in BOARD["panels"]:
        g = panel["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert g["x"] + g["w"] <= 24, panel["title"]
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_panel_ids_are_unique():
    ids = [p["id"] for p in BOARD["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", ["site", "role"])
def test_site_and_role_variables_come_from_the_metrics(name):
    (var,) = [v for v in BOARD["templating"]["list"] if v["name"] == name]
    assert var["definition"] == f"label_values(accessgate_requests_total, {name})"
    assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"


def test_every_variable_used_is_defined():
    defined = {v["name"] for v in BOARD["templating"]["list"]} | {"__rate_interval", "__range"}
    for panel in PANELS:
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"]))
            assert used <= defined, f"{panel['title']}: undefined {used - defined}"
            # Multi-value variables expand to a regex: they need =~, never =.
            assert not re.search(r'[^=!]=\s*"\$(site|role)"', target["expr"]), target["expr"]


@pytest.mark.parametrize(
    "needle, what",
    [
        ('decision="block"', "blocks"),
        ('reason="read-only"', "read-only write attempts"),
        ("accessgate_quota_exhausted_total", "quota exhaustion"),
        ("accessgate_decision_duration_seconds_bucket", "decision latency"),
        ("histogram_quantile(0.99", "p99"),
        ("histogram_quantile(0.50", "p50"),
        ("accessgate_policy_info", "the policy version"),
        ("accessgate_policy_reloads_total", "reload history"),
        ("topk(10", "top blocked sites"),
        ('up{job="accessgate"}', "proxy health"),
        ("accessgate_fail_closed_total", "fail-closed blocks"),
        ("accessgate_audit_write_errors_total", "audit errors"),
        ("accessgate_warn_pages_total", "warn pages shown"),
        ("accessgate_warn_continues_total", "reasons given on warn pages"),
        ("accessgate_warn_refused_total", "refused warn forms"),
    ],
    ids=lambda v: v if " " in v or v.isalpha() else None,
)
def test_dashboard_shows(needle, what):
    exprs = [t["expr"] for p in PANELS for t in p["targets"]]
    assert any(needle in e for e in exprs), f"no panel shows {what}"


def test_compose_file_is_valid_for_docker_compose():
    """The compose tool's own check, where one is installed."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        try:
            probe = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            continue
        if probe.returncode == 0:
            done = subprocess.run([*argv, "-f", str(COMPOSE), "config", "-q"],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, shlex.join(argv) + ": " + done.stderr
            return
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")
