#!/usr/bin/env python3
"""What a `warn` grant costs per request, once the user gave a reason.

    .venv/bin/python benchmarks/warn.py [--decisions 5000] [--rounds 5]

A request to a continued warn site is decided as full access after the
engine asks the state store until when the user continued
(`continued_until`); a request to a full site asks nothing.  This times
decide() for both, for 100 users, with each state store the proxy can use:
memory:, sqlite: (a temp file) and redis:// (a redis-server it starts on a
free loopback port), alternated (full, warn, kept, per store, round
after round) because absolute times drift on shared hosts.  Prints microseconds
per decision (median, min, max over rounds) and the ratio to full within
each store, for `warn` (the store asked on every request) and `kept` (as
the proxy asks it: through stores/continued.py, which reuses an answer for
up to 30 seconds).  Needs the Debian package redis-server for the Redis row
(skipped without it).  Bounded: decisions x rounds x 3 stores x 2 kinds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.policies import everyone_policy  # noqa: E402
from support.redis_server import running_redis  # noqa: E402

from accessgate.decision import Identity, Request, decide  # noqa: E402
from accessgate.policy.loader import parse_policy  # noqa: E402
from accessgate.stores import open_store  # noqa: E402
from accessgate.stores.continued import RememberedContinuations  # noqa: E402

POLICY = everyone_policy({"tiktok": "{level: warn, continue_minutes: 60}", "linkedin": "full"}, None,
                         unauthenticated="deny")
USERS = [Identity(user=f"u{i}") for i in range(100)]
WARN = Request("GET", ("www.tiktok.test",), "/feed", "https")
FULL = Request("GET", ("www.linkedin.test",), "/feed", "https")


def one_round(policy, store, request: Request, n: int, continuations=None) -> float:
    """Seconds per decide() of `request`, users in turn."""
    now = datetime.now(timezone.utc)
    went_on = continuations if continuations is not None else store
    started = time.perf_counter()
    for i in range(n):
        decision = decide(request, USERS[i % 100], policy, now, store, went_on)
        if not decision.allowed:
            raise SystemExit(f"expected an allow, got {decision}")
    return (time.perf_counter() - started) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    policy = parse_policy(POLICY)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        specs = {"memory": "memory:", "sqlite": f"sqlite:{Path(tmp) / 'state.sqlite3'}"}
        if shutil.which("redis-server"):
            specs["redis"] = stack.enter_context(running_redis(Path(tmp))).url(timeout=1)
        else:
            print("(no redis-server: the redis row is left out)")
        stores = {name: open_store(spec) for name, spec in specs.items()}
        now = time.time()
        for store in stores.values():  # everyone gave a reason for tiktok
            for identity in USERS:
                store.continue_until(identity.subject, "tiktok", now + 3600, now)
            one_round(policy, store, WARN, 200)  # warm up: connections, page cache, plans
            one_round(policy, store, FULL, 200)
        kinds = ("full", "warn", "kept")
        times: dict[tuple[str, str], list[float]] = {(n, k): [] for n in stores for k in kinds}
        for _ in range(args.rounds):
            for name, store in stores.items():
                times[name, "full"].append(one_round(policy, store, FULL, args.decisions))
                times[name, "warn"].append(one_round(policy, store, WARN, args.decisions))
                kept = RememberedContinuations(store)  # afresh each round: its first reads ask the store
                times[name, "kept"].append(one_round(policy, store, WARN, args.decisions, kept))
        for store in stores.values():
            store.close()

    print(f"decide() per request, {args.decisions} decisions x {args.rounds} rounds, alternated")
    print(f"{'store':7} {'kind':5} {'median µs':>10} {'min µs':>8} {'max µs':>8} {'x full':>10}")
    for (name, kind), samples in times.items():
        us = [s * 1e6 for s in samples]
        ratio = ""
        if kind != "full":
            ratio = f"{statistics.median(samples) / statistics.median(times[name, 'full']):10.1f}x"
        print(f"{name:7} {kind:5} {statistics.median(us):10.2f} {min(us):8.2f} {max(us):8.2f} {ratio}")


if __name__ == "__main__":
    main()
