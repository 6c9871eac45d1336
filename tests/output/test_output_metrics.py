"""Metric names and labels as the contract and the dashboards name them; the endpoint.

Each test has a registry of its own, so counts never leak between tests.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from accessgate.audit import AuditStats
from accessgate.engine import Decision
from accessgate.metrics import Metrics, MetricsServer, parse_address
from accessgate.model import Level


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# name -> (attribute, type, label names) that Grafana, alerts and the contract rely on.
EXPECTED = {
    "accessgate_requests": ("requests", "counter", {"site", "role", "decision", "reason"}),
    "accessgate_decision_duration_seconds": ("decision_seconds", "histogram", set()),
    "accessgate_policy_reloads": ("policy_reloads", "counter", {"result"}),
    "accessgate_policy_info": ("policy_info", "gauge", {"hash"}),
    "accessgate_policy_last_reload_timestamp_seconds": ("last_reload", "gauge", {"result"}),
    "accessgate_quota_exhausted": ("quota_exhausted", "counter", {"site", "role"}),
    "accessgate_quota_minutes": ("quota_minutes", "counter", {"site", "role"}),
    "accessgate_bytes": ("bytes", "counter", {"site", "direction"}),
    "accessgate_fail_closed": ("fail_closed", "counter", {"stage"}),
    "accessgate_audit_records": ("audit_records", "counter", set()),
    "accessgate_audit_write_errors": ("audit_errors", "counter", set()),
    "accessgate_audit_pending_records": ("audit_pending", "gauge", set()),
    "accessgate_audit_dropped_records": ("audit_dropped", "counter", set()),
    "accessgate_state_store_errors": ("state_errors", "counter", {"store"}),
    "accessgate_state_store_duration_seconds": (
        "state_seconds", "histogram", {"store", "operation"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", EXPECTED)
def test_every_metric_has_its_name_type_and_labels(registry, metrics, name) -> None:
    attribute, kind, labels = EXPECTED[name]
    metric = getattr(metrics, attribute)
    # .labels() refuses names the metric was not declared with.
    child = metric.labels(**{label: "x" for label in labels}) if labels else metric
    {"counter": lambda: child.inc(), "gauge": lambda: child.set(1),
     "histogram": lambda: child.observe(0.001)}[kind]()  # fmt: skip
    family = next(f for f in registry.collect() if f.name == name)
    assert family.type == kind
    for s in family.samples:
        assert set(s.labels) - {"le"} == labels
    if kind == "counter":
        assert any(s.name == name + "_total" for s in family.samples)


def blocked(site, role, reason, host="www.example.com") -> Decision:
    return Decision("block", reason, "rule", site=site, role=role, host=host, level=Level.DENY)


@pytest.mark.parametrize(
    "decision, labels",
    [
        pytest.param(
            Decision(
                "allow",
                "allowed",
                "roles.marcom.access.*",
                site="facebook",
                role="marcom",
                host="www.facebook.com",
                level=Level.FULL,
            ),
            {"site": "facebook", "role": "marcom", "decision": "allow", "reason": "allowed"},
            id="site-and-role-from-the-policy",
        ),
        pytest.param(
            Decision("allow", "unlisted", "unlisted", host="example.org"),
            {"site": "unlisted", "role": "none", "decision": "allow", "reason": "unlisted"},
            id="unlisted-host-has-site-unlisted-and-role-none",
        ),
        pytest.param(
            Decision("block", "denied", "invalid-host", host=None),
            {"site": "none", "role": "none", "decision": "block", "reason": "denied"},
            id="no-usable-host-has-site-none",
        ),
        pytest.param(
            blocked(None, None, "unauthenticated", host="www.facebook.com"),
            {"site": "unlisted", "role": "none", "decision": "block", "reason": "unauthenticated"},
            id="anonymous-has-role-none",
        ),
    ],
)
def test_decisions_are_counted_with_policy_labels_only(registry, metrics, decision, labels) -> None:
    metrics.observe_decision(decision, 4e-6)
    assert sample(registry, "accessgate_requests_total", **labels) == 1
    assert sample(registry, "accessgate_decision_duration_seconds_count") == 1
    assert sample(registry, "accessgate_decision_duration_seconds_bucket", le="5e-06") == 1
    assert sample(registry, "accessgate_decision_duration_seconds_bucket", le="2.5e-06") == 0
    text = scrape_text(registry)
    assert "alice" not in text and "www." not in text and "example.org" not in text


def test_quota_exhausted_blocks_are_counted_by_site_and_role(registry, metrics) -> None:
    for _ in range(3):
        metrics.observe_decision(blocked("facebook", "everyone", "quota-exhausted"))
    metrics.observe_decision(blocked("facebook", "everyone", "outside-window"))
    assert (
        sample(registry, "accessgate_quota_exhausted_total", site="facebook", role="everyone") == 3
    )
    assert sample(registry, "accessgate_decision_duration_seconds_count") == 0, "untimed"


def test_policy_info_shows_only_the_current_hash(registry, metrics) -> None:
    metrics.set_policy("aaaa")
    metrics.set_policy("bbbb")
    metrics.set_policy("bbbb")
    assert sample(registry, "accessgate_policy_info", hash="bbbb") == 1
    assert sample(registry, "accessgate_policy_info", hash="aaaa") is None
    assert scrape_text(registry).count("accessgate_policy_info{") == 1


def test_reloads_are_counted_by_result_with_their_time(registry, metrics) -> None:
    metrics.observe_reload(True, 1000.0)
    metrics.observe_reload(False, 1005.0)
    metrics.observe_reload(False, 1010.0)
    assert sample(registry, "accessgate_policy_reloads_total", result="success") == 1
    assert sample(registry, "accessgate_policy_reloads_total", result="failure") == 2
    assert (
        sample(registry, "accessgate_policy_last_reload_timestamp_seconds", result="failure")
        == 1010.0
    )


def test_audit_counters_follow_the_writer_stats_and_survive_a_new_writer(registry, metrics) -> None:
    metrics.observe_audit(AuditStats(written=10, pending=5, dropped=0, errors=1))
    metrics.observe_audit(AuditStats(written=25, pending=0, dropped=2, errors=1))
    assert sample(registry, "accessgate_audit_records_total") == 25
    assert sample(registry, "accessgate_audit_pending_records") == 0
    assert sample(registry, "accessgate_audit_dropped_records_total") == 2
    assert sample(registry, "accessgate_audit_write_errors_total") == 1
    # The path option changed: a new AuditLog counts from zero again.
    metrics.observe_audit(AuditStats(written=4, pending=1, dropped=0, errors=0))
    assert sample(registry, "accessgate_audit_records_total") == 29
    assert sample(registry, "accessgate_audit_pending_records") == 1


def test_the_plain_counters_take_the_labels_the_addon_gives(registry, metrics) -> None:
    metrics.bytes.labels("facebook", "in").inc(100)
    metrics.bytes.labels("facebook", "out").inc(2000)
    metrics.quota_minutes.labels("facebook", "everyone").inc()
    metrics.fail_closed.labels("requestheaders").inc()
    metrics.state_errors.labels("redis").inc()
    metrics.state_seconds.labels("sqlite", "mark").observe(0.0002)
    assert sample(registry, "accessgate_bytes_total", site="facebook", direction="out") == 2000
    assert sample(registry, "accessgate_quota_minutes_total", site="facebook", role="everyone") == 1
    assert sample(registry, "accessgate_fail_closed_total", stage="requestheaders") == 1
    assert sample(registry, "accessgate_state_store_errors_total", store="redis") == 1
    assert (
        sample(
            registry,
            "accessgate_state_store_duration_seconds_bucket",
            store="sqlite",
            operation="mark",
            le="0.00025",
        )
        == 1
    )


def test_two_metrics_objects_never_share_a_registry_or_counts() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).fail_closed.labels("x").inc()
    Metrics(b)
    assert a.get_sample_value("accessgate_fail_closed_total", {"stage": "x"}) == 1
    assert b.get_sample_value("accessgate_fail_closed_total", {"stage": "x"}) is None


def scrape_text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def scrape(host: str, port: int) -> str:
    url_host = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{url_host}:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def port_is_closed(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) != 0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="ipv4"),
        pytest.param(
            "::1",
            id="ipv6",
            marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
def test_server_serves_the_registry_and_stops_without_leaving_threads(
    registry, metrics, host
) -> None:
    before = set(threading.enumerate())
    fds_before = len(os.listdir("/proc/self/fd"))
    metrics.observe_decision(blocked("facebook", "everyone", "denied"))
    server = MetricsServer(registry, host, 0)
    port = server.start()
    assert port > 0
    families = {f.name: f for f in text_string_to_metric_families(scrape(host, port))}
    (s,) = [s for s in families["accessgate_requests"].samples if s.name.endswith("_total")]
    assert s.labels == {
        "site": "facebook",
        "role": "everyone",
        "decision": "block",
        "reason": "denied",
    }
    assert s.value == 1
    server.stop()
    assert port_is_closed(host, port)
    assert set(threading.enumerate()) <= before, "the server thread is gone"
    assert len(os.listdir("/proc/self/fd")) <= fds_before, "the listening socket is closed"


def test_server_restarts_on_another_address(registry, metrics) -> None:
    server = MetricsServer(registry, "127.0.0.1", 0)
    first = server.start()
    assert "accessgate_requests" in scrape("127.0.0.1", first)
    server.stop()
    # The option changed: same registry, new address.
    moved = MetricsServer(registry, "127.0.0.1", 0)
    second = moved.start()
    try:
        assert "accessgate_requests" in scrape("127.0.0.1", second)
        assert port_is_closed("127.0.0.1", first) or first == second
    finally:
        moved.stop()
    again = server.start()  # a stopped server can start again
    try:
        assert "accessgate_policy_info" in scrape("127.0.0.1", again)
    finally:
        server.stop()
    server.stop()  # stopping twice is harmless


def test_a_taken_port_fails_at_start_with_an_oserror(registry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            MetricsServer(registry, "127.0.0.1", port).start()


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("127.0.0.1:9464", ("127.0.0.1", 9464), id="ipv4"),
        pytest.param("[::1]:9464", ("::1", 9464), id="ipv6-in-brackets"),
        pytest.param(":9464", ("0.0.0.0", 9464), id="empty-host-is-all-interfaces"),
        pytest.param("localhost:0", ("localhost", 0), id="port-0-for-tests"),
    ],
)
def test_metrics_option_is_host_colon_port(value, expected) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["9464", "127.0.0.1:", "host:http", "h:70000"])
def test_a_malformed_metrics_option_says_what_to_write(value) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(value)
