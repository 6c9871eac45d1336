"""What a signed-in check costs, cached and not, and whether wrong passwords hold others up.

    .venv/bin/python benchmarks/signin.py [--cost 10] [--seconds 3] [--rounds 3]

A bcrypt htpasswd entry (written by Apache's `htpasswd -B -C COST`, or by
the bcrypt package when htpasswd is missing), checked through
`accessgate.auth.Authenticator` as the proxy will:

1. checks/s with the credential cache (the default: one bcrypt per TTL per
   user) and without it (cache_ttl=0: a bcrypt per check, what mitmproxy's
   proxyauth does per plain-HTTP request);
2. latency of a cached check (p50, p99, max), alone and while four threads
   hammer wrong bcrypt passwords through the same Authenticator (its pool
   runs them; the limiter is opened wide so that they are all checked);
3. the same in an event loop (`check_async`): a cached client's p99 while
   four tasks send wrong passwords, which is the proxy's situation.

Rounds alternate the configurations; prints each round and the median.
Bounded: rounds x seconds per part, nothing else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from accessgate.auth import Authenticator, FailureLimiter, HtpasswdMethod

PASSWORD = "correct horse battery"


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write_htpasswd(path: Path, cost: int) -> None:
    tool = shutil.which("htpasswd")
    if tool:
        subprocess.run([tool, "-b", "-c", "-B", "-C", str(cost), str(path), "alice", PASSWORD],
                       check=True, capture_output=True)
    else:
        import bcrypt

        path.write_text("alice:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost)).decode() + "\n")


def wide_limiter() -> FailureLimiter:
    return FailureLimiter(burst=10**9, per_minute=10**9)


def rate(auth: Authenticator, seconds: float) -> float:
    good = header("alice", PASSWORD)
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        assert auth.check(good, "192.0.2.1").ok
        done += 1
    return done / seconds


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    samples = sorted(samples)
    return (samples[len(samples) // 2] * 1e6, samples[max(0, int(len(samples) * 0.99) - 1)] * 1e6,
            samples[-1] * 1e6)


def cached_latency(auth: Authenticator, seconds: float, hammer: bool) -> tuple[tuple[float, float, float], int]:
    good = header("alice", PASSWORD)
    assert auth.check(good, "192.0.2.1").ok  # into the cache
    stop = threading.Event()
    wrong = [0]

    def attacker(n: int) -> None:
        i = 0
        while not stop.is_set():
            auth.check(header("alice", f"wrong-{n}-{i}"), f"203.0.113.{n}")
            i += 1
        wrong[0] += i

    threads = [threading.Thread(target=attacker, args=(n,)) for n in range(4)] if hammer else []
    for t in threads:
        t.start()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        assert auth.check(good, "192.0.2.1").ok
        samples.append(time.perf_counter() - t0)
        time.sleep(0.0005)
    stop.set()
    for t in threads:
        t.join()
    return percentiles(samples), wrong[0]


async def loop_latency(auth: Authenticator, seconds: float) -> tuple[tuple[float, float, float], int]:
    good = header("alice", PASSWORD)
    assert (await auth.check_async(good, "192.0.2.1")).ok
    end = time.perf_counter() + seconds

    async def attacker(n: int) -> int:
        i = 0
        while time.perf_counter() < end:
            await auth.check_async(header("alice", f"wrong-{n}-{i}"), f"203.0.113.{n}")
            i += 1
        return i

    async def client() -> list[float]:
        samples = []
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            assert (await auth.check_async(good, "192.0.2.1")).ok
            await asyncio.sleep(0)  # let the loop run others, as a proxy's would
            samples.append(time.perf_counter() - t0)
        return samples

    *tries, samples = await asyncio.gather(*(attacker(n) for n in range(4)), client())
    return percentiles(samples), sum(tries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the entry (htpasswd -C); default 10")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "htpasswd"
        write_htpasswd(path, args.cost)
        results: dict[str, list] = {k: [] for k in ("cached", "uncached", "alone", "hammered", "loop")}
        for r in range(1, args.rounds + 1):
            for name, ttl in (("cached", 300.0), ("uncached", 0.0)):
                auth = Authenticator([HtpasswdMethod(path)], cache_ttl=ttl, limiter=wide_limiter())
                results[name].append(rate(auth, args.seconds))
                auth.close()
            for name, hammer in (("alone", False), ("hammered", True)):
                auth = Authenticator([HtpasswdMethod(path)], limiter=wide_limiter())
                results[name].append(cached_latency(auth, args.seconds, hammer))
                auth.close()
            auth = Authenticator([HtpasswdMethod(path)], limiter=wide_limiter())
            results["loop"].append(asyncio.run(loop_latency(auth, args.seconds)))
            auth.close()
            print(f"round {r}: cached {results['cached'][-1]:,.0f}/s, uncached {results['uncached'][-1]:,.1f}/s; "
                  f"cached check p50/p99/max µs alone {fmt(results['alone'][-1][0])}, "
                  f"beside 4 threads of wrong passwords {fmt(results['hammered'][-1][0])} "
                  f"({results['hammered'][-1][1]} checked); event loop beside 4 tasks "
                  f"{fmt(results['loop'][-1][0])} ({results['loop'][-1][1]} checked)", flush=True)

    def median(values):
        return statistics.median(values)

    print(f"\nbcrypt cost {args.cost}, Python {sys.version.split()[0]}, median of {args.rounds} rounds:")
    print(f"  signed-in checks/s: cached {median(results['cached']):,.0f}, uncached {median(results['uncached']):,.1f}"
          f" ({median(results['cached']) / median(results['uncached']):,.0f}x)")
    for name, label in (("alone", "cached check alone"), ("hammered", "cached check, 4 threads of wrong passwords"),
                        ("loop", "cached check_async, 4 tasks of wrong passwords")):
        p99 = median([x[0][1] for x in results[name]])
        p50 = median([x[0][0] for x in results[name]])
        print(f"  {label}: p50 {p50:,.1f} µs, p99 {p99:,.1f} µs")
    return 0


def fmt(p: tuple[float, float, float]) -> str:
    return "/".join(f"{v:,.0f}" for v in p)


if __name__ == "__main__":
    sys.exit(main())
