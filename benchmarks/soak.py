#!/usr/bin/env python3
"""Soak: mitmdump + accessgate at saturation for a bounded time, with a realistic mix.

One mitmdump with accessgate (policy/example.yaml, audit log, metrics, SQLite
state) and proxyauth, pinned to one core; a local nginx and the load client
on the other.  The client keeps --connections connections busy (closed loop:
the next request leaves when the last answer is in, which is the proxy's
saturation rate): plain-HTTP connections that cycle through a mix of users
and sites, and HTTPS tunnels (CONNECT + TLS interception) of one user and
site each, reopened every 50 requests.  The mix, per 100 requests, roughly:

    30 read LinkedIn (read-only: allowed)   10 post on LinkedIn (read-only: blocked)
     5 log in to LinkedIn (read_only_allow)  10 Reddit/YouTube (denied)
     5 Facebook (window: blocked outside lunch, quota inside)
    15 full access (sales on X, HR on LinkedIn, communications on TikTok)
    25 unlisted hosts (2,000 distinct names)

from 200 employees plus the policy's named users.  Every name is routed to the
local nginx by tests/support/route_to_origin.py; nothing leaves 127.0.0.1.

At the end the proxy is stopped with SIGINT (a clean stop drains the audit
log) and the soak checks, each a verdict in the JSON output:

    records_equal   audit records (event access) == requests sent
    outcomes_equal  per decision/reason, the audit log agrees with what clients got
    rss_flat        median RSS of the last quarter <= 1.10 x the first quarter's
                    (sampled after a warm-up that fills the bounded caches)
    clean_exit      mitmdump exited 0

and exits 1 if any verdict fails.

    .venv/bin/python benchmarks/soak.py                 # 30 minutes
    .venv/bin/python benchmarks/soak.py --minutes 2     # the CI variant
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import loadgen as lg
from loadgen import Call

from support.nginx import start_nginx  # noqa: E402  (tests/ is on sys.path through loadgen)

EMPLOYEES = [f"emp{i:03d}" for i in range(200)]  # in no group: the `everyone` role
COMMS, SALES, HR = ["alice", "bob", "mia", "noah"], ["carol", "dave", "erin"], ["frank", "grace"]
USERS = EMPLOYEES + COMMS + SALES + HR
UNLISTED = [f"www.site{i}.example" for i in range(2000)]
RSS_LIMIT = 1.10
POST_BODY = b'{"text": "' + b"x" * 200 + b'"}'


def _post(user: str, url: str) -> Call:
    return Call(user, "POST", url, POST_BODY)


# (weight, make(rng) -> Call) for plain-HTTP connections.
HTTP_MIX = [
    (30, lambda r: Call(r.choice(EMPLOYEES), "GET", f"http://www.linkedin.com/feed/?page={r.randrange(50)}")),
    (10, lambda r: _post(r.choice(EMPLOYEES), "http://www.linkedin.com/voyager/api/contentcreation/normShares")),
    (5, lambda r: _post(r.choice(EMPLOYEES), "http://www.linkedin.com/checkpoint/lg/login-submit")),
    (6, lambda r: Call(r.choice(EMPLOYEES), "GET", "http://www.reddit.com/r/berlin/")),
    (4, lambda r: Call(r.choice(SALES), "GET", "http://www.youtube.com/watch?v=dQw4w9WgXcQ")),
    (5, lambda r: Call(r.choice(EMPLOYEES), "GET", "http://www.facebook.com/")),
    (5, lambda r: _post(r.choice(SALES), "http://x.com/i/api/graphql/abc123/CreateTweet")),
    (5, lambda r: _post(r.choice(HR), "http://www.linkedin.com/voyager/api/jobs")),
    (5, lambda r: Call(r.choice(COMMS), "GET", "http://www.tiktok.com/@company")),
    (25, lambda r: Call(r.choice(USERS), r.choice(["GET", "GET", "GET", "POST"]), f"http://{r.choice(UNLISTED)}/")),
]


def https_tunnel(r: random.Random, n: int) -> list[Call]:
    """One tunnel's requests: one user, one site, a mix of reads and writes."""
    kind = r.randrange(4)
    if kind == 0:  # read-only LinkedIn: reads pass, posts are blocked inside the tunnel
        user = r.choice(EMPLOYEES)
        return [Call(user, "GET", "https://www.linkedin.com/feed/") if i % 4 else
                _post(user, "https://www.linkedin.com/voyager/api/contentcreation/normShares") for i in range(n)]
    if kind == 1:  # sales on X, full
        user = r.choice(SALES)
        return [Call(user, "GET", "https://x.com/home") if i % 3 else
                _post(user, "https://x.com/i/api/graphql/abc123/CreateTweet") for i in range(n)]
    if kind == 2:  # denied: the CONNECT passes so that the request inside gets a block page
        return [Call(r.choice(EMPLOYEES), "GET", "https://www.reddit.com/")] * n
    host = r.choice(UNLISTED)
    return [Call(r.choice(USERS), "GET", f"https://{host}/")] * n


def make_plan(connections: int, https_connections: int, seed: int = 5) -> list[list[Call]]:
    r = random.Random(seed)
    weights = [w for w, _ in HTTP_MIX]
    plan = []
    for i in range(connections):
        if i < https_connections:
            plan.append(https_tunnel(r, 50))
        else:
            makers = r.choices([m for _, m in HTTP_MIX], weights=weights, k=600)
            plan.append([make(r) for make in makers])
    return plan


class Sampler(threading.Thread):
    """RSS of the proxy and requests answered so far, every `every` seconds."""

    def __init__(self, pid: int, tally: lg.Tally, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.tally, self.every = pid, tally, every
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, rss bytes, requests)
        self._done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._done.wait(self.every):
            try:
                rss = lg.rss_bytes(self.pid)
            except OSError:
                return  # the proxy is gone; the verdicts will say so
            self.samples.append((time.monotonic() - start, rss, self.tally.requests))

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def audit_outcomes(path: Path) -> Counter:
    """(decision, reason) of every access record in the audit log."""
    counts: Counter = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("event") == "access":
                counts[(record["decision"], record["reason"])] += 1
    return counts


def client_outcomes(tally: lg.Tally) -> Counter:
    """What clients saw, in the audit log's terms: 403 + X-Accessgate-Reason is a block, else allow."""
    counts: Counter = Counter()
    for (status, reason), n in tally.outcomes.items():
        counts[("block", reason) if status == 403 and reason else ("allow", "*")] += n
    return counts


def rss_verdict(samples: list[tuple[float, int, int]], warmup: float) -> dict:
    after = [rss for t, rss, _ in samples if t >= warmup]
    if len(after) < 8:
        return {"ok": False, "why": f"only {len(after)} RSS samples after the warm-up"}
    quarter = len(after) // 4
    first, last = statistics.median(after[:quarter]), statistics.median(after[-quarter:])
    growth = last / first
    return {
        "ok": growth <= RSS_LIMIT,
        "first_quarter_mb": round(first / 2**20, 1),
        "last_quarter_mb": round(last / 2**20, 1),
        "growth": round(growth, 4),
        "limit": RSS_LIMIT,
        "samples": len(after),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="length of the soak (default 30; CI: 2)")
    parser.add_argument("--connections", type=int, default=16, help="client connections (default 16)")
    parser.add_argument("--https", type=int, default=4, help="of which HTTPS tunnels (default 4)")
    parser.add_argument("--warmup", type=float, help="seconds before RSS counts (default 10%% of the run, 10-120 s)")
    parser.add_argument("--json", type=Path, help="write the report and verdicts here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (audit log, proxy output)")
    args = parser.parse_args()
    if not 0.2 <= args.minutes <= 24 * 60:
        parser.error("--minutes must be between 0.2 and 1440")
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, max(10.0, seconds * 0.1))
    every = max(1.0, min(10.0, seconds / 120))  # at least ~100 samples

    proxy_core, load_core = lg.cores()
    os.sched_setaffinity(0, {load_core})
    work = lg.tmpdir("accessgate-soak-")
    started: list = []
    try:
        origin = start_nginx(work, load_core)
        started.append(origin)
        confdir = lg.make_confdir(work)
        htpasswd = lg.bench_htpasswd(work / "htpasswd", USERS)
        proxy = lg.bench_proxy(work / "proxy", confdir=confdir, origin=origin, htpasswd=htpasswd, core=proxy_core)
        started.append(proxy)
        audit_path = proxy.audit_path
        print(f"soak: {args.minutes:g} min, {args.connections} connections ({args.https} HTTPS tunnels), "
              f"proxy pid {proxy.pid} on core {proxy_core}, load on core {load_core}, "
              f"RSS every {every:.0f} s after a {warmup:.0f} s warm-up; load average {os.getloadavg()[0]:.1f}",
              flush=True)  # fmt: skip
        tally = lg.Tally()
        sampler = Sampler(proxy.pid, tally, every)
        sampler.start()
        cpu0 = lg.cpu_seconds(proxy.pid)
        lg.run_load(proxy.port, make_plan(args.connections, args.https), seconds=seconds,
                    ca_file=confdir / "mitmproxy-ca-cert.pem", per_connection=50, tally=tally)
        cpu = lg.cpu_seconds(proxy.pid) - cpu0
        sampler.stop()
        exit_status = proxy.stop(timeout=60)  # SIGINT: accessgate drains its audit log
        records = audit_outcomes(audit_path) if audit_path.exists() else Counter()
        sent = tally.requests + tally.errors
        seen = client_outcomes(tally)
        logged = Counter()
        for (decision, reason), n in records.items():
            logged[("block", reason) if decision == "block" else ("allow", "*")] += n
        rss = rss_verdict(sampler.samples, warmup)
        report = {
            "minutes": args.minutes,
            "connections": args.connections,
            "https_connections": args.https,
            "requests": tally.requests,
            "errors": tally.errors,
            "connect_errors": len(tally.connect_errors),
            "tunnels_opened": tally.connects,
            "seconds": round(tally.seconds, 1),
            "rps": round(tally.rps, 1),
            "p50_ms": round(tally.percentile(0.5), 2),
            "p99_ms": round(tally.percentile(0.99), 2),
            "proxy_cpu": round(cpu / tally.seconds, 3) if tally.seconds else 0,
            "audit_records": sum(records.values()),
            "audit_by_reason": {f"{d}/{r}": n for (d, r), n in sorted(records.items())},
            "client_by_outcome": {f"{d}/{r}": n for (d, r), n in sorted(seen.items())},
            "rss": rss,
            "rss_samples_mb": [(round(t), round(b / 2**20, 1), n) for t, b, n in sampler.samples],
            "proxy_exit": exit_status,
            "load_average": os.getloadavg()[0],
        }
        report["verdicts"] = {
            "records_equal": sum(records.values()) == sent,
            "outcomes_equal": logged == seen,
            "rss_flat": rss["ok"],
            "clean_exit": exit_status == 0,
        }
        report["ok"] = all(report["verdicts"].values())
        _print(report, sent)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        if tally.connect_errors:
            print(f"first connect errors: {tally.connect_errors[:3]}", file=sys.stderr)
        return 0 if report["ok"] else 1
    finally:
        for process in reversed(started):
            process.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _print(r: dict, sent: int) -> None:
    v = r["verdicts"]
    rss = r["rss"]
    print(f"throughput   {r['rps']:.0f} req/s over {r['seconds']:.0f} s ({r['requests']} answered, "
          f"{r['errors']} unanswered, {r['tunnels_opened']} connections/tunnels opened); proxy CPU {r['proxy_cpu']:.2f} core")
    print(f"latency      p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    print(f"audit        {r['audit_records']} access records for {sent} requests sent: "
          f"{'equal' if v['records_equal'] else 'NOT EQUAL'}; by outcome "
          f"{'the same as the clients saw' if v['outcomes_equal'] else 'DIFFERENT from what clients saw'}")
    print(f"             {r['audit_by_reason']}")
    if "growth" in rss:
        print(f"RSS          first quarter {rss['first_quarter_mb']} MB, last quarter {rss['last_quarter_mb']} MB, "
              f"x{rss['growth']:.3f} (limit x{rss['limit']}): {'flat' if rss['ok'] else 'GROWS'}")
    else:
        print(f"RSS          {rss['why']}")
    print(f"proxy exit   {r['proxy_exit']}; load average {r['load_average']:.1f}")
    print("PASS" if r["ok"] else "FAIL: " + ", ".join(k for k, ok in v.items() if not ok))


if __name__ == "__main__":
    sys.exit(main())
