"""Prometheus metrics of the proxy, and the HTTP endpoint that serves them.

Labels come only from the policy (role and site names, plus `none` and
`unlisted`) and from fixed vocabularies (decision, reason, result, stage,
direction, store, operation) - never from users or hosts, whose number has
no bound and whose names do not belong in a monitoring system.

Each `Metrics` registers on the registry it is given, so tests and several
proxies in one process never share counters.

The three metrics updated on every request (requests, decision duration,
bytes) are plain Python tallies, exported by a collector when scraped: a
prometheus_client inc()/observe() takes a lock and several calls, which
cost microseconds per request.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from accessgate.audit.witness import HeadCollector

if TYPE_CHECKING:
    from accessgate.audit.files import Head
    from accessgate.audit.writer import AuditStats
    from accessgate.auth import Sample
    from accessgate.decision import Decision

# A decision costs microseconds; a slow one (a huge policy, a slow store
# behind the quota) shows in the upper buckets.  1 µs .. 10 ms.
DECISION_BUCKETS = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
)  # fmt: skip
# SQLite on local disk answers in tens of µs, Redis over a LAN in ~0.5 ms;
# a store about to time out shows at the top.  50 µs .. 1 s.
STATE_BUCKETS = (
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

NO_ROLE = "none"
NO_SITE = "none"  # the request named no usable host
UNLISTED_SITE = "unlisted"  # a host in no site of the policy


class Metrics:
    """Every accessgate metric, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        # Registered where the prometheus_client metrics they replace were,
        # so the exposition keeps its order.
        self._requests = _CounterTally(
            "accessgate_requests",
            "Requests decided, by site, deciding role, decision and reason.",
            ("site", "role", "decision", "reason"),
            registry,
        )
        self._decision_seconds = _HistogramTally(
            "accessgate_decision_duration_seconds",
            "Time the policy engine took to decide one request.",
            DECISION_BUCKETS,
            registry,
        )
        self.policy_reloads = counter(
            "accessgate_policy_reloads", "Attempts to load a changed policy file, by result (success or failure).",
            "result",
        )
        self.policy_info = gauge(
            "accessgate_policy_info", "1 for the hash of the policy in force; no other hash is exported.", "hash"
        )
        self.last_reload = gauge(
            "accessgate_policy_last_reload_timestamp_seconds", "Unix time of the last policy load attempt, by result.",
            "result",
        )
        self.quota_exhausted = counter(
            "accessgate_quota_exhausted", "Requests blocked because the daily quota for the site was used up.",
            "site", "role",
        )
        self.quota_minutes = counter(
            "accessgate_quota_minutes", "Minutes counted against daily quotas.", "site", "role"
        )
        self._bytes = _CounterTally(
            "accessgate_bytes",
            "Bytes through the proxy by site; in = from the client, out = to the client.",
            ("site", "direction"),
            registry,
        )
        self.tls_connections = counter(
            "accessgate_tls_connections",
            "TLS connections by site, by whether they were decrypted, passed through unread or refused "
            "(inspection), and why (see docs/inspection.md).",
            "site", "inspection", "why",
        )
        self.fail_closed = counter(
            "accessgate_fail_closed", "Requests blocked because accessgate failed while deciding, by stage.", "stage"
        )
        self.audit_records = counter("accessgate_audit_records", "Audit records written to the audit log file.")
        self.audit_errors = counter(
            "accessgate_audit_write_errors", "Failed attempts to write the audit log (each is retried)."
        )
        self.audit_pending = gauge(
            "accessgate_audit_pending_records",
            "Audit records waiting to be written (queued or held while the file is unwritable).",
        )
        self.audit_dropped = counter(
            "accessgate_audit_dropped_records",
            "Audit records lost: backlog full, unserializable, or unwritable at shutdown.",
        )
        self.proxy_header_refused = counter(
            "accessgate_proxy_header_refused",
            "Connections from a trusted balancer closed because they did not start with a valid PROXY header.",
        )
        self.state_errors = counter(
            "accessgate_state_store_errors", "Failed calls to the quota state store, by store (sqlite, redis, memory).",
            "store",
        )
        self.upstream_refused = counter(
            "accessgate_upstream_refused",
            "Upstream connections refused because they led to the proxy's own host, by reason "
            "(loopback, link-local, unspecified, multicast, this-host).",
            "reason",
        )
        self._warn_pages = counter(
            "accessgate_warn_pages", "Warn pages shown: a warn grant asked for a reason before opening the site.",
            "site", "role",
        )
        self._warn_continues = counter(
            "accessgate_warn_continues", "Reasons accepted on warn pages: the site opened for continue_minutes.",
            "site", "role",
        )
        self._warn_refused = counter(
            "accessgate_warn_refused",
            "Warn forms refused (forged, replayed, expired, from another origin or for another site), by the "
            "site they were sent to.",
            "site",
        )
        self.state_seconds = Histogram(
            "accessgate_state_store_duration_seconds",
            "Time calls to the quota state store took, by store and operation.",
            ["store", "operation"],
            buckets=STATE_BUCKETS,
            registry=registry,
        )
        self._signin: _SampleCollector | None = None
        self._policy_hash: str | None = None
        self._audit_seen: AuditStats | None = None
        self._lock = threading.Lock()
        # The audit log's head (seq and hash of the last line written), for a witness: audit/witness.py.
        self._audit_head: Callable[[], Head | None] = lambda: None
        registry.register(HeadCollector(lambda: self._audit_head()))

    def watch_audit_head(self, head: Callable[[], Head | None]) -> None:
        """Export what `head()` returns at each scrape as accessgate_audit_head_seq and _hash."""
        self._audit_head = head

    def observe_decision(self, decision: Decision, seconds: float | None = None) -> None:
        """Count one decision (and its duration, when timed)."""
        key = (site_label(decision), decision.role or NO_ROLE, decision.decision, decision.reason)
        counts = self._requests.counts
        counts[key] = counts.get(key, 0) + 1
        if decision.reason == "quota-exhausted":
            self.quota_exhausted.labels(*key[:2]).inc()  # site, role
        if seconds is not None:
            # The sum first, then the count: see _HistogramTally.
            histogram = self._decision_seconds
            histogram.sum += seconds
            histogram.counts[bisect_left(histogram.bounds, seconds)] += 1

    def warn_pages(self, decision: Decision) -> None:
        self._warn_pages.labels(site_label(decision), decision.role or NO_ROLE).inc()

    def warn_continues(self, decision: Decision) -> None:
        self._warn_continues.labels(site_label(decision), decision.role or NO_ROLE).inc()

    def warn_refused(self, decision: Decision) -> None:
        self._warn_refused.labels(site_label(decision)).inc()

    def count_bytes(self, site: str, direction: str, amount: int) -> None:
        """Add `amount` body bytes for `site` in `direction` (in|out)."""
        key = (site, direction)
        counts = self._bytes.counts
        counts[key] = counts.get(key, 0) + amount

    def set_policy(self, digest: str) -> None:
        """Make `digest` the only hash that accessgate_policy_info shows."""
        with self._lock:
            if self._policy_hash == digest:
                return
            if self._policy_hash is not None:
                try:
                    self.policy_info.remove(self._policy_hash)
                except KeyError:
                    pass
            self.policy_info.labels(digest).set(1)
            self._policy_hash = digest

    def watch_signin(self, samples: Callable[[], list[Sample]]) -> None:
        """Export sign-in and directory figures (`SIGNIN_METRICS`) from `samples()` at each scrape."""
        if self._signin is None:
            self._signin = _SampleCollector(samples, self.registry)

    def observe_reload(self, ok: bool, when: float) -> None:
        """Count a policy load attempt at Unix time `when`."""
        result = "success" if ok else "failure"
        self.policy_reloads.labels(result).inc()
        self.last_reload.labels(result).set(when)

    def observe_audit(self, stats: AuditStats) -> None:
        """Bring the audit metrics up to `stats` (pass as `AuditWriter(on_flush=...)`).

        Counters grow by the difference from the last stats seen; a smaller
        figure means a new AuditWriter (the path option changed) and counts from 0.
        """
        with self._lock:
            seen = self._audit_seen
            self._audit_seen = stats
        for counter, now, before in (
            (self.audit_records, stats.written, seen.written if seen else 0),
            (self.audit_errors, stats.errors, seen.errors if seen else 0),
            (self.audit_dropped, stats.dropped, seen.dropped if seen else 0),
        ):
            delta = now - before if now >= before else now
            if delta > 0:
                counter.inc(delta)
        self.audit_pending.set(stats.pending)


class _CounterTally(Collector):
    """A labelled counter kept as a dict (label values -> count), exported when scraped.

    Only the proxy's event-loop thread adds to `counts` (read-modify-write
    without a lock: two writers could lose increments).  A scrape runs in
    the metrics server's thread and copies the dict first: dict(d) is atomic
    under the GIL, while iterating `counts` itself raises when a request
    adds a key meanwhile.  Unlike prometheus_client's Counter this exports
    no `_created` samples; no rule or dashboard reads them.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        # Names only: the registry refuses a second metric of the same name.
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in dict(self.counts).items():
            family.add_metric(labels, count)
        yield family


class _HistogramTally(Collector):
    """An unlabelled histogram kept as per-bucket counts and a sum, exported when scraped.

    The writer (Metrics.observe_decision, inlined there: one call less per
    request) adds a value to `sum`, then 1 to `counts[bisect_left(bounds,
    value)]` - the bucket of the first bound >= value, or the last one
    (+Inf) above them all; the scrape makes the buckets cumulative.  One
    writer thread, as for _CounterTally.  The scrape copies the list (atomic
    under the GIL, so the buckets agree with each other and with `_count`)
    and reads the sum after it: the count may be a few requests behind its
    sum, never ahead - noise on a mean latency.  No `_created` sample.
    """

    def __init__(
        self, name: str, documentation: str, bounds: Sequence[float], registry: CollectorRegistry
    ) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: bucket bounds must increase, not {bounds!r}")
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=())

    def collect(self) -> Iterator[Metric]:
        counts = list(self.counts)
        total = self.sum  # after the counts, so it holds every observation counted
        buckets = list(zip(self._le, accumulate(counts), strict=True))  # _count is the +Inf one
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


# Sign-in and directory metrics, kept by accessgate.auth (names without the prefix):
# name -> (kind, labels, help).  Label values are fixed words, never users.
SIGNIN_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "signin_total": ("counter", ("method", "result"), "Sign-in answers, by method and result (accepted, "
                     "anonymous, refused, malformed, unsupported, limited, unavailable, busy)."),
    "signin_failures_total": ("counter", ("method", "reason"), "Failed sign-ins, by method and reason "
                              "(bad-password, unknown-user, replayed, wrong-realm, garbage, limited, ...)."),
    "signin_cache_total": ("counter", ("result",), "Basic credentials looked up in the cache, by result (hit, miss)."),
    "signin_limited_total": ("counter", ("scope",), "Sign-ins refused unchecked by the failure limit, "
                             "by scope (address, user)."),
    "signin_coalesced_total": ("counter", (), "Checks that shared one already running for the same credential."),
    "signin_busy_total": ("counter", (), "Sign-ins refused because too many checks were waiting."),
    "signin_check_seconds_total": ("counter", ("scheme",), "Seconds spent checking credentials, by scheme."),
    "signin_cache_entries": ("gauge", (), "Verified credentials in the cache."),
    "signin_pending_checks": ("gauge", (), "Credential checks running or waiting."),
    "directory_up": ("gauge", (), "1 if the last directory lookup succeeded, else 0."),
    "directory_users": ("gauge", ("state",), "Users whose directory groups are known, by state "
                        "(fresh, stale, expired, unknown)."),
    "directory_last_success_age_seconds": ("gauge", (), "Seconds since the directory last answered a lookup."),
    "directory_lookups_total": ("counter", ("result",), "Group lookups, by result (ok, unknown-user, error)."),
    "directory_lookup_seconds_total": ("counter", (), "Seconds spent in group lookups."),
    "directory_group_changes_total": ("counter", (), "Lookups that found a user's groups changed."),
    "directory_first_lookup_total": ("counter", ("result",), "First lookups that did not finish in time "
                                     "(result: pending); the request went on without directory groups."),
}


class _SampleCollector(Collector):
    """The SIGNIN_METRICS families, from `samples()` at each scrape (only they are exported)."""

    def __init__(self, samples: Callable[[], list[Sample]], registry: CollectorRegistry) -> None:
        self._samples = samples
        registry.register(self)

    def _families(self) -> dict[str, Metric]:
        families: dict[str, Metric] = {}
        for name, (kind, labels, doc) in SIGNIN_METRICS.items():
            full = "accessgate_" + name
            if kind == "counter":
                families[name] = CounterMetricFamily(full.removesuffix("_total"), doc, labels=labels)
            else:
                families[name] = GaugeMetricFamily(full, doc, labels=labels)
        return families

    def describe(self) -> Iterator[Metric]:
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for sample in self._samples():
            spec = SIGNIN_METRICS.get(sample.name)
            if spec is None:
                continue
            given = dict(sample.labels)
            families[sample.name].add_metric([given.get(label, "") for label in spec[1]], sample.value)
        yield from families.values()


def site_label(decision: Decision) -> str:
    """The `site` label: the policy's site, `unlisted` for hosts in none, `none` without a host."""
    if decision.site is not None:
        return decision.site
    return UNLISTED_SITE if decision.host else NO_SITE
