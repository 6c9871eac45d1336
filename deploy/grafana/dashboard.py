"""Writes dashboards/accessgate.json, the provisioned Grafana dashboard.

    python deploy/grafana/dashboard.py > deploy/grafana/dashboards/accessgate.json

The dashboard is code so that its PromQL can be reviewed and tested
(tests/ops/ evaluates every expression against a real Prometheus); edit
here, regenerate, and commit both.  `$site` and `$role` are multi-value
template variables, so every selector on them uses `=~`.

Error panels end in `or on (instance) (0 * up{job="accessgate"})`: a
healthy proxy then shows a flat zero instead of "No data", which would look
the same as a proxy whose metrics are missing.
"""

from __future__ import annotations

import json
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'site=~"$site", role=~"$role"'
BLOCKED = SEL + ', decision="block"'
READ_ONLY = SEL + ', reason="read-only"'
ZERO_PER_PROXY = 'or on (instance) (0 * up{job="accessgate"})'

_next_id = 0


def _id() -> int:
    global _next_id
    _next_id += 1
    return _next_id


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def _panel(kind: str, title: str, targets: list[dict], grid: tuple[int, int, int, int], description: str,
           defaults: dict, options: dict) -> dict:
    x, y, w, h = grid
    return {
        "id": _id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def timeseries(title: str, targets: list[dict], x: int, y: int, w: int = 12, h: int = 8,
               unit: str = "reqps", description: str = "", stack: bool = False) -> dict:
    return _panel("timeseries", title, targets, (x, y, w, h), description, {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }, {
        "legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    })


def stat(title: str, targets: list[dict], x: int, y: int, w: int = 6, h: int = 4,
         unit: str = "none", description: str = "", thresholds: list[dict] | None = None) -> dict:
    return _panel("stat", title, targets, (x, y, w, h), description, {
        "unit": unit,
        "thresholds": {"mode": "absolute", "steps": thresholds or [{"color": "green", "value": None}]},
    }, {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value", "graphMode": "area", "textMode": "auto"})


def table(title: str, targets: list[dict], x: int, y: int, w: int = 12, h: int = 8,
          description: str = "", hide: tuple[str, ...] = ("Time",), unit: str = "none") -> dict:
    return {
        "id": _id(),
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]},
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {name: True for name in hide}}}
        ],
    }


def bargauge(title: str, targets: list[dict], x: int, y: int, w: int = 12, h: int = 8,
             description: str = "") -> dict:
    return {
        "id": _id(),
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": "short", "color": {"mode": "continuous-YlRd"}},
                        "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "gradient",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


def row(title: str, y: int) -> dict:
    return {"id": _id(), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def rate(metric: str, selector: str) -> str:
    return f"rate({metric}{{{selector}}}[$__rate_interval])"


def panels() -> list[dict]:
    req = "accessgate_requests_total"
    hist = "accessgate_decision_duration_seconds_bucket"
    store_hist = "accessgate_state_store_duration_seconds_bucket"
    p: list[dict] = []

    p.append(row("Overview", 0))
    p.append(stat("Requests/s", [target(f"sum({rate(req, SEL)})", "requests")], 0, 1,
                  unit="reqps", description="Decisions per second, all proxies, for the selected sites and roles."))
    p.append(stat("Blocked", [target(
        f"(sum({rate(req, BLOCKED)}) or vector(0)) / sum({rate(req, SEL)})",
        "blocked")], 6, 1, unit="percentunit",
        description="Share of requests blocked."))
    p.append(stat("Proxies up", [target('sum(up{job="accessgate"})', "up")], 12, 1,
                  description="Proxies Prometheus can scrape.",
                  thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]))
    p.append(stat("Fail-closed blocks (1h)", [target(
        "sum(increase(accessgate_fail_closed_total[1h])) or vector(0)", "fail-closed")], 18, 1,
        description="Requests blocked because accessgate itself failed. Should be 0.",
        thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]))

    p.append(row("Requests", 5))
    p.append(timeseries("Requests by decision and reason", [target(
        f"sum by (decision, reason) ({rate(req, SEL)})", "{{decision}} {{reason}}")], 0, 6, stack=True))
    p.append(timeseries("Requests by site", [target(
        f"sum by (site) ({rate(req, SEL)})", "{{site}}")], 12, 6, stack=True))
    p.append(timeseries("Blocks by reason", [target(
        f"sum by (reason) ({rate(req, BLOCKED)})", "{{reason}}")],
        0, 14, stack=True))
    p.append(timeseries("Blocks by role", [target(
        f"sum by (role) ({rate(req, BLOCKED)})", "{{role}}")],
        12, 14, stack=True))
    p.append(bargauge("Top blocked sites (dashboard range)", [target(
        f"topk(10, sum by (site) (increase({req}{{{BLOCKED}}}[$__range])))",
        "{{site}}", instant=True)], 0, 22,
        description="The ten sites with the most blocks over the time range shown."))
    p.append(timeseries("Read-only write attempts", [target(
        f"sum by (site, role) ({rate(req, READ_ONLY)})",
        "{{site}} / {{role}}")], 12, 22,
        description="Writes (POST, PUT, method overrides, WebSocket upgrades) blocked on read-only sites."))

    p.append(row("Quotas and traffic", 30))
    p.append(timeseries("Quota exhausted blocks", [target(
        f"sum by (site, role) ({rate('accessgate_quota_exhausted_total', SEL)})", "{{site}} / {{role}}")],
        0, 31, description="Requests blocked because the daily minutes were used up."))
    p.append(timeseries("Quota minutes counted", [target(
        f"sum by (site, role) (increase(accessgate_quota_minutes_total{{{SEL}}}[$__rate_interval]))",
        "{{site}} / {{role}}")], 12, 31, unit="m",
        description="Minutes counted against daily quotas, per interval."))
    p.append(timeseries("Bytes by site", [target(
        f'sum by (site, direction) (rate(accessgate_bytes_total{{site=~"$site"}}[$__rate_interval]))',
        "{{site}} {{direction}}")], 0, 39, w=24, unit="Bps"))

    p.append(row("Latency", 47))
    p.append(timeseries("Decision latency", [
        target(f"histogram_quantile(0.50, sum by (le) (rate({hist}[$__rate_interval])))", "p50", "A"),
        target(f"histogram_quantile(0.99, sum by (le) (rate({hist}[$__rate_interval])))", "p99", "B"),
    ], 0, 48, unit="s", description="Time to decide one request (alert: p99 over 5 ms for 10 minutes)."))
    p.append(timeseries("State store latency (p99)", [target(
        f"histogram_quantile(0.99, sum by (store, operation, le) (rate({store_hist}[$__rate_interval])))",
        "{{store}} {{operation}}")], 12, 48, unit="s"))

    p.append(row("Policy", 56))
    p.append(table("Policy in force", [target(
        "max by (instance, hash) (accessgate_policy_info)", instant=True)], 0, 57, w=8,
        hide=("Time", "Value"), description="The policy hash each proxy enforces: all proxies should agree."))
    p.append(timeseries("Policy reloads", [target(
        "sum by (result) (increase(accessgate_policy_reloads_total[$__rate_interval]))", "{{result}}")],
        8, 57, w=8, unit="short", description="Reloads per interval; a failure keeps the last good policy."))
    p.append(table("Last reload", [target(
        "max by (instance, result) (accessgate_policy_last_reload_timestamp_seconds) * 1000",
        instant=True)], 16, 57, w=8, unit="dateTimeAsIso",
        description="When each proxy last loaded (success) or rejected (failure) a policy."))

    p.append(row("Proxy health", 65))
    p.append(timeseries("Proxies up", [target('up{job="accessgate"}', "{{instance}}")], 0, 66, w=8,
                        unit="none"))
    p.append(timeseries("Fail-closed blocks", [target(
        f"sum by (instance, stage) (rate(accessgate_fail_closed_total[$__rate_interval])) {ZERO_PER_PROXY}",
        "{{instance}} {{stage}}")], 8, 66, w=8))
    p.append(timeseries("State store errors", [target(
        f"sum by (instance, store) (rate(accessgate_state_store_errors_total[$__rate_interval])) {ZERO_PER_PROXY}",
        "{{instance}} {{store}}")], 16, 66, w=8, unit="short"))
    p.append(timeseries("Audit records written", [target(
        "sum by (instance) (rate(accessgate_audit_records_total[$__rate_interval]))", "{{instance}}")],
        0, 74, w=8, unit="short"))
    p.append(timeseries("Audit errors and drops", [
        target(f"sum by (instance) (rate(accessgate_audit_write_errors_total[$__rate_interval])) {ZERO_PER_PROXY}",
               "{{instance}} write errors", "A"),
        target(f"sum by (instance) (rate(accessgate_audit_dropped_records_total[$__rate_interval])) {ZERO_PER_PROXY}",
               "{{instance}} dropped", "B"),
    ], 8, 74, w=8, unit="short", description="Should be 0: every request has a record."))
    p.append(timeseries("Audit records pending", [target(
        "sum by (instance) (accessgate_audit_pending_records)", "{{instance}}")], 16, 74, w=8, unit="short",
        description="Records waiting to be written (alert over 10000)."))

    p.append(row("Warn pages", 82))
    p.append(timeseries("Warn pages shown and reasons given", [
        target(f"sum by (site, role) (increase(accessgate_warn_pages_total{{{SEL}}}[$__rate_interval]))",
               "{{site}} / {{role}} pages", "A"),
        target(f"sum by (site, role) (increase(accessgate_warn_continues_total{{{SEL}}}[$__rate_interval]))",
               "{{site}} / {{role}} continued", "B"),
    ], 0, 83, unit="short",
        description="Warn grants: pages that asked for a reason, and reasons given (the site then opens for "
                    "the grant's continue_minutes; the reasons are in the audit log, event warn_continued)."))
    p.append(timeseries("Warn forms refused", [target(
        f'sum by (site) (increase(accessgate_warn_refused_total{{site=~"$site"}}[$__rate_interval])) {ZERO_PER_PROXY}',
        "{{site}}")], 12, 83, unit="short",
        description="Forms refused: forged, replayed, expired, from another origin or for another site or user. "
                    "A steady rate is worth a look (audit event warn_refused says why)."))
    return p


def variable(name: str, label: str, metric_label: str) -> dict:
    query = f"label_values(accessgate_requests_total, {metric_label})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict:
    return {
        "uid": "accessgate",
        "title": "accessgate",
        "description": "Who reaches which social sites, what is blocked and why, and whether the proxies are healthy.",
        "tags": ["accessgate", "proxy"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {"text": "Prometheus", "value": "prometheus"}, "hide": 0},
            variable("site", "Site", "site"),
            variable("role", "Role", "role"),
        ]},
        "annotations": {"list": [{
            "name": "Policy reloads",
            "datasource": DS,
            "enable": True,
            "iconColor": "blue",
            "expr": "changes(accessgate_policy_last_reload_timestamp_seconds[2m]) > 0",
            "titleFormat": "policy reload: {{result}}",
            "textFormat": "{{instance}}",
            "step": "1m",
        }]},
        "panels": panels(),
    }


if __name__ == "__main__":
    json.dump(dashboard(), sys.stdout, indent=2)
    sys.stdout.write("\n")
