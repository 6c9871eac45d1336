#!/usr/bin/env python3
"""Signed-in requests through the real proxy: the credential cache, and wrong bcrypt passwords beside a good client.

    .venv/bin/python benchmarks/signin_proxy.py [--cost 10] [--seconds 5] [--rounds 3]

One mitmdump + accessgate (the example policy, memory quota state, audit
log), every request routed to a local nginx, a bcrypt htpasswd written by
Apache's `htpasswd -B -C COST`, plain HTTP with `Proxy-Authorization:
Basic` on every request (as browsers send it):

1. throughput: 8 keep-alive clients with the right password, for
   `accessgate_auth=htpasswd:FILE` with the cache (the default, a bcrypt
   per user per 5 minutes) and with `accessgate_auth_cache_seconds=0` (a
   bcrypt per request, what mitmproxy's proxyauth does);
2. a well-behaved client's latency (one keep-alive connection, one
   request after another, its password cached) on an idle proxy, and while
   another client sends wrong bcrypt passwords as fast as it can (8
   connections at once, each sending the next try as soon as the last is
   answered):
   - `attack-one`: one attacker (one address, one name): the failure
     limit refuses it unchecked after 10 tries, as in production;
   - `attack-many`: an attacker rotating 200 source addresses and 200
     user names, so that each try is a bcrypt check (the limit never
     bites): what the thread pool alone has to absorb;
   - with `--proxyauth`, mitmproxy's own proxyauth under `attack-one` as
     the baseline (its bcrypt runs on the event loop).

Rounds alternate the configurations and print each round, then the median
of each figure; the good client's p99 under attack is also given as a
ratio to the idle p99 of the same round.  Bounded: every phase stops at
its deadline.  Everything is on 127.0.0.1 and ended by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import loadgen as lg

from support.nginx import start_nginx  # noqa: E402  (tests/ is on sys.path through loadgen)

PASSWORD = "correct horse battery"
ATTACK_USERS = 200
URL = "http://www.example.org/signed-in"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write_htpasswd(path: Path, cost: int) -> Path:
    tool = shutil.which("htpasswd")
    if tool is None:
        sys.exit("htpasswd is not installed (apt-get install apache2-utils)")
    subprocess.run([tool, "-b", "-c", "-B", "-C", str(cost), str(path), "alice", PASSWORD], check=True,
                   capture_output=True)
    # The attackers' targets: real bcrypt entries, so that every wrong password costs a check.
    with path.open("a") as out:
        first = path.read_text().splitlines()[0].split(":", 1)[1]
        for i in range(ATTACK_USERS):
            out.write(f"user{i}:{first}\n")
    return path


@dataclass
class Client:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def p(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(lines[0].split()[1])


def _request(authorization: str) -> bytes:
    return (f"GET {URL} HTTP/1.1\r\nHost: www.example.org\r\nProxy-Authorization: {authorization}\r\n"
            "Accept: */*\r\n\r\n").encode()


async def good_client(port: int, deadline: float, client: Client, record: bool = True) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _request(basic("alice", PASSWORD))
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            if record:
                client.latencies.append(time.perf_counter() - started)
            client.count(status)
    finally:
        writer.close()


ATTACKER_CONNECTIONS = 8


async def attacker(port: int, deadline: float, client: Client, many: bool, lane: int = 0) -> None:
    """Wrong passwords, one after another on this connection (the attacker runs several at once)."""
    i = lane * 10_000
    while time.monotonic() < deadline:
        source = f"127.0.{1 + (i // 200) % 200}.{2 + i % 200}" if many else "127.0.0.2"
        # many: each try from another address and name, so the failure limit never bites
        user = f"user{i % ATTACK_USERS}" if many else "user0"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.01)
            continue
        try:
            # A few tries per connection, as a script reusing its connection would.
            for _ in range(5):
                if time.monotonic() >= deadline:
                    break
                client.count(await asyncio.wait_for(_exchange(reader, writer, _request(basic(user, f"wrong-{i}"))),
                                                    timeout=max(0.1, deadline - time.monotonic() + 5)))
                i += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()
        if many:
            i += 1


async def throughput(port: int, seconds: float, clients: int = 8) -> float:
    deadline = time.monotonic() + seconds
    tallies = [Client() for _ in range(clients)]
    started = time.monotonic()
    await asyncio.gather(*(good_client(port, deadline, t, record=False) for t in tallies))
    elapsed = time.monotonic() - started
    ok = sum(t.statuses.get(200, 0) for t in tallies)
    return ok / elapsed


async def latency(port: int, seconds: float, attack: str | None) -> tuple[Client, Client]:
    deadline = time.monotonic() + seconds
    good, bad = Client(), Client()
    tasks = [good_client(port, deadline, good)]
    if attack is not None:
        tasks += [attacker(port, deadline, bad, many=attack == "many", lane=lane)
                  for lane in range(ATTACKER_CONNECTIONS)]
    await asyncio.gather(*tasks)
    return good, bad


def start(workdir: Path, confdir: Path, origin, htpasswd: Path, core: int | None, **options) -> lg.Proxy:
    return lg.start_proxy(policy=lg.POLICY, confdir=confdir, workdir=workdir, origin=origin, state="memory:",
                          options=options, core=core, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the entries (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--proxyauth", action="store_true", help="also measure mitmproxy's proxyauth under attack")
    parser.add_argument("--pin", action="store_true", help="pin the proxy to one core (its pool threads too)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.seconds <= 120:
        sys.exit("--rounds 1..20, --seconds 0.5..120")
    work = lg.tmpdir("signin-proxy-")
    htpasswd = write_htpasswd(work / "htpasswd", args.cost)
    confdir = lg.make_confdir(work)
    core = lg.cores()[0] if args.pin else None
    nginx = start_nginx(work / "nginx")
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  {name:<42} {value:10.1f}", flush=True)

    try:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}", flush=True)
            configs = [("cached", {}), ("uncached", {"accessgate_auth_cache_seconds": 0})]
            for name, extra in configs if round_ % 2 == 0 else configs[::-1]:
                proxy = start(work / f"r{round_}-{name}", confdir, nginx, htpasswd, core,
                              accessgate_auth=f"htpasswd:{htpasswd}", **extra)
                try:
                    asyncio.run(throughput(proxy.port, 1.0))  # warm: the first bcrypt, caches
                    note(f"requests/s, {name}", asyncio.run(throughput(proxy.port, args.seconds)))
                finally:
                    proxy.stop()
            for attack in ("one", "many"):
                proxy = start(work / f"r{round_}-lat-{attack}", confdir, nginx, htpasswd, core,
                              accessgate_auth=f"htpasswd:{htpasswd}")
                try:
                    asyncio.run(latency(proxy.port, 1.0, None))  # warm
                    idle, _ = asyncio.run(latency(proxy.port, args.seconds, None))
                    busy, bad = asyncio.run(latency(proxy.port, args.seconds, attack))
                finally:
                    proxy.stop()
                note(f"p50 ms, idle ({attack})", idle.p(0.5))
                note(f"p99 ms, idle ({attack})", idle.p(0.99))
                note(f"p50 ms, attack-{attack}", busy.p(0.5))
                note(f"p99 ms, attack-{attack}", busy.p(0.99))
                note(f"p99 ratio attack-{attack}/idle", busy.p(0.99) / idle.p(0.99))
                note(f"attacker answers/s, attack-{attack}", sum(bad.statuses.values()) / args.seconds)
                print(f"  {'(attacker statuses ' + attack + ')':<42} {dict(sorted(bad.statuses.items()))}")
            if args.proxyauth:
                proxy = start(work / f"r{round_}-proxyauth", confdir, nginx, htpasswd, core,
                              proxyauth=f"@{htpasswd}")
                try:
                    asyncio.run(latency(proxy.port, 1.0, None))
                    idle, _ = asyncio.run(latency(proxy.port, args.seconds, None))
                    busy, bad = asyncio.run(latency(proxy.port, args.seconds, "one"))
                finally:
                    proxy.stop()
                note("p99 ms, proxyauth idle", idle.p(0.99))
                note("p99 ms, proxyauth attack-one", busy.p(0.99))
                note("p99 ratio proxyauth attack-one/idle", busy.p(0.99) / idle.p(0.99))
        print(f"\nmedians over {args.rounds} rounds (bcrypt cost {args.cost}, {args.seconds:g} s each):")
        for name, values in results.items():
            extra = f"  (min {min(values):.1f}, max {max(values):.1f})" if len(values) > 1 else ""
            print(f"  {name:<42} {statistics.median(values):10.1f}{extra}")
    finally:
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
