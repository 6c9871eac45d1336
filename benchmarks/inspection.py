#!/usr/bin/env python3
"""Decrypt only what the policy needs (issue 18): accessgate_inspect=needed against =all, in one run.

    .venv/bin/python benchmarks/inspection.py [--rounds 3] [--seconds 8] [--workers 16]

Two accessgate proxies (mitmdump + accessgate, the example policy, proxyauth,
audit log, metrics), the same but for `accessgate_inspect`, pinned to one
core; nginx and this script's client share the other.  The load is HTTPS
only, a mix of connections: 9 in 10 to unlisted hosts (`siteN.unlisted.example`,
nine of them), 1 in 10 to a governed one (zoe reads www.linkedin.com, which
is read-only for her: decrypted under both settings).  Each of `--workers`
clients opens tunnels one after another in that order (CONNECT, TLS to the
name, verified against the mitmproxy CA and the benchmark's own CA) and
sends its requests on each, HTTP/1.1, the next when the previous answer is
complete.  Two phases per round and proxy:

    keep-alive  --keepalive requests per connection (default 20)
    new         one request per connection: a new connection for each

The origin is one nginx, over TLS: decrypted requests reach it over a
second TLS connection from the proxy, as they would reach the real site;
tunnels passed through (and accessgate's short read of a server's
certificate) reach it directly.  Its certificate names `*.unlisted.example`
only (benchmarks/route_split.py, loaded in both proxies).

Rounds alternate which proxy goes first; each phase loads one proxy alone.
Printed per proxy and phase: connections/s and requests/s as the client saw
them, the share of its core the proxy used, and connections and requests
per CPU-second of the proxy process, i.e. per core: the figure that does
not depend on how fast this client is, and the steadier one on a shared
host.  Then `needed`'s ratio to `all` per round (median, min, max), and
what the proxies counted in accessgate_tls_connections_total.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import loadgen as lg

from support.certs import make_ca  # noqa: E402  (tests/ is on sys.path through loadgen)
from support.nginx import FILE  # noqa: E402
from support.processes import accepts, await_ready, free_port, pin, stop_process  # noqa: E402

HERE = Path(__file__).resolve().parent
ROUTE = HERE / "route_split.py"
USER = "zoe"
UNLISTED = [f"site{i}.unlisted.example" for i in range(9)]
GOVERNED = "www.linkedin.com"  # read-only for zoe under policy/example.yaml: decrypted under both settings
GOVERNED_PATH = "/in/someone/"
MODES = ("needed", "all")
PHASES = ("keep-alive", "new")


# -- the origin: nginx with a plain and a TLS port -------------------------------


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    ssl_certificate {prefix}/origin.pem;
    ssl_certificate_key {prefix}/origin.key;
    ssl_session_cache shared:tls:1m;
    server {{
        listen 127.0.0.1:{plain};
        listen 127.0.0.1:{tls} ssl;
        root {prefix}/www;
        location / {{ try_files /{file} =404; }}
    }}
}}
"""


@dataclass
class Origin:
    process: subprocess.Popen
    plain: int
    tls: int
    ca: Path  # the benchmark CA that signed the TLS port's certificate

    def stop(self) -> None:
        stop_process(self.process)


def start_origin(workdir: Path, core: int | None) -> Origin:
    prefix = workdir / "nginx"
    (prefix / "www").mkdir(parents=True, exist_ok=True)
    (prefix / "www" / FILE).write_bytes(bytes(range(256)) * 4)
    # A CA and, signed by it, a certificate for *.unlisted.example (the TLS port's).
    ca = make_ca(prefix, ("*.unlisted.example",), (), prefix="origin").ca_file
    plain, tls = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, plain=plain, tls=tls, file=FILE))
    with open(prefix / "stderr.txt", "wb") as log:
        process = subprocess.Popen(pin(["/usr/sbin/nginx", "-p", str(prefix), "-c", str(conf)], core),
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    await_ready(process, lambda: accepts(plain) and accepts(tls), "nginx",
                output=lambda: (prefix / "stderr.txt").read_text(errors="replace"))
    return Origin(process, plain, tls, ca)


# -- the load ------------------------------------------------------------------------


@dataclass
class Count:
    connections: int = 0
    requests: int = 0
    errors: int = 0
    blocked: int = 0  # answers other than 200 (there should be none)


async def _worker(port: int, start: int, per_connection: int, deadline: float, tls: ssl.SSLContext,
                  count: Count) -> None:
    i = start
    while time.monotonic() < deadline:
        governed = i % 10 == 9
        i += 1
        host = GOVERNED if governed else UNLISTED[i % len(UNLISTED)]
        call = lg.Call(USER, "GET", f"https://{host}{GOVERNED_PATH if governed else '/'}")
        try:
            reader, writer = await lg._connect(port, call, tls)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
            count.errors += 1
            await asyncio.sleep(0.05)
            continue
        count.connections += 1
        wire = call.wire()
        try:
            for _ in range(per_connection):
                writer.write(wire)
                status, _, keep = await asyncio.wait_for(lg._read_response(reader), 30)
                count.requests += 1
                count.blocked += status != 200
                if not keep or time.monotonic() >= deadline:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, ssl.SSLError):
            count.errors += 1
        finally:
            writer.close()


def load(port: int, *, seconds: float, workers: int, per_connection: int, tls: ssl.SSLContext) -> Count:
    count = Count()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_worker(port, w * 3, per_connection, deadline, tls, count) for w in range(workers)))

    asyncio.run(main())
    return count


@dataclass(frozen=True)
class Sample:
    mode: str
    phase: str
    seconds: float
    cpu: float  # CPU-seconds the proxy used
    count: Count

    @property
    def cps(self) -> float:
        return self.count.connections / self.seconds

    @property
    def rps(self) -> float:
        return self.count.requests / self.seconds

    @property
    def conn_per_cpu(self) -> float:
        return self.count.connections / self.cpu if self.cpu else 0.0

    @property
    def req_per_cpu(self) -> float:
        return self.count.requests / self.cpu if self.cpu else 0.0


def measure(proxy, mode: str, phase: str, args, tls: ssl.SSLContext) -> Sample:
    per_connection = args.keepalive if phase == "keep-alive" else 1
    cpu0, t0 = lg.cpu_seconds(proxy.pid), time.monotonic()
    count = load(proxy.port, seconds=args.seconds, workers=args.workers, per_connection=per_connection, tls=tls)
    elapsed = time.monotonic() - t0
    return Sample(mode, phase, elapsed, lg.cpu_seconds(proxy.pid) - cpu0, count)


def tls_counts(proxy) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in proxy.metrics().splitlines():
        if line.startswith("accessgate_tls_connections_total{"):
            labels, value = line.rsplit(" ", 1)
            kind = labels.split('inspection="', 1)[1].split('"', 1)[0]
            found[kind] = found.get(kind, 0.0) + float(value)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--keepalive", type=int, default=20, help="requests per connection in the keep-alive phase")
    args = parser.parse_args()

    proxy_core, load_core = lg.cores()
    os.sched_setaffinity(0, {load_core})
    work = lg.tmpdir("accessgate-bench-inspection-")
    origin = start_origin(work, load_core)
    confdir = lg.make_confdir(work)
    htpasswd = lg.bench_htpasswd(work / "htpasswd", [USER])
    cafile = work / "trusted.pem"
    cafile.write_bytes((confdir / "mitmproxy-ca-cert.pem").read_bytes() + origin.ca.read_bytes())
    tls = ssl.create_default_context(cafile=str(cafile))
    proxies = {}
    try:
        for mode in MODES:
            proxies[mode] = lg.start_proxy(
                policy=lg.POLICY, confdir=confdir, workdir=work / mode, state="memory:", core=proxy_core, quiet=True,
                scripts=[ROUTE],
                options={"proxyauth": f"@{htpasswd}", "accessgate_inspect": mode, "ssl_insecure": True,
                         "bench_tls_origin": f"127.0.0.1:{origin.tls}",
                         # nginx is on this host, which accessgate otherwise never connects to
                         "accessgate_upstream_allow": ["127.0.0.1/32"]},
            )  # fmt: skip
        for mode in MODES:  # warm up: certificates made and read, caches filled
            for phase in PHASES:
                load(proxies[mode].port, seconds=1.0, workers=args.workers,
                     per_connection=args.keepalive if phase == "keep-alive" else 1, tls=tls)
        samples: list[Sample] = []
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for phase in PHASES:
                for mode in order:
                    samples.append(measure(proxies[mode], mode, phase, args, tls))
        report(samples, args, proxies, proxy_core, load_core)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(samples: list[Sample], args, proxies, proxy_core: int, load_core: int) -> None:
    print(f"accessgate_inspect: needed vs all; {args.rounds} rounds x {args.seconds:.0f} s per proxy and phase, "
          f"{args.workers} clients; 9 in 10 connections to unlisted hosts, 1 in 10 to a governed (read-only) "
          f"site; proxy on core {proxy_core}, nginx and client on core {load_core}; load average "
          f"{os.getloadavg()[0]:.2f} (a shared host)")
    header = (f"{'phase':<11} {'inspect':<7} {'conn/s':>8} {'req/s':>8} {'core %':>7} {'conn/CPU-s':>11} "
              f"{'req/CPU-s':>10} {'errors':>7} {'non-200':>8}")
    print(header)
    for phase in PHASES:
        for mode in MODES:
            mine = [s for s in samples if s.phase == phase and s.mode == mode]
            med = lambda f: statistics.median(f(s) for s in mine)  # noqa: E731
            print(f"{phase:<11} {mode:<7} {med(lambda s: s.cps):>8.0f} {med(lambda s: s.rps):>8.0f} "
                  f"{med(lambda s: 100 * s.cpu / s.seconds):>6.0f}% {med(lambda s: s.conn_per_cpu):>11.0f} "
                  f"{med(lambda s: s.req_per_cpu):>10.0f} {sum(s.count.errors for s in mine):>7} "
                  f"{sum(s.count.blocked for s in mine):>8}")
    print("needed / all, per core (per CPU-second of the proxy), each round's pair: median [min, max]")
    for phase in PHASES:
        needed = [s for s in samples if s.phase == phase and s.mode == "needed"]
        every = [s for s in samples if s.phase == phase and s.mode == "all"]
        for label, f in (("connections", lambda s: s.conn_per_cpu), ("requests", lambda s: s.req_per_cpu)):
            ratios = [f(n) / f(a) for n, a in zip(needed, every) if f(a)]
            if ratios:
                print(f"  {phase:<11} {label:<12} {statistics.median(ratios):5.2f}x "
                      f"[{min(ratios):.2f}, {max(ratios):.2f}]")
    for mode, proxy in proxies.items():
        counted = ", ".join(f"{k} {v:.0f}" for k, v in sorted(tls_counts(proxy).items()))
        print(f"accessgate_tls_connections_total, inspect={mode}: {counted}")


if __name__ == "__main__":
    sys.exit(main())
