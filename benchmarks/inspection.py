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
    mixed       both at once: each client's connections alternate between
                the two (half the connections carry one request, half
                --keepalive), the load the issue describes

With --control, also mitmdump without accessgate, passing the unlisted hosts
through by its own ignore_hosts (bare-pass) or decrypting everything
(bare-all), and a phase `connect-only` on accessgate's proxies: CONNECT,
its 200, then the client hangs up, no TLS.  What that costs is the part of
every passed-through connection that passing through cannot save, so it
bounds what `needed` can gain on new connections: the ratio it would reach
if a passed-through connection cost nothing beyond its CONNECT is printed.

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
GOVERNED_EVERY = 10  # 1 connection in 10 is to the governed site
MODES = ("needed", "all")
# --control: mitmproxy alone, passing the unlisted hosts through by its own
# ignore_hosts or decrypting everything; what mitmproxy itself gains.
CONTROLS = ("bare-pass", "bare-all")
IGNORE_UNLISTED = r"^site[0-9]+\.unlisted\.example(:443)?$"
PHASES = ("keep-alive", "new", "mixed")
CONNECT_ONLY = "connect-only"


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


async def _worker(port: int, start: int, per_connection: tuple[int, ...], deadline: float, tls: ssl.SSLContext,
                  count: Count) -> None:
    """Connections one after another; the n-th carries per_connection[n % len(per_connection)] requests."""
    i = start
    while time.monotonic() < deadline:
        governed = i % GOVERNED_EVERY == GOVERNED_EVERY - 1
        requests = per_connection[(i // GOVERNED_EVERY) % len(per_connection)]
        i += 1
        host = GOVERNED if governed else UNLISTED[i % len(UNLISTED)]
        call = lg.Call(USER, "GET", f"https://{host}{GOVERNED_PATH if governed else '/'}")
        try:
            if not requests:  # connect-only: the tunnel is answered, and that is all
                _, writer = await asyncio.wait_for(lg._connect(port, call, None, handshake=False), 30)
                writer.close()
                count.connections += 1
                continue
            reader, writer = await lg._connect(port, call, tls)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
            count.errors += 1
            await asyncio.sleep(0.05)
            continue
        count.connections += 1
        wire = call.wire()
        try:
            for _ in range(requests):
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


def load(port: int, *, seconds: float, workers: int, per_connection: tuple[int, ...], tls: ssl.SSLContext) -> Count:
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
    per_connection = requests_per_connection(phase, args)
    cpu0, t0 = lg.cpu_seconds(proxy.pid), time.monotonic()
    count = load(proxy.port, seconds=args.seconds, workers=args.workers, per_connection=per_connection, tls=tls)
    elapsed = time.monotonic() - t0
    return Sample(mode, phase, elapsed, lg.cpu_seconds(proxy.pid) - cpu0, count)


def requests_per_connection(phase: str, args) -> tuple[int, ...]:
    return {"keep-alive": (args.keepalive,), "new": (1,), "mixed": (args.keepalive, 1), CONNECT_ONLY: (0,)}[phase]


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
    parser.add_argument("--control", action="store_true",
                        help="also run mitmdump without accessgate: passing the unlisted hosts through "
                             "(ignore_hosts) and decrypting everything")
    parser.add_argument("--phases", default=",".join(PHASES), help="which phases to run (comma-separated)")
    args = parser.parse_args()
    modes = MODES + (CONTROLS if args.control else ())
    phases = tuple(p for p in (*PHASES, CONNECT_ONLY) if p in args.phases.split(","))
    if args.control and "new" in phases and CONNECT_ONLY not in phases:
        phases += (CONNECT_ONLY,)

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
        for mode in modes:
            common = {"proxyauth": f"@{htpasswd}", "ssl_insecure": True, "bench_tls_origin": f"127.0.0.1:{origin.tls}"}
            if mode in CONTROLS:
                proxies[mode] = lg.start_proxy(
                    policy=None, accessgate=False, confdir=confdir, workdir=work / mode, core=proxy_core, quiet=True,
                    scripts=[ROUTE],
                    options={**common, **({"ignore_hosts": [IGNORE_UNLISTED]} if mode == "bare-pass" else {})},
                )  # fmt: skip
                continue
            proxies[mode] = lg.start_proxy(
                policy=lg.POLICY, confdir=confdir, workdir=work / mode, state="memory:", core=proxy_core, quiet=True,
                scripts=[ROUTE],
                options={**common, "accessgate_inspect": mode,
                         # nginx is on this host, which accessgate otherwise never connects to
                         "accessgate_upstream_allow": ["127.0.0.1/32"]},
            )  # fmt: skip
        for mode in modes:  # warm up: certificates made and read, caches filled
            for phase in phases:
                if phase == CONNECT_ONLY and mode in CONTROLS:
                    continue
                load(proxies[mode].port, seconds=1.0, workers=args.workers,
                     per_connection=requests_per_connection(phase, args), tls=tls)
        samples: list[Sample] = []
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for phase in phases:
                for mode in order:
                    if phase == CONNECT_ONLY and mode in CONTROLS:
                        continue  # measured on accessgate's proxies only
                    samples.append(measure(proxies[mode], mode, phase, args, tls))
        report(samples, args, proxies, proxy_core, load_core, modes, phases)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(samples: list[Sample], args, proxies, proxy_core: int, load_core: int, modes, phases) -> None:
    print(f"accessgate_inspect: needed vs all; {args.rounds} rounds x {args.seconds:.0f} s per proxy and phase, "
          f"{args.workers} clients; 9 in 10 connections to unlisted hosts, 1 in 10 to a governed (read-only) "
          f"site; proxy on core {proxy_core}, nginx and client on core {load_core}; load average "
          f"{os.getloadavg()[0]:.2f} (a shared host)")
    header = (f"{'phase':<12} {'inspect':<9} {'conn/s':>8} {'req/s':>8} {'core %':>7} {'conn/CPU-s':>11} "
              f"{'req/CPU-s':>10} {'errors':>7} {'non-200':>8}")
    print(header)
    for phase in phases:
        for mode in modes:
            mine = [s for s in samples if s.phase == phase and s.mode == mode]
            if not mine:
                continue
            med = lambda f: statistics.median(f(s) for s in mine)  # noqa: E731
            print(f"{phase:<12} {mode:<9} {med(lambda s: s.cps):>8.0f} {med(lambda s: s.rps):>8.0f} "
                  f"{med(lambda s: 100 * s.cpu / s.seconds):>6.0f}% {med(lambda s: s.conn_per_cpu):>11.0f} "
                  f"{med(lambda s: s.req_per_cpu):>10.0f} {sum(s.count.errors for s in mine):>7} "
                  f"{sum(s.count.blocked for s in mine):>8}")
    pairs = [("needed", "all")] + ([("bare-pass", "bare-all"), ("needed", "bare-pass")] if "bare-pass" in modes else [])
    for top, bottom in pairs:
        print(f"{top} / {bottom}, per core (per CPU-second of the proxy), each round's pair: median [min, max]")
        for phase in (p for p in phases if p != CONNECT_ONLY):
            tops = [s for s in samples if s.phase == phase and s.mode == top]
            bottoms = [s for s in samples if s.phase == phase and s.mode == bottom]
            for label, f in (("connections", lambda s: s.conn_per_cpu), ("requests", lambda s: s.req_per_cpu)):
                ratios = [f(n) / f(a) for n, a in zip(tops, bottoms) if f(a)]
                if ratios:
                    print(f"  {phase:<11} {label:<12} {statistics.median(ratios):5.2f}x "
                          f"[{min(ratios):.2f}, {max(ratios):.2f}]")
    bound = connect_bound(samples)
    if bound is not None:
        connect_ms, decrypted_ms, ceiling = bound
        print(f"a CONNECT alone (answered, then closed; no TLS) costs {connect_ms:.2f} ms of CPU, a decrypted "
              f"connection of one request {decrypted_ms:.2f} ms: were a passed-through connection to cost nothing "
              f"beyond its CONNECT, needed / all on new connections would be {ceiling:.2f}x")
    for mode in MODES:
        counted = ", ".join(f"{k} {v:.0f}" for k, v in sorted(tls_counts(proxies[mode]).items()))
        print(f"accessgate_tls_connections_total, inspect={mode}: {counted}")


def connect_bound(samples: list[Sample]) -> tuple[float, float, float] | None:
    """What a CONNECT alone and a decrypted connection cost (ms of CPU), and the needed / all that bounds."""
    connect = [s for s in samples if s.phase == CONNECT_ONLY]
    decrypted = [s for s in samples if s.phase == "new" and s.mode == "all"]
    if not connect or not decrypted:
        return None
    connect_ms = statistics.median(1000 / s.conn_per_cpu for s in connect if s.conn_per_cpu)
    decrypted_ms = statistics.median(1000 / s.conn_per_cpu for s in decrypted if s.conn_per_cpu)
    share = (GOVERNED_EVERY - 1) / GOVERNED_EVERY  # of connections passed through under `needed`
    return connect_ms, decrypted_ms, decrypted_ms / (share * connect_ms + (1 - share) * decrypted_ms)


if __name__ == "__main__":
    sys.exit(main())
