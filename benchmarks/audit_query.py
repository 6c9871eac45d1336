"""How fast can an auditor ask a month of audit log a question?

Generates N realistic access records (default 10 million) into a temporary
directory, then times one filtered aggregate -- blocked attempts per user for
one site over one month -- with accessgate's audit reader (DuckDB) and with
`jq` on the same file, alternating A B A B for a few rounds, and prints the
seconds of each run, the median of the paired ratios, and min/max.

    .venv/bin/python benchmarks/audit_query.py                 # 10M records
    .venv/bin/python benchmarks/audit_query.py --records 1000000 --rounds 3

Goal: accessgate <= 3 s on 10M records and >= 20x faster than jq.  Both the
first query of a file (parsing JSON) and a query of a cached file (Parquet,
after `accessgate audit index` or for any rotated file) are timed.
The generated file is deleted at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

SITES = [
    "facebook", "linkedin", "instagram", "x", "tiktok", "youtube", "reddit",
    "pinterest", "snapchat", "tumblr", "mastodon", "threads", "bluesky",
    "twitch", "discord", "vk", "weibo", "telegram", "whatsapp", "quora",
]
SITE = "facebook"
MONTH = ("2026-10-01T00:00:00", "2026-11-01T00:00:00")


def generate(path: Path, records: int, users: int = 5000) -> None:
    """Write `records` compact JSON lines with DuckDB (vectorized: ~1M rows/s).

    Three months of traffic; 20 sites plus unlisted hosts; about 8% blocks
    spread over the block reasons; field order and value shapes as the
    proxy writes them.  The hash chain is not real (verify is not timed).
    """
    sites = "[" + ",".join(f"'{s}'" for s in SITES) + "]"
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(
        f"""
        COPY (
          WITH r AS (
            SELECT i,
              (hash(i) >> 1)::BIGINT AS h,
              TIMESTAMP '2026-09-01' + to_microseconds((i::HUGEINT * 7776000000000 // {records})::BIGINT) AS t
            FROM range({records}) AS g(i)
          ), s AS (
            SELECT *, CASE WHEN h % 10 < 7 THEN {sites}[1 + (h // 10) % 20] END AS site,
              (h // 1000) % 100 AS roll
            FROM r
          )
          SELECT
            'access' AS event,
            strftime(t, '%Y-%m-%dT%H:%M:%S.%gZ') AS ts,
            md5(i::VARCHAR)[:16] AS request_id,
            'user' || lpad(((h // 100000) % {users})::VARCHAR, 5, '0') AS "user",
            CASE (h // 7) % 3 WHEN 0 THEN ['everyone'] WHEN 1 THEN ['everyone', 'marcom'] ELSE ['everyone', 'sales'] END AS roles,
            '10.' || ((h // 13) % 256) || '.' || ((h // 17) % 256) || '.' || ((h // 19) % 250 + 1) AS client_ip,
            CASE WHEN (h // 23) % 10 = 0 THEN 'POST' ELSE 'GET' END AS method,
            'https' AS scheme,
            CASE WHEN site IS NULL THEN 'cdn' || ((h // 29) % 500) || '.example.net' ELSE 'www.' || site || '.com' END AS host,
            '/p/' || ((h // 31) % 100000) AS path,
            site,
            CASE WHEN roll < 8 AND site IS NOT NULL THEN 'block' ELSE 'allow' END AS decision,
            CASE WHEN site IS NULL THEN 'unlisted'
                 WHEN roll < 3 THEN 'denied' WHEN roll < 5 THEN 'read-only'
                 WHEN roll < 7 THEN 'outside-window' WHEN roll < 8 THEN 'quota-exhausted'
                 ELSE 'allowed' END AS reason,
            CASE WHEN site IS NULL THEN NULL WHEN roll < 3 THEN 'deny' WHEN roll < 5 THEN 'read-only' ELSE 'full' END AS level,
            CASE WHEN site IS NULL THEN 'unlisted' ELSE 'roles.everyone.access.' || site END AS rule,
            CASE WHEN roll < 8 AND site IS NOT NULL THEN 403 ELSE 200 END AS status,
            (h // 37) % 4000 AS bytes_in,
            (h // 41) % 200000 AS bytes_out,
            round(((h // 43) % 5000) / 10.0, 1) AS duration_ms,
            'a1b2c3d4e5f6' AS policy,
            true AS enforced,
            i + 1 AS seq,
            sha256(i::VARCHAR) AS prev
          FROM s
        ) TO '{path}' (FORMAT json)
        """
    )
    con.close()


QUERY = """
    SELECT "user", count(*) AS blocked FROM audit
    WHERE site = ? AND decision = 'block' AND ts >= ? AND ts < ?
    GROUP BY "user" ORDER BY "user"
"""


def time_accessgate(path: Path, cache) -> tuple[float, list]:
    """The query through accessgate's reader; `cache` None parses the JSON every time."""
    from accessgate.audit.reader import AuditReader

    start = time.perf_counter()
    with AuditReader([str(path)], cache=cache, build_cache="none") as log:
        rows = log.sql(QUERY, [SITE, *MONTH]).rows
    return time.perf_counter() - start, [(u, int(n)) for u, n in rows]


JQ_PROGRAM = (
    f'select(.site == "{SITE}" and .decision == "block"'
    f' and .ts >= "{MONTH[0][:10]}" and .ts < "{MONTH[1][:10]}") | .user'
)


def time_jq(path: Path) -> tuple[float, list]:
    # jq streams and filters; counting per user is done by the shell's usual
    # `sort | uniq -c` companion, kept out of the timing's way in Python.
    start = time.perf_counter()
    out = subprocess.run(
        ["jq", "-r", JQ_PROGRAM, str(path)], check=True, capture_output=True, text=True
    ).stdout
    counts: dict[str, int] = {}
    for user in out.splitlines():
        counts[user] = counts.get(user, 0) + 1
    return time.perf_counter() - start, sorted(counts.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where to write the log (default: a temp dir)")
    args = parser.parse_args()
    if not shutil.which("jq"):
        print("jq is not installed: apt-get install jq", file=sys.stderr)
        return 2
    if not 1 <= args.records <= 50_000_000 or not 1 <= args.rounds <= 10:
        print("--records must be 1..50M and --rounds 1..10", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="accessgate-bench-", dir=args.dir))
    try:
        path = tmp / "audit.jsonl"
        start = time.perf_counter()
        generate(path, args.records)
        size = path.stat().st_size
        print(
            f"generated {args.records:,} records, {size / 1e9:.2f} GB "
            f"in {time.perf_counter() - start:.1f} s"
        )
        print(f"query: blocked attempts per user on {SITE!r}, {MONTH[0][:10]} .. {MONTH[1][:10]}")
        from accessgate.audit.reader import AuditReader, Cache

        cache = Cache(tmp / "cache")
        start = time.perf_counter()
        with AuditReader([str(path)], cache=cache, build_cache="all"):
            pass
        print(f"accessgate audit index (one-off Parquet cache): {time.perf_counter() - start:.1f} s")

        cold, warm, jq, cold_ratio, warm_ratio = [], [], [], [], []
        for n in range(1, args.rounds + 1):
            a, rows_a = time_accessgate(path, None)
            b, rows_b = time_jq(path)
            c, rows_c = time_accessgate(path, cache)
            if not rows_a == rows_b == rows_c:
                print("MISMATCH: accessgate and jq disagree", file=sys.stderr)
                return 1
            cold.append(a)
            jq.append(b)
            warm.append(c)
            cold_ratio.append(b / a)
            warm_ratio.append(b / c)
            print(
                f"round {n}: accessgate {a:6.2f} s (cached {c:5.2f} s)   jq {b:7.2f} s   "
                f"ratio {b / a:5.1f}x (cached {b / c:6.1f}x)   [{len(rows_a)} users]"
            )

        def stats(name: str, values: list[float], unit: str) -> str:
            med = statistics.median(values)
            return f"{name} median {med:.2f}{unit} (min {min(values):.2f}, max {max(values):.2f})"

        print(stats("accessgate, parsing JSON:", cold, " s"))
        print(stats("accessgate, cached:      ", warm, " s"))
        print(stats("jq:                      ", jq, " s"))
        print(stats("jq / accessgate (JSON):  ", cold_ratio, "x"))
        print(stats("jq / accessgate (cached):", warm_ratio, "x"))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
