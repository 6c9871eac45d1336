#!/usr/bin/env python3
"""A filtered export of a fresh audit log: accessgate vs raw DuckDB vs jq, in one run, as ratios.

Writes N access records (default 1,000,000, about 450 MB) with the audit
writer's own encoding (`accessgate.audit.encoding.Encoder`: the lines,
their key order and their hash chain are what the proxy writes), then
exports the blocked requests to one site, alternating in each round:

    accessgate  `accessgate audit query LOG --site facebook --decision block --format F --output OUT --no-cache`
    duckdb      a Python process running DuckDB's COPY (SELECT * FROM read_json(LOG) WHERE …) TO OUT
    jq          `jq -r 'select(.site == "facebook" and .decision == "block") | [fields] | @csv' LOG > OUT`
                (jq -c for JSON lines; jq has no Parquet)

Each is a process of its own, started and timed as an auditor would run it;
the file is "fresh": no Parquet cache (the live file is never cached, and
--no-cache says so).  Every export is checked to hold the same rows.  Printed:
seconds per run, and per format the medians of the paired ratios jq/accessgate
and accessgate/duckdb, with min and max.

    .venv/bin/python benchmarks/export.py                       # 1M records, 3 rounds, csv jsonl parquet
    .venv/bin/python benchmarks/export.py --records 200000 --rounds 2 --formats csv

Goal: accessgate >= 10x faster than jq and within 1.5x of raw DuckDB.
The generated file is deleted at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITES = ["facebook", "linkedin", "instagram", "x", "tiktok", "youtube", "reddit", "pinterest", "snapchat", "twitch"]
REASONS = ["denied", "read-only", "outside-window", "quota-exhausted"]
FIELDS = ["event", "ts", "request_id", "user", "roles", "client_ip", "method", "scheme", "host", "path", "site",
          "decision", "reason", "level", "rule", "role", "status", "bytes_in", "bytes_out", "duration_ms", "policy",
          "enforced", "seq", "prev"]  # fmt: skip
JQ_FILTER = 'select(.site == "facebook" and .decision == "block")'


def generate(path: Path, records: int) -> None:
    """`records` access records as the proxy makes them, encoded and chained by the writer's Encoder."""
    from accessgate.audit.encoding import Encoder

    encoder = Encoder()
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    step = timedelta(days=30) / records
    with open(path, "wb", buffering=1 << 20) as out:
        for i in range(records):
            h = int.from_bytes(hashlib.blake2b(i.to_bytes(8, "little"), digest_size=8).digest(), "little")
            site = SITES[h % 10] if h % 10 < 7 else None
            roll = (h >> 8) % 100
            block = site is not None and roll < 8
            reason = REASONS[roll % 4] if block else ("allowed" if site else "unlisted")
            out.write(encoder.encode({
                "event": "access", "ts": start + step * i, "request_id": f"{h:016x}",
                "user": f"user{(h >> 16) % 5000:05d}", "roles": ["everyone", "sales"] if h & 1 else ["everyone"],
                "client_ip": f"10.{(h >> 24) % 256}.{(h >> 32) % 256}.{(h >> 40) % 250 + 1}",
                "method": "POST" if (h >> 48) % 10 == 0 else "GET", "scheme": "https",
                "host": f"www.{site}.com" if site else f"cdn{(h >> 20) % 500}.example.net",
                "path": f"/p/{(h >> 28) % 100000}", "site": site, "decision": "block" if block else "allow",
                "reason": reason, "level": ("deny" if block else "full") if site else None,
                "rule": f"roles.everyone.access.{site}" if site else "unlisted", "role": "everyone" if site else None,
                "status": 403 if block else 200, "bytes_in": (h >> 36) % 4000, "bytes_out": (h >> 12) % 200000,
                "duration_ms": ((h >> 44) % 5000) / 10, "policy": "a1b2c3d4e5f6", "enforced": True,
            }))  # fmt: skip


def accessgate(log: Path, out: Path, fmt: str) -> list[str]:
    return [sys.executable, "-m", "accessgate", "audit", "query", str(log), "--site", "facebook", "--decision",
            "block", "--format", fmt, "--output", str(out), "--no-cache"]  # fmt: skip


DUCKDB = """
import sys, duckdb
log, out, fmt = sys.argv[1:]
options = {"csv": "FORMAT csv, HEADER true", "jsonl": "FORMAT json", "parquet": "FORMAT parquet"}[fmt]
duckdb.sql(f"COPY (SELECT * FROM read_json('{log}', format = 'newline_delimited') "
           f"WHERE site = 'facebook' AND decision = 'block') TO '{out}' ({options})")
"""


def raw_duckdb(log: Path, out: Path, fmt: str) -> list[str]:
    return [sys.executable, "-c", DUCKDB, str(log), str(out), fmt]


def jq(log: Path, out: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        fields = ", ".join("(.roles | join(\",\"))" if f == "roles" else f".{f}" for f in FIELDS)
        program = f'{JQ_FILTER} | [{fields}] | @csv'
        return ["sh", "-c", f"jq -r '{program}' {log} > {out}"]
    return ["sh", "-c", f"jq -c '{JQ_FILTER}' {log} > {out}"]


def rows(path: Path, fmt: str) -> int:
    import duckdb

    if fmt == "parquet":
        return duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    lines = path.read_bytes().count(b"\n")
    return lines - 1 if fmt == "csv" and path.read_bytes()[:6] == b"event," else lines


def timed(command: list[str]) -> tuple[float, float]:
    """(seconds, CPU seconds) of running `command`: CPU summed over the process's threads and children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, cwd=REPO, timeout=600)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]}… failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="csv,jsonl,parquet", help="comma-separated: csv, jsonl, parquet")
    parser.add_argument("--dir", help="where to write the log (default: a temporary directory)")
    args = parser.parse_args()
    formats = args.formats.split(",")
    if not shutil.which("jq"):
        print("jq is not installed: apt-get install jq (scripts/test installs it)", file=sys.stderr)
        return 2
    if not 1 <= args.records <= 20_000_000 or not 1 <= args.rounds <= 10 or set(formats) - {"csv", "jsonl", "parquet"}:
        parser.error("--records 1..20M, --rounds 1..10, --formats of csv, jsonl, parquet")

    tmp = Path(tempfile.mkdtemp(prefix="accessgate-bench-export-", dir=args.dir))
    try:
        log = tmp / "audit.jsonl"
        start = time.perf_counter()
        generate(log, args.records)
        print(f"generated {args.records:,} records ({log.stat().st_size / 1e6:.0f} MB) with the writer's encoding "
              f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
        print("export: --site facebook --decision block; each run a process of its own, no Parquet cache")
        tools = {"accessgate": accessgate, "duckdb": raw_duckdb, "jq": jq}
        times: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for fmt in formats:
                names = [n for n in tools if not (n == "jq" and fmt == "parquet")]
                names = names[r % len(names):] + names[: r % len(names)]  # each round starts with the next one
                counts = {}
                for name in names:
                    out = tmp / f"{name}.{fmt}"
                    wall, used = timed(tools[name](log, out, fmt))
                    times.setdefault((name, fmt), []).append(wall)
                    cpu.setdefault((name, fmt), []).append(used)
                    counts[name] = rows(out, fmt)
                    out.unlink()
                if len(set(counts.values())) != 1:
                    print(f"MISMATCH in {fmt}: {counts}", file=sys.stderr)
                    return 1
                print(f"round {r + 1} {fmt:8} " + "  ".join(
                    f"{n} {times[(n, fmt)][-1]:6.2f} s (cpu {cpu[(n, fmt)][-1]:5.2f})" for n in names
                ) + f"   [{counts['accessgate']:,} rows], load {os.getloadavg()[0]:.1f}")  # fmt: skip
        for label, table in (("seconds", times), ("CPU seconds (steadier on a shared host)", cpu)):
            print(f"\nratios of {label}, medians of the pairs of each round (min, max):")
            for fmt in formats:
                ours = table[("accessgate", fmt)]
                line = f"{fmt:8} accessgate {spread(ours)}"
                line += f"; accessgate/duckdb {spread([a / b for a, b in zip(ours, table[('duckdb', fmt)])])}"
                if ("jq", fmt) in table:
                    line += f"; jq/accessgate {spread([b / a for a, b in zip(ours, table[('jq', fmt)])])}"
                    # what DuckDB itself gains over jq here: the ceiling of jq/accessgate on this host's cores
                    raw = zip(table[("duckdb", fmt)], table[("jq", fmt)])
                    line += f"; jq/duckdb {spread([b / a for a, b in raw])}"
                print(line)
        print(f"goal: jq/accessgate >= 10 and accessgate/duckdb <= 1.5, in seconds ({os.cpu_count()} CPUs here: "
              "DuckDB reads on every core, jq on one)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
