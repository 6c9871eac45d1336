#!/usr/bin/env python3
"""Decision engine benchmark: a 50,000-domain, 100-role policy on one core.

Prints policy load time (parse, validate, index), memory the loaded policy
holds, decisions per second and p50/p99 time per decision -- for accessgate's
decide() and, side by side in the same run, for the cheapest possible policy
hook (one dict lookup of the exact host), alternating A B A B so that drift
on a shared host hits both.  Decisions are measured in steady state on
requests the engine has not seen, in three mixes (see make_requests):
browsing (Zipf site popularity; the goals are read on it), uniform and cold.
Goals (issue 2): >= 300,000 decisions/s, p99 <= 10 us, load <= 1 s, <= 200 MB.

Both builds of the engine run, one after the other, each in a process of its
own: the Python source as an editable install has it, and the compiled one
(ACCESSGATE_COMPILE=1, mypyc) that scripts/build-compiled makes for the run.

    .venv/bin/python benchmarks/engine.py [--rounds 3] [--decisions 100000] [--by-kind]
                                          [--build both|python|compiled]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

from accessgate.decision import BUILD, Identity, Request, decide, prepare
from accessgate.decision.plan import index_of as _compiled
from accessgate.proxy.gctuning import settle_after_load
from accessgate.policy.loader import load_policy
from accessgate.decision import MemoryLedger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compiled import compiled_build  # noqa: E402

DOMAINS = 50_000
ROLES = 100
SITES = 5_000
USERS = 5_000
GROUPS = 200
TLDS = ["com", "net", "org", "io", "de", "co.uk"]


def make_policy_yaml(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """A large but realistic policy: sites of 10 domains, roles granting subsets."""
    lines = ["version: 1", "timezone: Europe/Berlin", "sites:"]
    domains: list[str] = []
    per_site = DOMAINS // SITES
    for s in range(SITES):
        site_domains = [f"s{s}d{d}-{rng.randrange(10**6)}.{rng.choice(TLDS)}" for d in range(per_site)]
        domains.extend(site_domains)
        lines.append(f"  site{s}:")
        lines.append(f"    domains: [{', '.join(site_domains)}]")
        if s % 10 == 0:
            lines.append('    read_only_allow: [{method: POST, path: "/login/*"}]')
    users = [f"user{u}" for u in range(USERS)]
    lines += ["directory:", "  groups:"]
    for g in range(GROUPS):
        members = rng.sample(users, 50)
        lines.append(f"    g{g}: [{', '.join(members)}]")
    lines.append("roles:")
    levels = ["full", "read-only", "deny"]
    for r in range(ROLES):
        lines.append(f"  role{r}:")
        members = [f'"group:g{rng.randrange(GROUPS)}"' for _ in range(3)]
        if r == ROLES - 1:
            members = ["all"]
        lines.append(f"    members: [{', '.join(members)}]")
        lines.append("    access:")
        for s in rng.sample(range(SITES), 40):
            kind = rng.randrange(4)
            if kind == 0:
                lines.append(
                    f"      site{s}: {{level: full, windows: [\"mon-fri 12:00-13:00\"], daily_minutes: 20}}"
                )
            else:
                lines.append(f"      site{s}: {rng.choice(levels)}")
        lines.append('      "*": deny')
    lines += ["unauthenticated: deny", "unlisted: allow", ""]
    return "\n".join(lines), domains, users


def make_requests(rng: random.Random, domains: list[str], users: list[str], n: int, *, mix: str):
    """Requests in one of three mixes.

    `browsing`: page views of ~20 requests by one user to one site (page, CDN
    assets, API calls), sites drawn by Zipf popularity (weight 1/rank), as web
    traffic is: a few sites get most views, and every site gets some.
    `uniform`: the same page views, every site equally likely: most page views
    are a user's first visit to that host, which the engine must plan.
    `cold`: every request a new host and client address, the worst case for
    the engine's caches."""
    methods = ["GET"] * 8 + ["POST", "HEAD"]
    per_site = DOMAINS // SITES
    ranked = list(range(SITES))
    rng.shuffle(ranked)  # popularity unrelated to the order sites were written in
    cum_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(SITES)))
    out = []
    while len(out) < n:
        user = rng.choice(users)
        ip = ipaddress.IPv4Address(
            0x0A000000 + users.index(user) if mix != "cold" else 0x0A000000 + rng.randrange(65536)
        )
        identity = Identity(user=user, client_ip=ip)
        if rng.random() < 0.1:
            base = f"unlisted{rng.randrange(10**6)}.example"
        elif mix == "browsing":
            site = ranked[rng.choices(range(SITES), cum_weights=cum_weights)[0]]
            base = domains[site * per_site + rng.randrange(per_site)]
        else:
            base = rng.choice(domains)
        hosts = [base, f"www.{base}", f"static.{base}", f"api.{base}"]
        for _ in range(1 if mix == "cold" else 20):
            out.append((Request(rng.choice(methods), (rng.choice(hosts),), "/feed"), identity))
    return out[:n]


def _forget_all(policy) -> None:
    """Cold caches: no plan, no role set, no host known."""
    index = _compiled(policy)
    index.forget()
    index.hosts.clear()


def run_accessgate(policy, ledger, requests, now):
    for request, identity in requests:
        decide(request, identity, policy, now, ledger)


def run_baseline(table, requests, now):
    # The cheapest hook a proxy could have: look the exact host up in a dict.
    for request, identity in requests:
        table.get(request.hosts[0], True)


def per_call_ns(fn, requests) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for item in requests:
        start = clock()
        fn(item)
        samples.append(clock() - start)
    return samples


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--by-kind", action="store_true",
                        help="also split the browsing mix's latency by what the engine had to do")
    parser.add_argument("--build", choices=("both", "python", "compiled"), default="both",
                        help="which build of the engine to measure (default both, Python first)")
    args = parser.parse_args()
    if args.build != BUILD:
        return run_builds(args)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core

    rng = random.Random(args.seed)
    text, domains, users = make_policy_yaml(rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(text, "utf-8")
        size_mb = path.stat().st_size / 1e6
        load_times = []
        for _ in range(args.rounds):
            gc.collect()
            start = time.perf_counter()
            policy = load_policy(path)
            prepare(policy)  # its lookup tables, as the proxy builds them before installing it
            load_times.append(time.perf_counter() - start)
        del policy
        gc.collect()
        tracemalloc.start()
        policy = load_policy(path)
        prepare(policy)
        gc.collect()  # what the policy holds, not the parser's leftovers
        held_mb = tracemalloc.get_traced_memory()[0] / 1e6
        tracemalloc.stop()
    settle_after_load()  # what the proxy does after installing a policy

    table = {d: bool(i % 2) for i, d in enumerate(domains)}
    now = datetime(2026, 11, 23, 11, 30, tzinfo=timezone.utc)  # lunch in Berlin
    ledger = MemoryLedger()
    rss_mb = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    print(f"policy: {len(domains):,} domains, {SITES:,} sites, {ROLES} roles, "
          f"{USERS:,} users, {size_mb:.1f} MB of YAML")
    print(f"load time (parse, validate, index) median {statistics.median(load_times):.3f} s "
          f"(min {min(load_times):.3f}, max {max(load_times):.3f})   goal <= 1 s")
    print(f"policy memory       {held_mb:.1f} MB held by the loaded policy; process RSS {rss_mb:.0f} MB "
          "with it loaded   goal <= 200 MB")
    print(f"decide() on one core, {args.decisions:,} new requests per round for throughput and as many for "
          f"p50/p99 timed per call, {args.rounds} rounds, each followed by the baseline (one dict lookup of "
          "the exact host) on the same requests; medians over rounds")
    for mix in ("browsing", "uniform", "cold"):
        measure_mix(mix, policy, ledger, table, now, rng, domains, users, args)
    if args.by_kind:
        latency_by_kind(policy, ledger, now, rng, domains, users, args.decisions)
    return 0


def run_builds(args) -> int:
    """Measure each build asked for in a process of its own (a compiled one built first)."""
    builds = ("python", "compiled") if args.build == "both" else (args.build,)
    argv = ["--rounds", str(args.rounds), "--decisions", str(args.decisions), "--seed", str(args.seed)]
    argv += ["--by-kind"] if args.by_kind else []
    with contextlib.ExitStack() as stack:
        compiled_env = stack.enter_context(compiled_build()) if "compiled" in builds else None
        status = 0
        for build in builds:
            print(f"\n== engine build: {build}", flush=True)
            env = compiled_env if build == "compiled" else None
            child = subprocess.run([sys.executable, __file__, *argv, "--build", build], env=env)
            status = status or child.returncode
        return status


def latency_by_kind(policy, ledger, now, rng, domains, users, n) -> None:
    """The browsing mix's latency split by what each request made the engine do.

    The kind is read after the request is decided, from what it added to the
    engine's caches (a role set, a host, a plan): looking into the tables
    before would bring the very entries the decision reads into the CPU's
    caches, and made first requests look a third faster than they are."""
    index = _compiled(policy)
    _forget_all(policy)
    run_accessgate(policy, ledger, make_requests(rng, domains, users, 2 * n, mix="browsing"), now)  # warm up
    clock = time.perf_counter_ns
    spent: dict[str, list[int]] = {}
    for request, identity in make_requests(rng, domains, users, n, mix="browsing"):
        planned, hosts, clients = index.planned, len(index.hosts), len(index.identities)
        start = clock()
        decide(request, identity, policy, now, ledger)
        elapsed = clock() - start
        if len(index.identities) > clients:
            kind = "new client"
        elif index.planned == planned:
            kind = "planned already"
        elif len(index.hosts) > hosts:
            kind = "first at a new host"
        else:
            kind = "first of its role set at a known host"
        spent.setdefault(kind, []).append(elapsed)
    every = [t for times in spent.values() for t in times]
    p99_us = percentile(every, 0.99)
    cut_ns = p99_us * 1000
    slowest = sum(1 for t in every if t >= cut_ns)
    print(f"browsing, {n:,} new requests by kind (p99 of all {p99_us:.2f} us):")
    for kind, times in sorted(spent.items(), key=lambda item: -len(item[1])):
        above = sum(1 for t in times if t >= cut_ns)
        print(f"  {kind:38s} {len(times) / len(every):6.1%}  p50 {percentile(times, 0.5):6.2f} us  "
              f"p90 {percentile(times, 0.9):6.2f} us  p99 {percentile(times, 0.99):6.2f} us  "
              f"{above / max(1, slowest):6.1%} of the slowest 1 %")


def measure_mix(mix, policy, ledger, table, now, rng, domains, users, args) -> None:
    """Steady state: caches hold what earlier traffic of the same mix left
    (for `cold`, nothing), and every measured request is one not seen before.

    Each round times a batch for throughput, then another for latency call
    by call, each followed by the baseline on the same requests; the figures
    printed are the medians over rounds (a single batch catches whatever the
    shared host was doing at that moment, and its p99 with it)."""
    n = args.decisions
    _forget_all(policy)
    run_accessgate(policy, ledger, make_requests(rng, domains, users, n, mix=mix), now)  # warm up
    rates, base_rates, p50s, p99s, base_p50s, base_p99s = [], [], [], [], [], []
    for _ in range(args.rounds):
        chunk = make_requests(rng, domains, users, n, mix=mix)
        gc.collect()
        if mix == "cold":
            _forget_all(policy)
        start = time.perf_counter()
        run_accessgate(policy, ledger, chunk, now)
        rates.append(len(chunk) / (time.perf_counter() - start))
        start = time.perf_counter()
        run_baseline(table, chunk, now)
        base_rates.append(len(chunk) / (time.perf_counter() - start))
        sample = make_requests(rng, domains, users, n, mix=mix)
        gc.collect()
        if mix == "cold":
            _forget_all(policy)
        latency = per_call_ns(lambda item: decide(item[0], item[1], policy, now, ledger), sample)
        base_latency = per_call_ns(lambda item: table.get(item[0].hosts[0], True), sample)
        p50s.append(percentile(latency, 0.5))
        p99s.append(percentile(latency, 0.99))
        base_p50s.append(percentile(base_latency, 0.5))
        base_p99s.append(percentile(base_latency, 0.99))
    ratios = [a / b for a, b in zip(rates, base_rates)]
    med = statistics.median
    goal = "   goal >= 300,000/s, p99 <= 10 us" if mix == "browsing" else ""
    print(f"{mix:9s} median {med(rates):,.0f} decisions/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}); "
          f"p50 {med(p50s):.2f} us, p99 {med(p99s):.2f} us (rounds {min(p99s):.2f}-{max(p99s):.2f}){goal}")
    print(f"{'':9s} baseline {med(base_rates):,.0f} lookups/s, "
          f"p50 {med(base_p50s):.2f} us, p99 {med(base_p99s):.2f} us; "
          f"ratio median {med(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")

if __name__ == "__main__":
    sys.exit(main())
