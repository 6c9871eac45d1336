"""Metric names and labels as the contract and the dashboards name them; the endpoint.

Each test has a registry of its own, so counts never leak between tests.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from accessgate.audit.files import Head
from accessgate.audit.writer import AuditStats
from accessgate.auth import Sample
from accessgate.decision import Decision
from accessgate.proxy.metrics import Metrics
from accessgate.proxy.metrics_server import MetricsServer, parse_address
from accessgate.policy.model import Level


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    m = Metrics(registry)
    # As AccessGate does: the sign-in figures come from accessgate.auth's samples at each scrape.
    m.signin_fed = []  # type: ignore[attr-defined]
    m.watch_signin(lambda: list(m.signin_fed))  # type: ignore[attr-defined]
    return m


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def blocked(site, role, reason, host="www.example.com") -> Decision:
    return Decision("block", reason, "rule", site=site, role=role, host=host, level=Level.DENY)


def child_of(attribute: str, kind: str, *labels: str) -> tuple[str, set[str], Callable]:
    """An EXPECTED entry for a prometheus_client metric: one update through `.labels()`,
    which refuses names the metric was not declared with."""

    def update(metrics: Metrics) -> None:
        metric = getattr(metrics, attribute)
        child = metric.labels(**{label: "x" for label in labels}) if labels else metric
        {"counter": lambda: child.inc(), "gauge": lambda: child.set(1),
         "histogram": lambda: child.observe(0.001)}[kind]()  # fmt: skip

    return kind, set(labels), update


def signin(name: str, kind: str, *labels: str) -> tuple[str, set[str], Callable]:
    """An EXPECTED entry for a sign-in or directory metric: one sample as accessgate.auth reports it."""

    def update(metrics: Metrics) -> None:
        metrics.signin_fed.append(Sample(name, tuple((label, "x") for label in labels), 1.0))  # type: ignore

    return kind, set(labels), update


# name -> (type, label names, one update) that Grafana, alerts and the contract rely on.
# The per-request metrics are tallies behind a collector: updated through the addon's calls.
EXPECTED = {
    "accessgate_requests": (
        "counter", {"site", "role", "decision", "reason"},
        lambda m: m.observe_decision(blocked("x", "x", "denied")),
    ),
    "accessgate_decision_duration_seconds": (
        "histogram", set(), lambda m: m.observe_decision(blocked("x", "x", "denied"), 0.001),
    ),
    "accessgate_policy_reloads": child_of("policy_reloads", "counter", "result"),
    "accessgate_policy_info": child_of("policy_info", "gauge", "hash"),
    "accessgate_policy_last_reload_timestamp_seconds": child_of("last_reload", "gauge", "result"),
    "accessgate_quota_exhausted": child_of("quota_exhausted", "counter", "site", "role"),
    "accessgate_quota_minutes": child_of("quota_minutes", "counter", "site", "role"),
    "accessgate_bytes": ("counter", {"site", "direction"}, lambda m: m.count_bytes("x", "in", 1)),
    "accessgate_tls_connections": child_of("tls_connections", "counter", "site", "inspection", "why"),
    "accessgate_fail_closed": child_of("fail_closed", "counter", "stage"),
    "accessgate_audit_records": child_of("audit_records", "counter"),
    "accessgate_audit_write_errors": child_of("audit_errors", "counter"),
    "accessgate_audit_pending_records": child_of("audit_pending", "gauge"),
    "accessgate_audit_dropped_records": child_of("audit_dropped", "counter"),
    "accessgate_audit_head_seq": ("gauge", set(), lambda m: m.watch_audit_head(lambda: Head(3, "ab" * 32))),
    "accessgate_audit_head_hash": ("gauge", {"part"}, lambda m: m.watch_audit_head(lambda: Head(3, "ab" * 32))),
    "accessgate_state_store_errors": child_of("state_errors", "counter", "store"),
    "accessgate_upstream_refused": child_of("upstream_refused", "counter", "reason"),
    "accessgate_warn_pages": ("counter", {"site", "role"}, lambda m: m.warn_pages(blocked("x", "x", "justification-required"))),
    "accessgate_warn_continues": (
        "counter", {"site", "role"}, lambda m: m.warn_continues(blocked("x", "x", "justification-required")),
    ),
    "accessgate_warn_refused": ("counter", {"site"}, lambda m: m.warn_refused(blocked("x", "x", "justification-required"))),
    "accessgate_state_store_duration_seconds": child_of(
        "state_seconds", "histogram", "store", "operation"
    ),
    "accessgate_proxy_header_refused": child_of("proxy_header_refused", "counter"),
}  # fmt: skip

# Sign-in and directory groups (proxy/signin.py, from accessgate.auth's counters).
EXPECTED |= {
    "accessgate_signin": signin("signin_total", "counter", "method", "result"),
    "accessgate_signin_failures": signin("signin_failures_total", "counter", "method", "reason"),
    "accessgate_signin_cache": signin("signin_cache_total", "counter", "result"),
    "accessgate_signin_limited": signin("signin_limited_total", "counter", "scope"),
    "accessgate_signin_coalesced": signin("signin_coalesced_total", "counter"),
    "accessgate_signin_busy": signin("signin_busy_total", "counter"),
    "accessgate_signin_check_seconds": signin("signin_check_seconds_total", "counter", "scheme"),
    "accessgate_signin_cache_entries": signin("signin_cache_entries", "gauge"),
    "accessgate_signin_pending_checks": signin("signin_pending_checks", "gauge"),
    "accessgate_directory_up": signin("directory_up", "gauge"),
    "accessgate_directory_users": signin("directory_users", "gauge", "state"),
    "accessgate_directory_last_success_age_seconds": signin("directory_last_success_age_seconds", "gauge"),
    "accessgate_directory_lookups": signin("directory_lookups_total", "counter", "result"),
    "accessgate_directory_lookup_seconds": signin("directory_lookup_seconds_total", "counter"),
    "accessgate_directory_group_changes": signin("directory_group_changes_total", "counter"),
    "accessgate_directory_first_lookup": signin("directory_first_lookup_total", "counter", "result"),
}  # fmt: skip


@pytest.mark.parametrize("name", EXPECTED)
def test_every_metric_has_its_name_type_and_labels(registry, metrics, name) -> None:
    kind, labels, update = EXPECTED[name]
    update(metrics)
    family = next(f for f in registry.collect() if f.name == name)
    assert family.type == kind
    assert family.samples
    for s in family.samples:
        assert set(s.labels) - {"le"} == labels
    if kind == "counter":
        assert any(s.name == name + "_total" for s in family.samples)


def test_every_metric_is_exported_once(registry, metrics) -> None:
    names = [f.name for f in registry.collect()]
    assert sorted(names) == sorted(EXPECTED)


def test_a_second_metrics_on_one_registry_is_refused_rather_than_exported_twice(registry) -> None:
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


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


BOUNDS = ["1e-06", "2.5e-06", "5e-06", "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025",
          "0.0005", "0.001", "0.0025", "0.005", "0.01", "+Inf"]  # fmt: skip


@pytest.mark.parametrize(
    "seconds, first_bucket",
    [
        pytest.param(4e-6, "5e-06", id="4us-in-5us-and-up"),
        pytest.param(1e-6, "1e-06", id="on-a-bound-is-in-that-bucket"),
        pytest.param(0.0, "1e-06", id="zero-in-the-smallest"),
        pytest.param(3e-4, "0.0005", id="300us-in-500us-and-up"),
        pytest.param(0.01, "0.01", id="on-the-top-bound"),
        pytest.param(0.5, "+Inf", id="above-every-bound-only-in-inf"),
    ],
)
def test_a_timed_decision_lands_in_its_bucket_and_every_bigger_one(
    registry, metrics, seconds, first_bucket
) -> None:
    metrics.observe_decision(blocked("facebook", "everyone", "denied"), seconds)
    inside = BOUNDS[BOUNDS.index(first_bucket) :]
    buckets = {le: sample(registry, "accessgate_decision_duration_seconds_bucket", le=le)
               for le in BOUNDS}  # fmt: skip
    assert buckets == {le: 1 if le in inside else 0 for le in BOUNDS}
    assert sample(registry, "accessgate_decision_duration_seconds_count") == 1
    assert sample(registry, "accessgate_decision_duration_seconds_sum") == seconds


def test_decision_buckets_are_cumulative_with_the_right_sum_and_count(registry, metrics) -> None:
    durations = [4e-6, 4e-6, 2e-5, 3e-4, 0.5]
    for seconds in durations:
        metrics.observe_decision(blocked("facebook", "everyone", "denied"), seconds)
    metrics.observe_decision(blocked("facebook", "everyone", "denied"))  # untimed: counted only
    buckets = {le: sample(registry, "accessgate_decision_duration_seconds_bucket", le=le)
               for le in ("2.5e-06", "5e-06", "2.5e-05", "0.0005", "0.01", "+Inf")}  # fmt: skip
    assert buckets == {"2.5e-06": 0, "5e-06": 2, "2.5e-05": 3, "0.0005": 4, "0.01": 4, "+Inf": 5}
    assert sample(registry, "accessgate_decision_duration_seconds_count") == 5
    assert sample(registry, "accessgate_decision_duration_seconds_sum") == pytest.approx(
        sum(durations)
    )
    labels = {"site": "facebook", "role": "everyone", "decision": "block", "reason": "denied"}
    assert sample(registry, "accessgate_requests_total", **labels) == 6


@pytest.mark.parametrize(
    "calls, expected",
    [
        pytest.param(
            [("facebook", "in", 100), ("facebook", "out", 2000), ("facebook", "out", 1)],
            {("facebook", "in"): 100, ("facebook", "out"): 2001},
            id="added-up-per-site-and-direction",
        ),
        pytest.param(
            [("facebook", "in", 5), ("unlisted", "in", 7), ("none", "out", 9)],
            {("facebook", "in"): 5, ("unlisted", "in"): 7, ("none", "out"): 9,
             ("facebook", "out"): None, ("unlisted", "out"): None},
            id="sites-apart-and-no-series-before-the-first-byte",
        ),
    ],
)  # fmt: skip
def test_bytes_are_counted_by_site_and_direction(registry, metrics, calls, expected) -> None:
    for site, direction, amount in calls:
        metrics.count_bytes(site, direction, amount)
    for (site, direction), total in expected.items():
        assert sample(registry, "accessgate_bytes_total", site=site, direction=direction) == total


# The scrape text of the per-request metrics, which the rules and dashboards read
# (no `_created` samples: the tallies do not keep them).
PER_REQUEST_EXPOSITION = """\
# HELP accessgate_requests_total Requests decided, by site, deciding role, decision and reason.
# TYPE accessgate_requests_total counter
accessgate_requests_total{decision="block",reason="denied",role="everyone",site="facebook"} 2.0
accessgate_requests_total{decision="allow",reason="unlisted",role="none",site="unlisted"} 1.0
# HELP accessgate_decision_duration_seconds Time the policy engine took to decide one request.
# TYPE accessgate_decision_duration_seconds histogram
accessgate_decision_duration_seconds_bucket{le="1e-06"} 0.0
accessgate_decision_duration_seconds_bucket{le="2.5e-06"} 0.0
accessgate_decision_duration_seconds_bucket{le="5e-06"} 1.0
accessgate_decision_duration_seconds_bucket{le="1e-05"} 1.0
accessgate_decision_duration_seconds_bucket{le="2.5e-05"} 1.0
accessgate_decision_duration_seconds_bucket{le="5e-05"} 1.0
accessgate_decision_duration_seconds_bucket{le="0.0001"} 1.0
accessgate_decision_duration_seconds_bucket{le="0.00025"} 1.0
accessgate_decision_duration_seconds_bucket{le="0.0005"} 1.0
accessgate_decision_duration_seconds_bucket{le="0.001"} 1.0
accessgate_decision_duration_seconds_bucket{le="0.0025"} 1.0
accessgate_decision_duration_seconds_bucket{le="0.005"} 1.0
accessgate_decision_duration_seconds_bucket{le="0.01"} 1.0
accessgate_decision_duration_seconds_bucket{le="+Inf"} 1.0
accessgate_decision_duration_seconds_count 1.0
accessgate_decision_duration_seconds_sum 4e-06
# HELP accessgate_bytes_total Bytes through the proxy by site; in = from the client, out = to the client.
# TYPE accessgate_bytes_total counter
accessgate_bytes_total{direction="in",site="facebook"} 100.0
accessgate_bytes_total{direction="out",site="facebook"} 2000.0
"""


def test_per_request_metrics_keep_their_scrape_text(registry, metrics) -> None:
    metrics.observe_decision(blocked("facebook", "everyone", "denied"), 4e-6)
    metrics.observe_decision(blocked("facebook", "everyone", "denied"))
    metrics.observe_decision(Decision("allow", "unlisted", "unlisted", host="example.org"))
    metrics.count_bytes("facebook", "in", 100)
    metrics.count_bytes("facebook", "out", 2000)
    names = ("accessgate_requests_", "accessgate_decision_duration_seconds", "accessgate_bytes_")
    lines = [
        line for line in scrape_text(registry).splitlines(keepends=True)
        if line.removeprefix("# HELP ").removeprefix("# TYPE ").startswith(names)
    ]  # fmt: skip
    assert "".join(lines) == PER_REQUEST_EXPOSITION


def test_a_scrape_while_requests_are_counted_never_fails_and_ends_exact(registry, metrics) -> None:
    # 2**-18 s (3.8 us) adds up without rounding, so the sum can be checked exactly.
    n, seconds, new_site_every = 50_000, 2.0**-18, 50
    decisions = [blocked(f"s{i}", "everyone", "denied") for i in range(n // new_site_every)]

    def count() -> None:
        for i in range(n):
            # A new label set every 50 requests: the dicts grow while they are scraped.
            metrics.observe_decision(decisions[i // new_site_every], seconds)
            metrics.count_bytes(f"s{i // new_site_every}", "out", 3)

    writer = threading.Thread(target=count)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often: scrapes land mid-update
    try:
        writer.start()
        scrapes_mid_run = 0
        while writer.is_alive():
            text = scrape_text(registry)  # raises if a dict changes size under it
            (hist,) = [f for f in text_string_to_metric_families(text)
                       if f.name == "accessgate_decision_duration_seconds"]  # fmt: skip
            values = {s.name.rsplit("_", 1)[1]: s.value for s in hist.samples
                      if s.labels.get("le") in (None, "+Inf")}  # fmt: skip
            assert values["bucket"] == values["count"], "+Inf is the count"
            assert values["count"] * seconds <= values["sum"], "the count is never ahead"
            scrapes_mid_run += 0 < values["count"] < n
        writer.join()
    finally:
        sys.setswitchinterval(switch)
    assert scrapes_mid_run > 0, "no scrape overlapped the counting"
    families = {f.name: f for f in registry.collect()}
    assert sum(s.value for s in families["accessgate_requests"].samples) == n
    assert len(families["accessgate_requests"].samples) == n // new_site_every
    assert sum(s.value for s in families["accessgate_bytes"].samples) == 3 * n
    assert sample(registry, "accessgate_decision_duration_seconds_count") == n
    assert sample(registry, "accessgate_decision_duration_seconds_sum") == n * seconds
    assert sample(registry, "accessgate_decision_duration_seconds_bucket", le="5e-06") == n
    assert sample(registry, "accessgate_decision_duration_seconds_bucket", le="2.5e-06") == 0


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
    # The path option changed: a new AuditWriter counts from zero again.
    metrics.observe_audit(AuditStats(written=4, pending=1, dropped=0, errors=0))
    assert sample(registry, "accessgate_audit_records_total") == 29
    assert sample(registry, "accessgate_audit_pending_records") == 1


def test_the_plain_counters_take_the_labels_the_addon_gives(registry, metrics) -> None:
    metrics.quota_minutes.labels("facebook", "everyone").inc()
    metrics.fail_closed.labels("requestheaders").inc()
    metrics.state_errors.labels("redis").inc()
    metrics.state_seconds.labels("sqlite", "mark").observe(0.0002)
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


@pytest.mark.parametrize(
    "update, name, labels, step",
    [
        pytest.param(
            lambda m: m.fail_closed.labels("x").inc(),
            "accessgate_fail_closed_total", {"stage": "x"}, 1,
            id="prometheus-client-counter",
        ),
        pytest.param(
            lambda m: m.observe_decision(blocked("x", "y", "denied")),
            "accessgate_requests_total",
            {"site": "x", "role": "y", "decision": "block", "reason": "denied"}, 1,
            id="requests",
        ),
        pytest.param(
            lambda m: m.observe_decision(blocked("x", "y", "denied"), 4e-6),
            "accessgate_decision_duration_seconds_bucket", {"le": "5e-06"}, 1,
            id="decision-duration",
        ),
        pytest.param(
            lambda m: m.count_bytes("x", "in", 10),
            "accessgate_bytes_total", {"site": "x", "direction": "in"}, 10,
            id="bytes",
        ),
    ],
)  # fmt: skip
def test_two_metrics_objects_never_share_a_registry_or_counts(update, name, labels, step) -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    first, second = Metrics(a), Metrics(b)
    update(first)
    assert a.get_sample_value(name, labels) == step
    assert b.get_sample_value(name, labels) in (None, 0)
    update(second)
    update(second)
    assert a.get_sample_value(name, labels) == step
    assert b.get_sample_value(name, labels) == 2 * step


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
