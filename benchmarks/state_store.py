"""What a quota costs per request, and what a second proxy buys.

    .venv/bin/python benchmarks/state_store.py [--ops 2000] [--rounds 5]
    .venv/bin/python benchmarks/state_store.py --proxies [--seconds 8] [--proxy-rounds 3]

Part 1, the stores: usage() + mark() on each state store.

Runs memory:, sqlite: (a temp file) and redis:// (a redis-server it starts
on a free loopback port, no persistence) in the same run, alternated
(memory sqlite redis memory sqlite redis ...), because absolute times drift
on shared hosts.  Each operation is what the addon does for an allowed,
quota-governed request: usage() then mark(), for 100 users x 3 sites.  Two
workloads: `first` (every request is the first of its user, site and
minute: what the store costs when it must be asked) and `page` (20
requests per user, site and minute, as a page load makes them).  Prints
microseconds per request (median, min, max over rounds).  Bounded:
ops x rounds x 3 stores x 2 workloads, nothing else.

Part 2 (--proxies), requests/s through real proxies, every request a
quota-governed allow: one mitmdump with sqlite: state, one with redis://
state, and two behind HAProxy (deploy/haproxy/haproxy.cfg, round robin:
the load comes from one address) sharing Redis.  Origin: nginx (1 KB file,
one worker, no access log); load: wrk (c=16, keep-alive, a Lua script
that speaks to a proxy).  Configurations alternate, each round `--seconds`
long; prints requests/s and p99 per round and the median.  Needs the
Debian packages redis-server, haproxy, nginx-light and wrk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path

import loadgen as lg

from support.haproxy import running_haproxy  # noqa: E402  (tests/ is on sys.path through loadgen)
from support.nginx import start_nginx  # noqa: E402
from support.proxy import make_confdir, start_proxy  # noqa: E402
from support.redis_server import running_redis  # noqa: E402

from accessgate.stores import open_store  # noqa: E402

DAY = date(2026, 11, 23)
SITES = ("facebook", "linkedin", "x")


def one_round(store, ops: int, base_minute: int, burst: int) -> float:
    """Seconds per usage()+mark() pair; each user-site-minute gets `burst` requests in a row."""
    started = time.perf_counter()
    for i in range(ops):
        n = i // burst
        subject, site, minute = f"user:u{n % 100}", SITES[n % 3], base_minute + n // 50
        store.usage(subject, site, DAY, minute)
        store.mark(subject, site, DAY, minute)
    return (time.perf_counter() - started) / ops


def stores(args) -> None:
    with tempfile.TemporaryDirectory() as tmp, running_redis(Path(tmp)) as redis_server:
        specs = {
            "memory": "memory:",
            "sqlite": f"sqlite:{Path(tmp) / 'quota.sqlite3'}",
            "redis": redis_server.url(timeout=1),
        }
        stores = {name: open_store(spec) for name, spec in specs.items()}
        for store in stores.values():  # warm up: connections, page cache, schema
            one_round(store, 200, 0, 1)
        workloads = {"first": 1, "page": 20}
        times = {(w, name): [] for w in workloads for name in stores}
        for r in range(args.rounds):
            for w, burst in workloads.items():
                for name, store in stores.items():
                    base_minute = 100_000 * (r + 1) + 50_000 * (burst > 1)
                    times[w, name].append(one_round(store, args.ops, base_minute, burst))
        for store in stores.values():
            store.close()

    print(f"usage()+mark() per request, {args.ops} requests x {args.rounds} rounds, alternated")
    print(f"{'workload':9} {'store':7} {'median µs':>10} {'min µs':>8} {'max µs':>8}")
    for (w, name), samples in times.items():
        us = [s * 1e6 for s in samples]
        print(f"{w:9} {name:7} {statistics.median(us):10.1f} {min(us):8.1f} {max(us):8.1f}")


# -- part 2: proxies --------------------------------------------------------

# Every request a quota-governed allow, for anyone on loopback, signed in or not.
POLICY = """\
version: 1
timezone: UTC
sites: {facebook: {domains: [facebook.test]}}
roles:
  loopback:
    members: ["net:127.0.0.0/8"]
    access: {facebook: {level: full, daily_minutes: 1440}}
unauthenticated: loopback
unlisted: deny
"""
CALLS = [lg.Call(None, "GET", "http://facebook.test/1k.bin")]


def proxies(args) -> None:
    for tool in ("nginx", "wrk", "haproxy", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"--proxies needs {tool}: apt-get install nginx-light wrk haproxy redis-server")
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        origin = start_nginx(tmp)
        stack.callback(origin.stop)
        redis_server = stack.enter_context(running_redis(tmp))
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        confdir = make_confdir(tmp)

        def proxy(name: str, state: str, **options):
            p = start_proxy(
                policy=policy, confdir=confdir, workdir=tmp / name, origin=origin,
                metrics=False, audit=False, state=state, quiet=True, options=options,
            )
            stack.callback(p.stop)
            return p

        redis_spec = redis_server.url(timeout=0.1)
        sqlite_one = proxy("sqlite", f"sqlite:{tmp / 'quota.sqlite3'}")
        redis_one = proxy("redis1", redis_spec)
        # Behind HAProxy, as deployed: they read its PROXY headers (so wrk cannot reach them directly).
        pair = [proxy(f"redis{n}", redis_spec, accessgate_trusted_proxies="127.0.0.1/32") for n in (2, 3)]
        balanced = stack.enter_context(running_haproxy([f"127.0.0.1:{p.port}" for p in pair], balance="roundrobin"))
        configs = {
            "1 proxy, sqlite:": sqlite_one.port,
            "1 proxy, redis://": redis_one.port,
            "2 proxies + HAProxy, redis://": balanced.listen[1],
        }
        for port in configs.values():  # warm up: CA, connections, page cache
            lg.wrk(port, CALLS, seconds=2)
        results: dict[str, list[lg.WrkRun]] = {name: [] for name in configs}
        for _ in range(args.proxy_rounds):
            for name, port in configs.items():
                results[name].append(lg.wrk(port, CALLS, seconds=args.seconds))

    print(f"\nrequests/s through the proxy, wrk c=16 keep-alive, 1 KB from nginx, {nproc()} cores, "
          f"{args.proxy_rounds} rounds of {args.seconds} s alternated")
    print(f"{'configuration':32} {'median rps':>10} {'rounds rps':>24} {'p99 ms (median)':>16} {'errors':>8}")
    for name, runs in results.items():
        rps = [r.rps for r in runs]
        print(
            f"{name:32} {statistics.median(rps):10.0f} {' '.join(f'{x:.0f}' for x in rps):>24} "
            f"{statistics.median(r.p99_ms for r in runs):16.1f} {sum(r.errors for r in runs):8d}"
        )
    ratios = [b.rps / a.rps for a, b in zip(results["1 proxy, redis://"], results["2 proxies + HAProxy, redis://"])]
    print(f"2 proxies / 1 proxy (redis): median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="usage+mark pairs per store per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--proxies", action="store_true", help="also measure requests/s through real proxies")
    parser.add_argument("--seconds", type=int, default=8, help="length of one proxy round")
    parser.add_argument("--proxy-rounds", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.seconds <= 60 or not 1 <= args.proxy_rounds <= 10:
        parser.error("keep the run bounded: --seconds 1..60, --proxy-rounds 1..10")
    stores(args)
    if args.proxies:
        proxies(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
