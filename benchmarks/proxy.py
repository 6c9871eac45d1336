#!/usr/bin/env python3
"""Proxy throughput: bare mitmdump vs mitmdump + accessgate, HTTP and HTTPS, in one run.

Two proxies run side by side, both `mitmdump -q` with proxyauth (an htpasswd
file) and benchmarks/route_to_origin.py loaded last, which sends every request
to a local nginx whatever site it names:

    bare        mitmdump -q                                   -s route_to_origin.py
    accessgate  mitmdump -q -s addons/accessgate.py (example policy, audit log,
                metrics endpoint, state store)                -s route_to_origin.py

Both are pinned to one core; nginx and the load generators share the other.
Rounds alternate the configurations (A B, B A, ...) for HTTP (wrk, c=16,
benchmarks/wrk-proxy.lua) and for HTTPS through interception (the Python
client in proxyload.py: CONNECT, TLS with the mitmproxy CA, keep-alive,
a new tunnel every --per-tunnel requests).  The traffic is governed by the
policy and every request is allowed, so both proxies do the same work
upstream: frank (HR, full LinkedIn), zoe (read-only LinkedIn, unlisted web),
carol (sales, full X).

Prints requests/s and p50/p99 per configuration and the accessgate/bare
ratio per round (median, min, max); also requests per CPU-second of the
proxy, which a busy shared host disturbs less.  Goal (issue 3): >= 0.97.
With --noop, a third proxy runs an addon whose hooks do nothing
(noop_addon.py): what mitmproxy itself spends on calling any addon.

With --together, bare and accessgate (and bare and noop) are loaded at the
same time instead of in turn, while they share their core: interference
from the rest of a busy host then slows both alike, and the ratio of what
each served is the ratio of their costs per request.  On these shared
machines that is the only way the ratio resolves a few percent.

    .venv/bin/python benchmarks/proxy.py [--rounds 3] [--seconds 10] [--state sqlite] [--noop] [--together]
                                         [--build python|compiled]

--build compiled runs accessgate with its compiled engine (ACCESSGATE_COMPILE=1,
as deploy/ installs it), built for the run by scripts/build-compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxyload as pl  # noqa: E402
from compiled import compiled_build  # noqa: E402

USERS = ["frank", "zoe", "carol"]
MIX = [
    pl.Call("frank", "GET", "http://www.linkedin.com/feed/"),  # HR: full
    pl.Call("zoe", "GET", "http://www.linkedin.com/in/someone/"),  # everyone: read-only, a read
    pl.Call("carol", "GET", "http://x.com/home"),  # sales: full
    pl.Call("zoe", "GET", "http://www.example.org/news/"),  # unlisted: not governed
]
LUA = Path(__file__).resolve().parent / "wrk-proxy.lua"


@dataclass(frozen=True)
class Sample:
    config: str
    proto: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu: float  # share of one core the proxy used during the sample
    errors: int
    batch: int = 0  # samples compared with each other share a batch


    @property
    def per_cpu_second(self) -> float:
        return self.rps / self.cpu if self.cpu else 0.0


def wrk_args(proxy: pl.Mitmdump, seconds: float, connections: int, core: int) -> list[str]:
    specs = [f"{c.method} {c.url} {c.proxy_authorization()}" for c in MIX]
    return pl.pin(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s",
         "-s", str(LUA), f"http://127.0.0.1:{proxy.port}", "--", *specs],
        core,
    )  # fmt: skip


def wrk_row(stdout: str, stderr: str) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from wrk-proxy.lua's JSON summary line."""
    line = next((l for l in stdout.splitlines() if l.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{stdout}\n{stderr}")
    out = json.loads(line)
    errors = sum(out[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return out["requests"] / (out["duration_us"] / 1e6), out["p50_us"] / 1000, out["p99_us"] / 1000, errors


def https_plan(args) -> list[list[pl.Call]]:
    plan = [[pl.Call(c.user, c.method, c.url.replace("http://", "https://"))] for c in MIX]
    return [plan[i % len(plan)] for i in range(args.connections)]


def tally_row(tally: pl.Tally) -> tuple[float, float, float, int]:
    errors = tally.errors + len(tally.connect_errors) + sum(
        n for (status, _), n in tally.outcomes.items() if status != 200
    )
    return tally.rps, tally.percentile(0.5), tally.percentile(0.99), errors


def measure(proxy: pl.Mitmdump, proto: str, args, ca: Path, load_core: int) -> Sample:
    cpu0, t0 = pl.cpu_seconds(proxy.pid), time.monotonic()
    if proto == "http":
        done = subprocess.run(wrk_args(proxy, args.seconds, args.connections, load_core),
                              capture_output=True, text=True, timeout=args.seconds + 60)
        rps, p50, p99, errors = wrk_row(done.stdout, done.stderr)
    else:
        tally = pl.run_load(
            proxy.port, https_plan(args), seconds=args.seconds, ca_file=ca, per_connection=args.per_tunnel,
        )  # fmt: skip
        rps, p50, p99, errors = tally_row(tally)
    cpu = (pl.cpu_seconds(proxy.pid) - cpu0) / (time.monotonic() - t0)
    return Sample(proxy.name, proto, rps, p50, p99, cpu, errors)


def measure_together(pair: list[pl.Mitmdump], proto: str, args, ca: Path, load_core: int) -> list[Sample]:
    """Load both proxies of `pair` at once, on their shared core, for the same seconds.

    Whatever else the machine does in those seconds slows both alike, and the
    kernel gives two busy processes on one core equal CPU time, so the ratio
    of what each served is the ratio of their costs per request.
    """
    cpu0 = [pl.cpu_seconds(p.pid) for p in pair]
    t0 = time.monotonic()
    if proto == "http":
        runs = [
            subprocess.Popen(wrk_args(p, args.seconds, args.connections, load_core),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for p in pair
        ]  # fmt: skip
        rows = [wrk_row(*run.communicate(timeout=args.seconds + 60)) for run in runs]
    else:
        tallies = [pl.Tally() for _ in pair]
        pl.run_load_together(
            [(p.port, https_plan(args), t) for p, t in zip(pair, tallies)],
            seconds=args.seconds, ca_file=ca, per_connection=args.per_tunnel,
        )  # fmt: skip
        rows = [tally_row(t) for t in tallies]
    elapsed = time.monotonic() - t0
    return [
        Sample(p.name, proto, rps, p50, p99, (pl.cpu_seconds(p.pid) - c0) / elapsed, errors)
        for p, c0, (rps, p50, p99, errors) in zip(pair, cpu0, rows)
    ]


def summarize(samples: list[Sample], proto: str, names: list[str]) -> dict:
    """Medians per configuration and, for each one but bare, its ratios to bare per round."""
    by = {name: [s for s in samples if s.proto == proto and s.config == name] for name in names}
    out: dict = {}
    for name in names[1:]:
        pairs = [(a, b) for a in by[name] for b in by["bare"] if a.batch == b.batch]
        suffix = "" if name == "accessgate" else f"_{name}"
        out["ratio" + suffix] = _spread([a.rps / b.rps for a, b in pairs if b.rps])
        out["ratio_per_cpu_second" + suffix] = _spread(
            [a.per_cpu_second / b.per_cpu_second for a, b in pairs if b.per_cpu_second]
        )
    for name, rows in by.items():
        out[name] = {
            "rps": statistics.median(s.rps for s in rows),
            "p50_ms": statistics.median(s.p50_ms for s in rows),
            "p99_ms": statistics.median(s.p99_ms for s in rows),
            "cpu": statistics.median(s.cpu for s in rows),
            "per_cpu_second": statistics.median(s.per_cpu_second for s in rows),
            "errors": sum(s.errors for s in rows),
        }
    return out


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds per protocol (default 3)")
    parser.add_argument("--seconds", type=float, default=10, help="length of one measurement (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent client connections (default 16)")
    parser.add_argument("--per-tunnel", type=int, default=100, help="HTTPS requests per CONNECT tunnel (default 100)")
    parser.add_argument("--state", choices=["sqlite", "memory"], default="sqlite",
                        help="accessgate_state for the accessgate proxy (default sqlite, the product default)")
    parser.add_argument("--noop", action="store_true",
                        help="also run mitmdump with an addon whose hooks do nothing (benchmarks/noop_addon.py): "
                             "what mitmproxy spends on calling any addon")
    parser.add_argument("--together", action="store_true",
                        help="load bare and accessgate (and bare and noop) at the same time on their shared core "
                             "instead of in turn: drift on a busy host then slows both alike")
    parser.add_argument("--build", choices=("python", "compiled"), default="python",
                        help="accessgate's engine as an editable install has it (python) or compiled with mypyc")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("benchmarks/proxy.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    if args.rounds < 1 or not 1 <= args.seconds <= 600:
        parser.error("--rounds >= 1 and --seconds between 1 and 600")

    proxy_core, load_core = pl.cores()
    os.sched_setaffinity(0, {load_core})  # the Python HTTPS client is load too
    work = pl.tmpdir("accessgate-bench-proxy-")
    started: list = []
    builds = contextlib.ExitStack()
    try:
        if args.build == "compiled":
            # Every mitmdump inherits it; only accessgate's imports change.
            os.environ["PYTHONPATH"] = builds.enter_context(compiled_build())["PYTHONPATH"]
        origin = pl.start_nginx(work, load_core)
        started.append(origin)
        confdir = pl.make_confdir(work)
        htpasswd = pl.write_htpasswd(work / "htpasswd", USERS)
        common = dict(workdir=work, confdir=confdir, origin=origin, htpasswd=htpasswd, core=proxy_core)
        bare = pl.start_mitmdump("bare", **{**common, "workdir": work / "bare"})
        started.append(bare)
        gate = pl.start_mitmdump(
            "accessgate", **{**common, "workdir": work / "accessgate"},
            accessgate=pl.accessgate_options(work / "accessgate", args.state),
        )  # fmt: skip
        started.append(gate)
        engine = _engine_build(gate)
        if engine != args.build:
            raise RuntimeError(f"asked for the {args.build} engine, but accessgate runs the {engine!r} one")
        proxies = [bare, gate]
        if args.noop:
            noop = pl.start_mitmdump("noop", **{**common, "workdir": work / "noop"},
                                     scripts=[Path(__file__).resolve().parent / "noop_addon.py"])
            started.append(noop)
            proxies.append(noop)
        ca = confdir / "mitmproxy-ca-cert.pem"
        load_before = os.getloadavg()
        print(f"proxies on core {proxy_core}, nginx and load on core {load_core}; "
              f"{args.rounds} rounds x {args.seconds:.0f} s, c={args.connections}, "
              f"accessgate state {args.state}:, engine {engine}, load average {load_before[0]:.1f}", flush=True)
        warm = argparse.Namespace(**{**vars(args), "seconds": 2})
        for proxy in proxies:  # certificates, caches, first imports
            for proto in ("http", "https"):
                measure(proxy, proto, warm, ca, load_core)
        samples: list[Sample] = []
        for r in range(args.rounds):
            for proto in ("http", "https"):
                if args.together:
                    # bare with each other configuration, both loaded at once;
                    # who is started first alternates.
                    batches = [[bare, other] if r % 2 == 0 else [other, bare] for other in proxies[1:]]
                    measured = [
                        dataclasses.replace(s, batch=r * len(batches) + i)
                        for i, pair in enumerate(batches)
                        for s in measure_together(pair, proto, args, ca, load_core)
                    ]
                else:
                    # Each round starts with the next configuration, so that
                    # none is always measured first (or right after another).
                    order = proxies[r % len(proxies):] + proxies[: r % len(proxies)]
                    measured = [dataclasses.replace(measure(proxy, proto, args, ca, load_core), batch=r)
                                for proxy in order]
                for s in measured:
                    samples.append(s)
                    print(f"  round {r + 1} {proto:5} {s.config:10} {s.rps:8.0f} req/s  p50 {s.p50_ms:6.1f} ms"
                          f"  p99 {s.p99_ms:6.1f} ms  proxy cpu {s.cpu:4.2f}  errors {s.errors}", flush=True)
        load_after = os.getloadavg()
        names = [p.name for p in proxies]
        gate.stop()
        records = _count_access_records(gate.audit_path)
        result = {
            "http": summarize(samples, "http", names),
            "https": summarize(samples, "https", names),
            "state": args.state,
            "load_average": [load_before[0], load_after[0]],
            "audit_records": records,
            "samples": [s.__dict__ for s in samples],
        }
        print()
        print(f"{'':6}{'config':11}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu':>6}{'req/cpu-s':>10}")
        for proto in ("http", "https"):
            for name in names:
                row = result[proto][name]
                print(f"{proto:6}{name:11}{row['rps']:8.0f}{row['p50_ms']:8.1f}{row['p99_ms']:8.1f}"
                      f"{row['cpu']:6.2f}{row['per_cpu_second']:10.0f}")
            ratio, per_cpu = result[proto]["ratio"], result[proto]["ratio_per_cpu_second"]
            print(f"{proto:6}accessgate/bare req/s: median {ratio['median']:.3f} (min {ratio['min']:.3f}, "
                  f"max {ratio['max']:.3f}, {ratio['n']} pairs); per CPU-second: median {per_cpu['median']:.3f} "
                  f"(min {per_cpu['min']:.3f}, max {per_cpu['max']:.3f})")
            if "ratio_noop" in result[proto]:
                ratio, per_cpu = result[proto]["ratio_noop"], result[proto]["ratio_per_cpu_second_noop"]
                print(f"{proto:6}noop/bare       req/s: median {ratio['median']:.3f} (min {ratio['min']:.3f}, "
                      f"max {ratio['max']:.3f}); per CPU-second: median {per_cpu['median']:.3f} "
                      f"(min {per_cpu['min']:.3f}, max {per_cpu['max']:.3f})")
        print(f"audit records written by the accessgate proxy: {records}; "
              f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (2 cores)")
        errors = sum(result[p][n]["errors"] for p in ("http", "https") for n in names)
        if errors:
            print(f"WARNING: {errors} requests failed or were not answered 200; see {work}", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 1 if errors else 0
    finally:
        for process in reversed(started):
            process.stop()
        builds.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _engine_build(proxy: pl.Mitmdump, timeout: float = 10.0) -> str | None:
    """Which engine build the accessgate proxy logged at its policy_loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proxy.output().splitlines():
            if '"policy_loaded"' in line:
                return json.loads(line).get("engine")
        time.sleep(0.1)
    return None


def _count_access_records(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if b'"event":"access"' in line.replace(b" ", b""))


if __name__ == "__main__":
    sys.exit(main())
