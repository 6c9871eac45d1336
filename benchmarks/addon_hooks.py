#!/usr/bin/env python3
"""Where accessgate's per-request time goes: its hooks timed in-process, one by one.

The proxy benchmark (proxy.py) says how much slower mitmdump is with
accessgate; this says why.  It loads the addon into mitmproxy's test context
with the example policy, an audit log and SQLite state (no metrics endpoint:
the counters are still updated), feeds it pre-built flows of the proxy
benchmark's traffic mix and times each hook per request, plus the CPU the
audit writer thread spends off the hot path.

    .venv/bin/python benchmarks/addon_hooks.py [--requests 20000] [--profile]

With --profile, CALLEES=REGEX in the environment also prints what the
functions matching REGEX call (pstats print_callees), e.g.
CALLEES='_requestheaders|_decide'.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from accessgate.proxy.addon import AccessGate

REPO = Path(__file__).resolve().parents[1]
MIX = [  # (user, host, path): the proxy benchmark's requests, all allowed
    ("frank", "www.linkedin.com", "/feed/"),
    ("zoe", "www.linkedin.com", "/in/someone/"),
    ("carol", "x.com", "/home"),
    ("zoe", "www.example.org", "/news/"),
]
HOOKS = ("requestheaders", "request", "responseheaders", "response")


def make_flows(n: int) -> list[http.HTTPFlow]:
    body = bytes(1024)
    client = tflow.tclient_conn()  # one keep-alive connection, as with wrk
    flows = []
    for i in range(n):
        user, host, path = MIX[i % len(MIX)]
        f = tflow.tflow()
        f.client_conn = client
        f.request = http.Request.make("GET", f"http://{host}{path}", b"",
                                      {"Host": host, "Accept": "*/*", "User-Agent": "bench"})
        f.metadata["proxyauth"] = (user, "pw")  # what mitmproxy's proxyauth leaves
        f.response = None
        f._resp = http.Response.make(200, body, {"Content-Type": "application/octet-stream"})  # type: ignore[attr-defined]
        flows.append(f)
    return flows


def run(ag: AccessGate, flows: list[http.HTTPFlow]) -> dict[str, list[float]]:
    spent: dict[str, list[float]] = {h: [] for h in HOOKS}
    clock = time.perf_counter
    request = getattr(ag, "request", None)  # the body arrived: since issue 21, for writes named by what they say
    for f in flows:
        t0 = clock()
        ag.requestheaders(f)
        t1 = clock()
        if request is not None:
            request(f)
        t1b = clock()
        f.response = f._resp  # type: ignore[attr-defined]
        t2 = clock()
        ag.responseheaders(f)
        t3 = clock()
        ag.response(f)
        t4 = clock()
        spent["requestheaders"].append(t1 - t0)
        spent["request"].append(t1b - t1)
        spent["responseheaders"].append(t3 - t2)
        spent["response"].append(t4 - t3)
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    args = parser.parse_args()
    if not 1000 <= args.requests <= 1_000_000:
        parser.error("--requests between 1,000 and 1,000,000")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    work = Path(tempfile.mkdtemp(prefix="accessgate-hooks-"))
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, work: Path) -> int:
    ag = AccessGate()
    with taddons.context(ag) as tctx:
        tctx.configure(
            ag,
            accessgate_policy=str(REPO / "policy" / "example.yaml"),
            accessgate_audit_log=str(work / "audit.jsonl"),
            accessgate_state=f"sqlite:{work / 'state.sqlite'}",
            accessgate_metrics="",
        )
        run(ag, make_flows(2000))  # warm caches
        flows = make_flows(args.requests)
        cpu0, main0 = time.process_time(), time.thread_time()
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        spent = run(ag, flows)
        if profiler:
            profiler.disable()
        main_cpu = time.thread_time() - main0
        ag.done()  # drains the audit log: its writer's CPU is part of the cost
        other_cpu = (time.process_time() - cpu0) - main_cpu
    n = len(flows)
    total = [sum(x) for x in zip(*(spent[h] for h in HOOKS))]
    print(f"accessgate hooks, {n} requests (example policy, audit log, SQLite state, metrics counters):")
    for h in HOOKS:
        if any(spent[h]):
            print(f"  {h:16} mean {statistics.fmean(spent[h]) * 1e6:6.1f} us  p50 "
                  f"{statistics.median(spent[h]) * 1e6:6.1f} us")
    print(f"  {'all hooks':16} mean {statistics.fmean(total) * 1e6:6.1f} us  p50 {statistics.median(total) * 1e6:6.1f} us")
    print(f"  audit writer and other threads: {other_cpu / n * 1e6:.1f} us of CPU per request")
    print(f"  total per request: {(statistics.fmean(total) + other_cpu / n) * 1e6:.1f} us")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        if os.environ.get("CALLEES"):
            pstats.Stats(profiler).sort_stats("cumulative").print_callees(os.environ["CALLEES"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
