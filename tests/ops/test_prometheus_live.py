"""A real Prometheus scraping a real accessgate proxy under a short load.

Prometheus (the Debian package's binary) loads the shipped rule file and
scrapes a real mitmdump + accessgate every second while a client sends
allowed, denied, read-only, quota-exhausted and unlisted requests through
it to a local origin.  Then every Grafana panel's PromQL and every rule is
evaluated through Prometheus' HTTP API: each must parse, and each panel
must return series.  Finally the policy file is broken and
AccessgatePolicyReloadFailing must fire, and clear once the file is fixed.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from support.origin import Origin
from support.processes import stop_process
from support.proxy import launch, make_confdir, start_proxy

from .conftest import DASHBOARD, RULES, tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POLICY = """\
version: 1
sites:
  facebook: {{domains: [facebook.test]}}
  linkedin: {{domains: [linkedin.test]}}
  tiktok: {{domains: [tiktok.test]}}
  youtube: {{domains: [youtube.test]}}
  reddit: {{domains: [reddit.test]}}
roles:
  staff:
    members: [all]
    access:
      facebook: {{level: full, daily_minutes: 30}}
      linkedin: read-only
      youtube: {{level: full, daily_minutes: 1}}
      reddit: warn
      "*": deny
unauthenticated: staff
unlisted: allow
# revision {revision}
"""

# (method, url, expected reason): one round of the load.
LOAD = [
    ("GET", "http://facebook.test/", "allowed"),
    ("GET", "http://linkedin.test/feed", "allowed"),
    ("POST", "http://linkedin.test/post", "read-only"),
    ("GET", "http://tiktok.test/", "denied"),
    ("GET", "http://youtube.test/watch", "quota-exhausted"),
    ("GET", "http://news.test/", "unlisted"),
    ("GET", "http://reddit.test/", "justification-required"),
]
ROUNDS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        binary = tool("prometheus", "prometheus")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "accessgate", "static_configs": [{"targets": [target]}]}],
        }))
        self.process, self.out, self.err = launch(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            cwd=workdir,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.err.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {timeout}s: {self.err.read_text()}")

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:  # 400 with the parse error in the body
            return json.load(exc)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, predicate, what: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            got = predicate()
            if got:
                return got
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus: {what} did not happen within {timeout}s")
            time.sleep(0.25)

    def alert_state(self, name: str) -> str:
        for group in self.api("rules", type="alert")["data"]["groups"]:
            for rule in group["rules"]:
                if rule["name"] == name:
                    return rule["state"]
        raise KeyError(name)

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tool("prometheus", "prometheus")
    tmp = tmp_path_factory.mktemp("live")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(revision=1))
    state = f"sqlite:{tmp / 'state.sqlite'}"
    _spend_youtube_quota(state)
    origin = Origin()
    proxy = prom = None
    try:
        proxy = start_proxy(policy=policy, confdir=make_confdir(tmp), workdir=tmp / "proxy",
                            origin=origin, metrics=True, state=state)
        prom = Prometheus(tmp, f"127.0.0.1:{proxy.metrics_port}")
        prom.wait_for(lambda: prom.value('up{job="accessgate"}') == 1, "the first scrape")
        _load(proxy.url)
        expected = ROUNDS * len(LOAD)
        prom.wait_for(lambda: (prom.value("sum(accessgate_requests_total)") or 0) >= expected,
                      f"{expected} requests counted")
        time.sleep(2)  # a few more scrapes and rule evaluations after the load
        yield prom, proxy, policy
    finally:
        if prom:
            prom.stop()
        if proxy:
            proxy.stop()
        origin.stop()


def _spend_youtube_quota(state: str) -> None:
    """Use up the anonymous client's 1 daily minute on youtube, a minute ago."""
    from accessgate.stores import open_store

    now = datetime.now(timezone.utc)
    store = open_store(state)
    try:
        store.mark("ip:127.0.0.1", "youtube", now.date(), int(now.timestamp() // 60) - 1)
    finally:
        store.close()


def _load(proxy_url: str) -> None:
    """ROUNDS rounds of LOAD, spread over ~3 s so that scrapes see the counters grow."""
    with httpx.Client(proxy=proxy_url, timeout=10) as client:
        for _ in range(ROUNDS):
            for method, url, reason in LOAD:
                response = client.request(method, url)
                blocked = reason not in ("allowed", "unlisted")
                assert (response.status_code == 403) == blocked, (method, url, response.status_code)
                if blocked:
                    assert response.headers["X-Accessgate-Reason"] == reason
            time.sleep(0.5)
        _warn_page(client)


def _warn_page(client: httpx.Client) -> None:
    """A browser's warn page on reddit, a forged form (refused), then the real one (continued)."""
    page = client.get("http://reddit.test/", headers={"Accept": "text/html"})
    token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
    form = "http://reddit.test/__accessgate/continue"
    origin = {"Origin": "http://reddit.test"}
    assert client.post(form, data={"token": token + "x", "reason": "metrics"}, headers=origin).status_code == 403
    assert client.post(form, data={"token": token, "reason": "metrics"}, headers=origin).status_code == 303


def _panel_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    for note in board["annotations"]["list"]:
        if "expr" in note:
            queries.append((f"annotation {note['name']}", note["expr"]))
    return queries


def grafana_to_promql(expr: str) -> str:
    # What Grafana substitutes for "All" and its built-in intervals.
    return (
        expr.replace("$__rate_interval", "30s")
        .replace("$__range", "5m")
        .replace("$site", ".*")
        .replace("$role", ".*")
    )


PANEL_QUERIES = _panel_queries()


@pytest.mark.parametrize("expr", [pytest.param(expr, id=title) for title, expr in PANEL_QUERIES])
def test_every_dashboard_query_returns_series(stack, expr):
    prom, _, _ = stack
    answer = prom.query(grafana_to_promql(expr))
    assert answer["status"] == "success", answer.get("error")
    if expr.startswith("changes("):
        return  # the annotation: series only around a reload
    assert answer["data"]["result"], f"no series for {expr}"


@pytest.mark.parametrize(
    "labels, reason",
    [({"site": "facebook"}, "allowed"), ({"site": "linkedin"}, "read-only"),
     ({"site": "tiktok"}, "denied"), ({"site": "youtube"}, "quota-exhausted"),
     ({"site": "unlisted"}, "unlisted")],
    ids=["allowed", "read-only", "denied", "quota-exhausted", "unlisted"],
)
def test_requests_are_counted_by_site_and_reason(stack, labels, reason):
    prom, _, _ = stack
    value = prom.value(f'sum(accessgate_requests_total{{site="{labels["site"]}", reason="{reason}"}})')
    assert value is not None and value >= ROUNDS


def test_every_rule_evaluates_without_error(stack):
    prom, _, _ = stack
    groups = prom.api("rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 11
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken


@pytest.mark.parametrize(
    "alert",
    ["AccessgateProxyDown", "AccessgateFailingClosed", "AccessgateAuditRecordsNotWritten",
     "AccessgateStateStoreUnreachable", "AccessgatePolicyReloadFailing"],
)
def test_a_healthy_proxy_raises_no_alert(stack, alert):
    prom, _, _ = stack
    assert prom.alert_state(alert) == "inactive"


def test_a_broken_policy_file_fires_the_reload_alert_until_fixed(stack):
    prom, proxy, policy = stack
    policy.write_text("version: 1\nsites: [this is: not a policy\n")
    prom.wait_for(lambda: prom.alert_state("AccessgatePolicyReloadFailing") in ("pending", "firing"),
                  "AccessgatePolicyReloadFailing")
    assert proxy.alive(), "an invalid policy must not stop a running proxy"
    policy.write_text(POLICY.format(revision=2))
    prom.wait_for(lambda: prom.alert_state("AccessgatePolicyReloadFailing") == "inactive",
                  "the alert clearing after a valid policy")
    hashes = prom.wait_for(
        lambda: len(prom.query("max_over_time(accessgate_policy_info[1m])")["data"]["result"]) == 2,
        "a second policy hash in accessgate_policy_info")
    assert hashes
