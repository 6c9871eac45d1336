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
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.proxy import make_confdir, start_proxy  # noqa: E402
from support.redis_server import free_port, running_redis  # noqa: E402

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

REPO = Path(__file__).resolve().parents[1]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
POLICY = """\
version: 1
timezone: UTC
sites:
  facebook:
    domains: [facebook.test]
roles:
  loopback:
    members: ["net:127.0.0.0/8"]
    access:
      facebook: {level: full, daily_minutes: 1440}
unauthenticated: loopback
unlisted: deny
"""
WRK_LUA = """\
wrk.method = "GET"
wrk.path = "http://facebook.test/1k.bin"
wrk.headers["Host"] = "facebook.test"
"""


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _wait_listening(port: int, process: subprocess.Popen, what: str) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within 10 s")


@contextmanager
def nginx(tmp: Path):
    root = tmp / "www"
    root.mkdir()
    (root / "1k.bin").write_bytes(os.urandom(1024))
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n"
        f"  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n"
    )
    process = subprocess.Popen(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, process, "nginx")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(process)


@contextmanager
def haproxy(backends: list[int]):
    listen = free_port()
    env = dict(
        os.environ,
        ACCESSGATE_LISTEN=f"127.0.0.1:{listen}",
        ACCESSGATE_STATS=f"127.0.0.1:{free_port()}",
        ACCESSGATE_BALANCE="roundrobin",
        **{f"ACCESSGATE_PROXY{n}": f"127.0.0.1:{p}" for n, p in enumerate(backends, 1)},
    )
    process = subprocess.Popen(["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(listen, process, "haproxy")
        yield listen
    finally:
        _stop(process)


def wrk(port: int, seconds: int, script: Path) -> tuple[float, float, int]:
    """(requests/s, p99 ms, non-2xx responses) of one wrk run against a proxy."""
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, float(p99.group(1)) * scale, int(bad.group(1)) if bad else 0


def proxies(args) -> None:
    for tool in ("nginx", "wrk", "haproxy", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"--proxies needs {tool}: apt-get install nginx-light wrk haproxy redis-server")
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        origin = SimpleNamespace(address=stack.enter_context(nginx(tmp)))
        redis_server = stack.enter_context(running_redis(tmp))
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        script = tmp / "proxy.lua"
        script.write_text(WRK_LUA)
        confdir = make_confdir(tmp)

        def proxy(name: str, state: str):
            p = start_proxy(
                policy=policy, confdir=confdir, workdir=tmp / name, origin=origin,
                metrics=False, audit=False, state=state, options={"flow_detail": 0},
            )
            stack.callback(p.stop)
            return p

        redis_spec = redis_server.url(timeout=0.1)
        sqlite_one = proxy("sqlite", f"sqlite:{tmp / 'quota.sqlite3'}")
        redis_one, redis_two = proxy("redis1", redis_spec), proxy("redis2", redis_spec)
        balanced = stack.enter_context(haproxy([redis_one.port, redis_two.port]))
        configs = {
            "1 proxy, sqlite:": sqlite_one.port,
            "1 proxy, redis://": redis_one.port,
            "2 proxies + HAProxy, redis://": balanced,
        }
        for port in configs.values():  # warm up: CA, connections, page cache
            wrk(port, 2, script)
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in configs}
        for _ in range(args.proxy_rounds):
            for name, port in configs.items():
                results[name].append(wrk(port, args.seconds, script))

    print(f"\nrequests/s through the proxy, wrk c=16 keep-alive, 1 KB from nginx, {nproc()} cores, "
          f"{args.proxy_rounds} rounds of {args.seconds} s alternated")
    print(f"{'configuration':32} {'median rps':>10} {'rounds rps':>24} {'p99 ms (median)':>16} {'non-2xx':>8}")
    base = results["1 proxy, redis://"]
    for name, runs in results.items():
        rps = [r[0] for r in runs]
        print(
            f"{name:32} {statistics.median(rps):10.0f} {' '.join(f'{x:.0f}' for x in rps):>24} "
            f"{statistics.median(r[1] for r in runs):16.1f} {sum(r[2] for r in runs):8d}"
        )
    ratios = [b[0] / a[0] for a, b in zip(base, results["2 proxies + HAProxy, redis://"])]
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
