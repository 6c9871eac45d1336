#!/usr/bin/env python3
"""Which part of accessgate costs the proxy what: variants of it against bare mitmdump.

benchmarks/proxy.py measures accessgate as shipped; this takes it apart.
Each variant runs as its own mitmdump, loaded together with bare mitmdump on
their shared core (proxy.py's --together method), one variant at a time,
rounds alternating which of the pair starts first:

    noop               an addon with accessgate's hooks and nothing in them
    idle               accessgate imported, its policy loaded and settled, empty hooks
    no-request-hooks   accessgate, its per-request hooks emptied (threads, tasks and
                       connection hooks still run)
    request-hook-only  accessgate deciding every request, no response hooks (no audit)
    full               accessgate as shipped
    timed              accessgate as shipped, its hooks timed inside the running proxy

Prints each variant's requests/s over bare's per round (median, min, max)
and, for `timed`, the CPU each hook took per call in the running proxy --
usually several times what benchmarks/addon_hooks.py measures in a loop,
where the caches stay warm.  Traffic: proxy.py's HTTP (wrk) or HTTPS mix.

    .venv/bin/python benchmarks/proxy_parts.py [--rounds 6] [--seconds 8] [--proto http] [--only full,timed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy as bench  # noqa: E402
import proxyload as pl  # noqa: E402

PARTS = Path(__file__).resolve().parent / "parts"
VARIANTS = {  # name -> start_mitmdump arguments beyond the common ones
    "noop": {"scripts": [Path(__file__).resolve().parent / "noop_addon.py"]},
    "idle": {"scripts": [PARTS / "idle.py"]},
    "no-request-hooks": {"addon": PARTS / "no_request_hooks.py"},
    "request-hook-only": {"addon": PARTS / "request_hook_only.py"},
    "full": {},
    "timed": {"addon": PARTS / "timed.py"},
}
ACCESSGATE = {"no-request-hooks", "request-hook-only", "full", "timed"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--proto", choices=("http", "https"), default="http")
    parser.add_argument("--only", help=f"comma-separated variants (default all: {','.join(VARIANTS)})")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    args.connections, args.per_tunnel = 16, 100  # as proxy.py
    if args.proto == "http" and not shutil.which("wrk"):
        print("benchmarks/proxy_parts.py needs wrk for HTTP: apt-get install wrk", file=sys.stderr)
        return 2

    proxy_core, load_core = pl.cores()
    os.sched_setaffinity(0, {load_core})
    work = pl.tmpdir("accessgate-parts-")
    started: list = []
    try:
        origin = pl.start_nginx(work, load_core)
        started.append(origin)
        confdir = pl.make_confdir(work)
        common = dict(confdir=confdir, origin=origin, htpasswd=pl.write_htpasswd(work / "htpasswd", bench.USERS),
                      core=proxy_core)  # fmt: skip
        bare = pl.start_mitmdump("bare", workdir=work / "bare", **common)
        started.append(bare)
        variants = {}
        for name in names:
            options = pl.accessgate_options(work / name) if name in ACCESSGATE else None
            variants[name] = pl.start_mitmdump(name, workdir=work / name, accessgate=options, **VARIANTS[name], **common)
            started.append(variants[name])
        ca = confdir / "mitmproxy-ca-cert.pem"
        warmup = argparse.Namespace(**{**vars(args), "seconds": 2})
        for proxy in [bare, *variants.values()]:
            bench.measure(proxy, args.proto, warmup, ca, load_core)
        ratios: dict[str, list[float]] = {name: [] for name in variants}
        print(f"{args.proto}, {args.rounds} rounds of {args.seconds:g} s, each variant loaded together with bare")
        for r in range(args.rounds):
            for name, proxy in variants.items():
                pair = [bare, proxy] if r % 2 == 0 else [proxy, bare]
                got = {s.config: s for s in bench.measure_together(pair, args.proto, args, ca, load_core)}
                ratios[name].append(got[name].rps / got["bare"].rps if got["bare"].rps else 0.0)
                print(f"  round {r + 1} {name:18s} {got[name].rps:6.0f} req/s vs bare {got['bare'].rps:6.0f}"
                      f" -> {ratios[name][-1]:.3f}", flush=True)  # fmt: skip
        for proxy in reversed(started):
            proxy.stop()
        started.clear()
        print(f"\n{'variant':18s} requests/s over bare's, per round")
        for name, values in ratios.items():
            print(f"{name:18s} median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")
        report = work / "timed" / "hooks.json"
        if report.exists():
            print("\nhooks timed inside the running proxy (per call):")
            for hook, row in json.loads(report.read_text()).items():
                print(f"  {hook:16s} {row['calls']:7d} calls  cpu {row['cpu_us']:6.1f} us  wall {row['wall_us']:6.1f} us")
    finally:
        for proxy in reversed(started):
            proxy.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
