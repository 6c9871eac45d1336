"""What a quota costs per request: usage() + mark() on each state store.

    .venv/bin/python benchmarks/state_store.py [--ops 2000] [--rounds 5]

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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.redis_server import running_redis  # noqa: E402

from accessgate.state import open_store  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="usage+mark pairs per store per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
