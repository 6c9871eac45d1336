#!/usr/bin/env python3
"""Proxy throughput per core: accessgate, bare mitmdump and Squid, side by side in one run.

    .venv/bin/python benchmarks/proxy.py --squid [--rounds 3] [--seconds 10]
    .venv/bin/python benchmarks/proxy.py --together [--rounds 6] [--build compiled]
    .venv/bin/python benchmarks/proxy.py --seal --together [--rounds 6]

The proxies (pinned to one core; nginx and the load generators share the
other), all with proxyauth and every request routed to the local nginx:

    bare        mitmdump -q, proxyauth ({SHA} htpasswd), routing to nginx
    accessgate  the same + accessgate (policy/example.yaml, audit log, metrics
                endpoint, quota state: --state, sqlite by default)
    squid       with --squid: Squid, one process, no cache, basic auth, the
                example policy's sites, roles and levels as dstdomain,
                proxy_auth, method and time ACLs (tests/support/squid.py)

Traffic: frank (HR, full LinkedIn), zoe (read-only LinkedIn, reads; the
unlisted web), carol (sales, full X); every request is allowed, so every
proxy forwards the same requests.  HTTP: wrk -t1 -c16 (wrk-proxy.lua).
HTTPS: the asyncio client of loadgen.py, CONNECT + TLS through mitmproxy's
interception, a new tunnel every --per-tunnel requests.  Squid runs HTTP
only: Debian's `squid` cannot intercept TLS (that is `squid-openssl`), so it
would only relay the tunnels' bytes.

Default mode: rounds alternate the configurations, each alone on the proxy
core, each round starting with the next one.  Printed per configuration:
requests/s, p50/p99, the share of its core the proxy used, and requests
per CPU-second of the proxy process (with Squid's auth helpers), which is
requests per second per core and the steadier figure on a shared host;
then accessgate's ratio to each other configuration, per round (median,
min, max).

--together loads bare and accessgate at the same time while they share
their core: whatever else the host does slows both alike, and the kernel
splits the core evenly, so the ratio of what each served is the ratio of
their costs per request.  That is how accessgate's overhead is read.

--build compiled runs accessgate with its compiled engine (ACCESSGATE_COMPILE=1,
as deploy/ installs it), built for the run by scripts/build-compiled.

--seal adds a fourth configuration, `sealed`: accessgate with its audit log
sealed (accessgate_audit_seal_key, a key made for the run, epochs of
--seal-interval seconds).  With --together it is loaded beside accessgate
unsealed (instead of bare beside accessgate), and the ratio sealed/accessgate
is sealing's cost; the CPU per request between the two is printed in µs.

--baseline REF adds accessgate as it was at git revision REF (its package,
addon script and example policy, from `git archive`), named `baseline`:
a change's cost is accessgate/baseline, before and after in one run.  With
--together, baseline and accessgate are the pair loaded at once.
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

import loadgen as lg
from compiled import compiled_build

from support.nginx import start_nginx  # noqa: E402  (tests/ is on sys.path through loadgen)
from support.squid import start_squid  # noqa: E402

USERS = ["frank", "zoe", "carol"]
MIX = [
    lg.Call("frank", "GET", "http://www.linkedin.com/feed/"),  # HR: full
    lg.Call("zoe", "GET", "http://www.linkedin.com/in/someone/"),  # everyone: read-only, a read
    lg.Call("carol", "GET", "http://x.com/home"),  # sales: full
    lg.Call("zoe", "GET", "http://www.example.org/news/"),  # unlisted: not governed
]


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


SUBJECTS = ("accessgate", "sealed")  # the configurations whose ratios to the others are printed


@dataclass
class Config:
    name: str
    port: int
    pid: int
    children: bool = False  # count the CPU of its child processes (Squid's helpers)

    def cpu(self) -> float:
        return lg.cpu_seconds(self.pid, children=self.children)


# -- Squid's rules for the same policy ---------------------------------------------


def squid_rules(policy) -> str:
    """The policy as Squid ACLs: who may reach which site at which level, first match wins.

    Sites are dstdomain ACLs (a domain covers its subdomains), members
    proxy_auth (users, groups' users, `all` = signed in) or src (`net:`)
    ACLs, read-only the methods GET HEAD OPTIONS, windows `time` ACLs (the
    host's local time; one crossing midnight ends there).  Squid has no per-user minute counts, so daily
    quotas and read_only_allow exceptions are left out: Squid does less
    per request than the policy asks.
    """
    lines = ["acl reads method GET HEAD OPTIONS"]
    for name, site in policy.sites.items():
        lines.append(f"acl site_{name} dstdomain " + " ".join(f".{d}" for d in site.domains))
    lines.append("acl catalog dstdomain " + " ".join(f".{d}" for s in policy.sites.values() for d in s.domains))
    days = "SMTWHFA"  # Squid's day letters, Sunday first
    allows: dict[str, list[str]] = {name: [] for name in [*policy.sites, "*"]}
    for role in policy.roles.values():
        members = _member_acls(role, policy, lines)
        for site, grant in role.access.items():
            if grant.level.value == "deny":
                continue
            conditions = [] if site == "*" else [f"site_{site}"]
            if grant.level.value == "read-only":
                conditions.append("reads")
            for w, window in enumerate(grant.windows):
                acl = f"window_{role.name}_{site.strip('*') or 'any'}_{w}"
                end = "24:00" if window.end is None or window.crosses_midnight else f"{window.end:%H:%M}"
                letters = "".join(days[(d + 1) % 7] for d in sorted(window.days))
                lines.append(f"acl {acl} time {letters} {window.start:%H:%M}-{end}")
                conditions.append(acl)
            allows[site] += [" ".join(["http_access allow", member, *conditions]) for member in members]
    for site_allows in [allows.pop("*"), *allows.values()]:
        # Lines that need no sign-in first: a proxy_auth ACL asks an anonymous client for credentials.
        lines += sorted(site_allows, key=lambda line: "signed_in" in line or "users_" in line)
    lines.append("http_access deny catalog")
    if policy.unlisted.value == "allow":
        lines.append("http_access allow signed_in")
    return "\n".join(lines) + "\n"


def _member_acls(role, policy, lines: list[str]) -> list[str]:
    users, acls = set(), []
    for n, member in enumerate(role.members):
        kind = member.kind.value
        if kind == "all":
            acls.append("signed_in")
        elif kind == "net":
            lines.append(f"acl net_{role.name}_{n} src {member.network}")
            acls.append(f"net_{role.name}_{n}")
        elif kind == "group":
            users |= policy.groups.get(member.value, frozenset())
        else:
            users.add(member.value)
    if users:
        lines.append(f"acl users_{role.name} proxy_auth -i {' '.join(sorted(users))}")  # logins ignore case
        acls.append(f"users_{role.name}")
    return acls


# -- measuring -----------------------------------------------------------------------


def https_plan(args) -> list[list[lg.Call]]:
    plan = [[lg.Call(c.user, c.method, c.url.replace("http://", "https://"))] for c in MIX]
    return [plan[i % len(plan)] for i in range(args.connections)]


def tally_row(tally: lg.Tally) -> lg.WrkRun:
    errors = tally.errors + len(tally.connect_errors) + sum(
        n for (status, _), n in tally.outcomes.items() if status != 200
    )
    return lg.WrkRun(tally.rps, tally.percentile(0.5), tally.percentile(0.99), errors)


def measure(configs: list[Config], proto: str, args, ca: Path, load_core: int) -> list[Sample]:
    """Load every configuration of `configs` at once for the same seconds (alone, if there is one)."""
    cpu0 = [c.cpu() for c in configs]
    t0 = time.monotonic()
    if proto == "http":
        runs = [
            subprocess.Popen(lg.wrk_command(c.port, MIX, seconds=args.seconds, connections=args.connections,
                                            core=load_core), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c in configs
        ]  # fmt: skip
        rows = [lg.wrk_result(*run.communicate(timeout=args.seconds + 60)) for run in runs]
    else:
        tallies = [lg.Tally() for _ in configs]
        lg.run_load_together(
            [(c.port, https_plan(args), t) for c, t in zip(configs, tallies)],
            seconds=args.seconds, ca_file=ca, per_connection=args.per_tunnel,
        )  # fmt: skip
        rows = [tally_row(t) for t in tallies]
    elapsed = time.monotonic() - t0
    return [
        Sample(c.name, proto, r.rps, r.p50_ms, r.p99_ms, (c.cpu() - c0) / elapsed, r.errors)
        for c, c0, r in zip(configs, cpu0, rows)
    ]


def batches(configs: list[Config], proto: str, r: int, together: bool) -> list[list[Config]]:
    """What one round loads at once, in order: pairs (bare, or baseline, and accessgate; or accessgate
    and sealed), or each configuration alone."""
    present = [c for c in configs if proto == "http" or c.name != "squid"]
    if together:
        names = [c.name for c in present]
        first, second = (("accessgate", "sealed") if "sealed" in names
                         else ("baseline", "accessgate") if "baseline" in names else ("bare", "accessgate"))
        one, two = present[names.index(first)], present[names.index(second)]
        return [[one, two] if r % 2 == 0 else [two, one]]
    # Each round starts with the next configuration, so that none is always
    # measured first (or right after another).
    order = present[r % len(present):] + present[: r % len(present)]
    return [[c] for c in order]


def summarize(samples: list[Sample], proto: str, names: list[str]) -> dict:
    """Medians per configuration, and accessgate's (and sealed's) ratio to each other configuration per round."""
    by = {name: [s for s in samples if s.proto == proto and s.config == name] for name in names}
    by = {name: rows for name, rows in by.items() if rows}
    out: dict = {"ratios": {}}
    for subject in SUBJECTS:
        if subject not in by:
            continue
        # accessgate against the proxies that are not accessgate; sealed against all the others
        others = [n for n in by if n not in SUBJECTS] if subject == "accessgate" else [n for n in by if n != subject]
        for name in others:
            pairs = [(a, b) for a in by[subject] for b in by[name] if a.batch == b.batch]
            if not pairs:
                continue
            key = name if subject == "accessgate" else f"{subject}/{name}"
            out["ratios"][key] = {
                "rps": _spread([a.rps / b.rps for a, b in pairs if b.rps]),
                "per_cpu_second": _spread([a.per_cpu_second / b.per_cpu_second for a, b in pairs if b.per_cpu_second]),
                # CPU microseconds per request the subject spends beyond the other, per pair
                "cpu_us_more": _spread([1e6 / a.per_cpu_second - 1e6 / b.per_cpu_second for a, b in pairs
                                        if a.per_cpu_second and b.per_cpu_second]),
            }
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
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def report(result: dict, names: list[str]) -> None:
    print(f"\n{'':6}{'config':11}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu':>6}{'req/cpu-s':>10}")
    for proto in ("http", "https"):
        for name in names:
            if name in result[proto]:
                row = result[proto][name]
                print(f"{proto:6}{name:11}{row['rps']:8.0f}{row['p50_ms']:8.1f}{row['p99_ms']:8.1f}"
                      f"{row['cpu']:6.2f}{row['per_cpu_second']:10.0f}")
        for other, ratio in result[proto]["ratios"].items():
            rps, per_cpu, more = ratio["rps"], ratio["per_cpu_second"], ratio["cpu_us_more"]
            label = other if "/" in other else f"accessgate/{other}"
            print(f"{proto:6}{label:17} req/s: median {rps['median']:.3f} (min {rps['min']:.3f}, "
                  f"max {rps['max']:.3f}, {rps['n']} pairs); per CPU-second: median {per_cpu['median']:.3f} "
                  f"(min {per_cpu['min']:.3f}, max {per_cpu['max']:.3f}); CPU per request "
                  f"{more['median']:+.1f} µs (min {more['min']:+.1f}, max {more['max']:+.1f})")


# -- the run ---------------------------------------------------------------------------


def checkout(ref: str, work: Path) -> Path:
    """The repository at `ref` (`git archive`), unpacked under `work`."""
    target = work / "baseline-src"
    target.mkdir()
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per protocol (default 3)")
    parser.add_argument("--seconds", type=float, default=10, help="length of one measurement (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent client connections (default 16)")
    parser.add_argument("--per-tunnel", type=int, default=100, help="HTTPS requests per CONNECT tunnel (default 100)")
    parser.add_argument("--state", choices=["sqlite", "memory"], default="sqlite",
                        help="accessgate_state for the accessgate proxy (default sqlite, the product default)")
    parser.add_argument("--squid", action="store_true", help="also measure Squid (HTTP), the reference proxy")
    parser.add_argument("--together", action="store_true",
                        help="load bare and accessgate at the same time on their shared core instead of in turn")
    parser.add_argument("--build", choices=("python", "compiled"), default="python",
                        help="accessgate's engine as an editable install has it (python) or compiled with mypyc")
    parser.add_argument("--seal", action="store_true",
                        help="also run accessgate with its audit log sealed; with --together, beside accessgate")
    parser.add_argument("--seal-interval", type=int, default=900,
                        help="the sealed proxy's key epoch in seconds (default 900, the product's)")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run accessgate as at this git revision (Python build), to compare before and after")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("benchmarks/proxy.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    if args.rounds < 1 or not 1 <= args.seconds <= 600 or args.rounds * args.seconds > 3600:
        parser.error("--rounds >= 1, --seconds between 1 and 600, rounds x seconds at most an hour")
    if args.seal and args.squid:
        parser.error("--seal compares accessgate with itself sealed: leave Squid to a run of its own")
    if args.squid and args.together:
        parser.error("--squid measures in turn: Squid is ten times as fast, two proxies at once would not split the core evenly")

    proxy_core, load_core = lg.cores()
    ncores = len(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {load_core})  # the Python HTTPS client is load too
    work = lg.tmpdir("accessgate-bench-proxy-")
    started: list = []
    builds = contextlib.ExitStack()
    try:
        if args.build == "compiled":
            # Every mitmdump inherits it; only accessgate's imports change.
            os.environ["PYTHONPATH"] = builds.enter_context(compiled_build())["PYTHONPATH"]
        origin = start_nginx(work, load_core)
        started.append(origin)
        confdir = lg.make_confdir(work)
        htpasswd = lg.bench_htpasswd(work / "htpasswd", USERS)
        common = dict(confdir=confdir, origin=origin, htpasswd=htpasswd, core=proxy_core)
        bare = lg.bench_proxy(work / "bare", accessgate=False, **common)
        started.append(bare)
        gate = lg.bench_proxy(work / "accessgate", state=args.state, **common)
        started.append(gate)
        engine = lg.engine_build(gate)
        if engine != args.build:
            raise RuntimeError(f"asked for the {args.build} engine, but accessgate runs the {engine!r} one")
        configs = [Config("bare", bare.port, bare.pid), Config("accessgate", gate.port, gate.pid)]
        sealed = None
        if args.seal:
            from accessgate.audit.sealing import keygen

            keygen(work / "seal.key", work / "verify.key", interval=args.seal_interval)
            sealed = lg.bench_proxy(work / "sealed", state=args.state,
                                    options={"accessgate_audit_seal_key": str(work / "seal.key")}, **common)  # fmt: skip
            started.append(sealed)
            configs.append(Config("sealed", sealed.port, sealed.pid))
        if args.baseline:
            if args.seal:
                raise SystemExit("--seal and --baseline each pair with accessgate: give one of them")
            base = lg.bench_proxy(work / "baseline", state=args.state, source=checkout(args.baseline, work), **common)
            started.append(base)
            baseline = Config("baseline", base.port, base.pid)
            # --together loads the first two at once: before and after.
            configs = [baseline, configs[1], configs[0]] if args.together else [configs[0], baseline, configs[1]]
        if args.squid:
            from accessgate.policy.loader import load_policy

            squid_htpasswd = lg.write_htpasswd(work / "htpasswd-apr1", USERS, lg.PASSWORD, scheme="apr1")
            squid = start_squid(origin, rules=squid_rules(load_policy(lg.POLICY)), htpasswd=squid_htpasswd,
                                core=proxy_core)
            started.append(squid)
            configs.append(Config("squid", squid.port, squid.pid, children=True))
        load_before = os.getloadavg()
        print(f"proxies on core {proxy_core}, nginx and load on core {load_core}; "
              f"{args.rounds} rounds x {args.seconds:.0f} s, c={args.connections}, "
              f"{'loaded together' if args.together else 'in turn'}, accessgate state {args.state}:, "
              f"engine {engine}, load average {load_before[0]:.1f}", flush=True)
        warm = argparse.Namespace(**{**vars(args), "seconds": 2})
        for proto in ("http", "https"):  # certificates, caches, first imports
            for batch in batches(configs, proto, 0, together=False):
                measure(batch, proto, warm, gate.ca, load_core)
        samples: list[Sample] = []
        for r in range(args.rounds):
            for proto in ("http", "https"):
                for batch in batches(configs, proto, r, args.together):
                    for s in measure(batch, proto, args, gate.ca, load_core):
                        samples.append(dataclasses.replace(s, batch=r))
                        print(f"  round {r + 1} {proto:5} {s.config:10} {s.rps:8.0f} req/s  p50 {s.p50_ms:6.1f} ms"
                              f"  p99 {s.p99_ms:6.1f} ms  proxy cpu {s.cpu:4.2f}  errors {s.errors}", flush=True)
        load_after = os.getloadavg()
        names = [c.name for c in configs]
        gate.stop(timeout=60)
        sealed_check = None
        if sealed is not None:
            from accessgate.audit.sealing import load_verification_key, read_lines, verify_sealed

            sealed.stop(timeout=60)
            verdict = verify_sealed(read_lines([sealed.audit_path]), load_verification_key(work / "verify.key"))
            sealed_check = {"records": verdict.records, "ok": verdict.ok, "breaks": [str(b) for b in verdict.breaks[:3]]}
        result = {
            "http": summarize(samples, "http", names),
            "https": summarize(samples, "https", names),
            "mode": "together" if args.together else "in turn",
            "state": args.state,
            "engine": engine,
            "load_average": [load_before[0], load_after[0]],
            "audit_records": len(gate.audit_records()),
            "sealed_log": sealed_check,
            "samples": [dataclasses.asdict(s) for s in samples],
        }
        report(result, names)
        print(f"audit records written by the accessgate proxy: {result['audit_records']}; "
              f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after ({ncores} cores)")
        if sealed_check is not None:
            print(f"sealed proxy's log: {sealed_check['records']} records, verify --key "
                  f"{'OK' if sealed_check['ok'] else 'FAILED: ' + '; '.join(sealed_check['breaks'])}")
        errors = sum(result[p][n]["errors"] for p in ("http", "https") for n in names if n in result[p])
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


if __name__ == "__main__":
    sys.exit(main())
