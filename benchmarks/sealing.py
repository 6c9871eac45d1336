"""What sealing adds per audit record, and how fast a sealed log verifies.

Times, per record, for a realistic access record (about 420 bytes):

  A  the writer's work today: orjson.dumps of the record with seq/prev, sha256 of the line
  B  the same plus Sealer.seal() of the line

alternating A B A B for a few rounds, and prints the median of the paired
differences (the cost of sealing) and of the ratios B/A, with min and max.
Then it writes a sealed log of N records and times verify_sealed() on it
and the unkeyed chain verifier (accessgate.audit.chain.verify) on the same file.

    .venv/bin/python benchmarks/sealing.py                    # 200,000 records, 5 rounds
    .venv/bin/python benchmarks/sealing.py --records 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from accessgate.audit.chain import verify as verify_unkeyed
from accessgate.audit.sealing import Sealer, keygen, load_verification_key, read_lines, verify_sealed

RECORD = {
    "event": "access", "ts": "2026-11-23T11:30:02.125Z", "request_id": "01JDB3Y6N2V8K7",
    "user": "carol", "roles": ["everyone"], "client_ip": "10.20.1.17", "method": "GET",
    "scheme": "https", "host": "www.facebook.com", "path": "/groups/feed/", "site": "facebook",
    "decision": "allow", "reason": "allowed", "level": "full", "rule": "roles.everyone.access.facebook",
    "role": "everyone", "status": 200, "bytes_in": 812, "bytes_out": 48213, "duration_ms": 183.402,
    "policy": "9f2c41d0ab77", "enforced": True,
}  # fmt: skip


def encode(records: int, sealer: Sealer | None) -> float:
    """Seconds to encode, (seal) and hash `records` lines, as the writer does."""
    prev = "0" * 64
    started = time.perf_counter()
    for seq in range(1, records + 1):
        rec = dict(RECORD)
        rec["seq"] = seq
        rec["prev"] = prev
        line = orjson.dumps(rec)
        if sealer is not None:
            line = sealer.seal(line)
        prev = hashlib.sha256(line).hexdigest()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        now = time.time()
        keygen(work / "seal.key", work / "verify.key", interval=900, now=now)
        sealer = Sealer.open(work / "seal.key")
        sealer.resume(None, 0, "0" * 64, now)
        diffs, ratios = [], []
        for _ in range(args.rounds):
            plain = encode(args.records, None)
            sealed = encode(args.records, sealer)
            diffs.append((sealed - plain) / args.records * 1e6)
            ratios.append(sealed / plain)
            print(f"round: plain {plain / args.records * 1e6:.2f} us/record, sealed {sealed / args.records * 1e6:.2f}")
        print(f"seal() adds {statistics.median(diffs):.2f} us/record (min {min(diffs):.2f}, max {max(diffs):.2f}); "
              f"encode+hash ratio sealed/plain {statistics.median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip

        log = work / "audit.jsonl"
        prev, out = "0" * 64, []
        sealer2 = Sealer.open(work / "seal.key")
        emitted = sealer2.resume(None, 0, prev, now)
        out += emitted.lines
        seq, prev = emitted.seq, emitted.prev
        for _ in range(args.records):
            line = sealer2.seal(orjson.dumps({**RECORD, "seq": seq + 1, "prev": prev}))
            out.append(line)
            seq, prev = seq + 1, hashlib.sha256(line).hexdigest()
        log.write_bytes(b"".join(line + b"\n" for line in out))
        key = load_verification_key(work / "verify.key")
        for _ in range(2):
            started = time.perf_counter()
            verdict = verify_sealed(read_lines([log]), key)
            keyed = time.perf_counter() - started
            started = time.perf_counter()
            unkeyed = verify_unkeyed([log])
            plain = time.perf_counter() - started
            assert verdict.ok and unkeyed.ok, (verdict.breaks[:3], unkeyed.breaks[:3])
            print(f"verify {len(out)} lines: sealed {keyed:.2f} s ({keyed / len(out) * 1e6:.1f} us/line), "
                  f"unkeyed chain {plain:.2f} s ({plain / len(out) * 1e6:.1f} us/line)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
