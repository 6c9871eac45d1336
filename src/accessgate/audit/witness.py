"""A witness outside the box: the log's head, kept by another system, and the comparison.

A log cannot show that its newest records were cut off, and an unkeyed (or
not yet sealed) head can be rewritten.  So the proxy publishes its head, the
`seq` and SHA-256 of the last line written, as Prometheus gauges, and the
Prometheus server keeps every scrape:

    accessgate_audit_head_seq                 48121
    accessgate_audit_head_hash{part="0"}      first 48 bits of the line's SHA-256, as an integer
    accessgate_audit_head_hash{part="1"}      the next 48 bits

A gauge is a float64, exact for integers below 2**53, so a hash travels as
two 48-bit integers: 96 bits, which an attacker would have to match by a
second-preimage search of 2**96 SHA-256 evaluations to rewrite a witnessed
line unseen.  For a sealed log the line's hash covers its MAC, so the MAC
needs no gauge of its own.

`compare_with_witness(heads(lines), points)` then says, for every point the
witness kept: consistent, truncated (the witness saw seq N, the log ends
before N), rewritten (the log's line N hashes differently) or missing.
Points come from `read_prometheus(...)` or from an exported witness file
(`read_witness_file`, JSON lines of ts, seq and hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, NamedTuple

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from accessgate.audit.files import Head
from accessgate.audit.sealing import LogLine, chain_fields
from accessgate.errors import AuditLogError

HEAD_SEQ = "accessgate_audit_head_seq"
HEAD_HASH = "accessgate_audit_head_hash"
PART_BITS = 48
PARTS = 2
WITNESS_HEX = PARTS * PART_BITS // 4  # 24 hex digits: what a Prometheus witness keeps of a hash
_PART_HEX = PART_BITS // 4


class WitnessError(AuditLogError):
    """A witness cannot be read: the file is malformed, or Prometheus did not answer usefully."""


class WitnessPoint(NamedTuple):
    ts: float  # when the witness saw the head (Unix seconds)
    seq: int
    hash: str  # a hex prefix of the head line's SHA-256: 24 digits from Prometheus, up to 64


def hash_parts(hash_hex: str) -> tuple[int, ...]:
    """The first 96 bits of a hex hash as two 48-bit integers (exact in a float64)."""
    return tuple(int(hash_hex[i * _PART_HEX : (i + 1) * _PART_HEX], 16) for i in range(PARTS))


def parts_hex(parts: Iterable[int]) -> str:
    return "".join(f"{part:0{_PART_HEX}x}" for part in parts)


def heads(lines: Iterable[LogLine]) -> Iterator[Head]:
    """(seq, sha256) of every chained line, in order; lines that are not records are skipped."""
    for line in lines:
        found = chain_fields(line.data)
        if found is not None:
            yield Head(found.seq, hashlib.sha256(line.data).hexdigest())


class HeadCollector(Collector):
    """Exports the head that `head()` returns (None: nothing written yet) at every scrape.

    `head()` must return one consistent (seq, hash) pair: the writer keeps
    it as one tuple, replaced whole after each write.
    """

    def __init__(self, head: Callable[[], Head | None]) -> None:
        self._head = head

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families(None))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            head = self._head()
        except Exception:
            head = None
        yield from self._families(head)

    def _families(self, head: Head | None) -> Iterator[GaugeMetricFamily]:
        seq = GaugeMetricFamily(HEAD_SEQ, "seq of the last audit record written (a witness keeps it).")
        digest = GaugeMetricFamily(
            HEAD_HASH,
            f"SHA-256 of the last audit line written, as {PARTS} integers of {PART_BITS} bits (part 0 first).",
            labels=["part"],
        )
        if head is not None:
            seq.add_metric([], float(head.seq))
            for index, part in enumerate(hash_parts(head.hash)):
                digest.add_metric([str(index)], float(part))
        yield seq
        yield digest


# -- the exported witness file ------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def write_witness(points: Iterable[WitnessPoint], out: IO[str]) -> int:
    """Write points as JSON lines {"ts": RFC 3339, "seq": N, "hash": hex}; returns how many."""
    count = 0
    for point in points:
        out.write(json.dumps({"ts": _iso(point.ts), "seq": point.seq, "hash": point.hash}) + "\n")
        count += 1
    return count


def read_witness_file(path: str | os.PathLike[str]) -> list[WitnessPoint]:
    """The points of an exported witness file; WitnessError names the first bad line."""
    points = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WitnessError(f"{path}: cannot read the witness file ({exc})") from None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            point = _point(rec["ts"], rec["seq"], rec["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise WitnessError(
                f"{path}:{number}: not a witness point ({exc}); each line is "
                '{"ts": "2026-11-23T11:30:00.000Z", "seq": 48121, "hash": "<24 to 64 hex digits>"}'
            ) from None
        points.append(point)
    return points


def _point(ts: object, seq: object, digest: object) -> WitnessPoint:
    if isinstance(ts, str):
        moment = datetime.fromisoformat(ts)
        if moment.tzinfo is None:
            raise ValueError("ts has no time zone")
        ts = moment.timestamp()
    if type(ts) not in (int, float):
        raise TypeError("ts is not a time")
    if type(seq) is not int or seq < 1:
        raise TypeError("seq is not a positive whole number")
    if not isinstance(digest, str) or not WITNESS_HEX <= len(digest) <= 64:
        raise ValueError(f"hash must be {WITNESS_HEX} to 64 hex digits")
    int(digest, 16)
    return WitnessPoint(float(ts), seq, digest.lower())  # type: ignore[arg-type]


# -- Prometheus as the witness ------------------------------------------------------------------


def read_prometheus(
    url: str,
    *,
    start: float,
    end: float,
    selector: str = "",
    timeout: float = 10.0,
    deadline: float = 120.0,
    window: int = 6 * 3600,
) -> list[WitnessPoint]:
    """Every scrape of the head that Prometheus at `url` kept between `start` and `end`.

    Reads raw samples (`/api/v1/query` of a range selector, `window` seconds
    a request) rather than `query_range`, which would resample at a step and
    could pass over scrapes.  `selector` narrows to one proxy
    (`instance="proxy1:9464"`).  Each request waits at most `timeout`
    seconds, all of them together `deadline` seconds.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise WitnessError(f"{url!r} is not a Prometheus URL; give http://HOST:PORT (https works too)")
    if end <= start:
        raise WitnessError("the witness period is empty: its end must come after its start")
    api = url.rstrip("/") + "/api/v1/query"
    matchers = f'__name__=~"{HEAD_SEQ}|{HEAD_HASH}"' + (f",{selector}" if selector.strip() else "")
    give_up = time.monotonic() + deadline
    series: dict[tuple, dict[float, dict[str, float]]] = {}
    at = start
    while at < end:
        upto = min(at + window, end)
        query = f"{{{matchers}}}[{max(1, math.ceil(upto - at))}s]"
        for result in _ask(api, query, upto, timeout, give_up):
            labels = dict(result.get("metric", {}))
            name = labels.pop("__name__", "")
            part = labels.pop("part", None)
            slot = HEAD_SEQ if name == HEAD_SEQ else f"{HEAD_HASH}:{part}"
            samples = series.setdefault(tuple(sorted(labels.items())), {})
            for ts, value in result.get("values", []):
                if at < float(ts) <= upto or (at == start and float(ts) == start):
                    samples.setdefault(float(ts), {})[slot] = float(value)
        at = upto
    if len(series) > 1:
        names = "; ".join(", ".join(f'{k}="{v}"' for k, v in key) or "(no labels)" for key in sorted(series))
        raise WitnessError(
            f"several proxies publish an audit head at {url}: {names}. Choose one: `--instance HOST:PORT` "
            'in accessgate audit, a selector such as instance="proxy1:9464" here'
        )
    points = []
    for samples in series.values():
        for ts in sorted(samples):
            got = samples[ts]
            seq = got.get(HEAD_SEQ)
            parts = [got.get(f"{HEAD_HASH}:{i}") for i in range(PARTS)]
            if not (_whole(seq, 2**53) and seq and all(_whole(p, 2**PART_BITS) for p in parts)):
                continue  # a scrape without the whole head (a proxy starting): nothing to witness
            points.append(WitnessPoint(ts, int(seq), parts_hex(int(p) for p in parts)))  # type: ignore[arg-type]
    return points


def _whole(value: float | None, limit: int) -> bool:
    return value is not None and 0 <= value < limit and value == int(value)


def _ask(api: str, query: str, at: float, timeout: float, give_up: float) -> list[dict]:
    left = give_up - time.monotonic()
    if left <= 0:
        raise WitnessError(f"Prometheus did not give the witness in time ({api}); try a shorter period")
    target = api + "?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    try:
        with urllib.request.urlopen(target, timeout=min(timeout, left)) as response:
            body = json.loads(response.read(64 << 20))
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read(1 << 16)).get("error", exc.reason)
        except ValueError:
            why = exc.reason
        raise WitnessError(f"Prometheus refused the witness query ({exc.code}: {why}); check the selector") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WitnessError(f"cannot read the witness from {api}: {reason}; is Prometheus running there?") from None
    if body.get("status") != "success" or body.get("data", {}).get("resultType") != "matrix":
        raise WitnessError(f"Prometheus answered the witness query with {body.get('error') or body.get('status')}")
    return body["data"]["result"]


# -- the comparison ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessFinding:
    kind: str  # truncated | rewritten | missing
    seq: int
    ts: float  # when the witness saw it
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class WitnessVerdict:
    points: int = 0
    checked: int = 0  # points whose seq the log has, compared hash to hash
    log_first_seq: int | None = None
    log_last_seq: int | None = None
    newest: WitnessPoint | None = None
    findings: list[WitnessFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and self.checked > 0


def compare_with_witness(log: Iterable[Head], points: Iterable[WitnessPoint]) -> WitnessVerdict:
    """Compare the log's lines with what a witness saw, point by point."""
    verdict = WitnessVerdict()
    wanted: dict[int, list[WitnessPoint]] = {}
    for point in points:
        wanted.setdefault(point.seq, []).append(point)
        verdict.points += 1
        if verdict.newest is None or point.ts > verdict.newest.ts:
            verdict.newest = point
    seen: dict[int, list[str]] = {}
    top: int | None = None
    for head in log:
        if verdict.log_first_seq is None:
            verdict.log_first_seq = head.seq
        verdict.log_last_seq = head.seq
        top = head.seq if top is None else max(top, head.seq)
        if head.seq in wanted:
            seen.setdefault(head.seq, []).append(head.hash)
    first = verdict.log_first_seq
    beyond: list[WitnessPoint] = []
    missing: list[WitnessPoint] = []
    rewritten: list[WitnessPoint] = []
    before = 0
    for seq, group in wanted.items():
        for point in group:
            if seq in seen:
                verdict.checked += 1
                if not any(digest.startswith(point.hash) for digest in seen[seq]):
                    rewritten.append(point)
            elif top is None or seq > top:
                beyond.append(point)
            elif first is not None and seq < first:
                before += 1
            else:
                missing.append(point)
    if rewritten:
        point = min(rewritten, key=lambda p: (p.seq, p.ts))
        verdict.findings.append(WitnessFinding(
            "rewritten", point.seq, point.ts,
            f"the witness saw seq {point.seq} at {_iso(point.ts)} with hash {point.hash}…, but the log's line "
            f"with seq {point.seq} hashes differently: it was rewritten after the witness saw it"
            + (f" ({len(rewritten)} witnessed line(s) differ)" if len(rewritten) > 1 else ""),
        ))  # fmt: skip
    if beyond:
        earliest = min(beyond, key=lambda p: p.ts)
        highest = max(p.seq for p in beyond)
        ends = f"the log ends at seq {top}" if top is not None else "the log has no records"
        verdict.findings.append(WitnessFinding(
            "truncated", highest, earliest.ts,
            f"the witness saw seq {highest} (seq {earliest.seq} already at {_iso(earliest.ts)}), but {ends}: "
            f"at least {highest - (top or 0)} record(s) were removed from its end, or newer files were not given",
        ))  # fmt: skip
    if missing:
        point = min(missing, key=lambda p: p.seq)
        verdict.findings.append(WitnessFinding(
            "missing", point.seq, point.ts,
            f"the witness saw seq {point.seq} at {_iso(point.ts)}, but no line of the log has that seq: "
            "records were removed from the middle",
        ))  # fmt: skip
    if before:
        verdict.notes.append(f"{before} witness point(s) are older than the first record given (seq {first}): "
                             "not compared")  # fmt: skip
    if verdict.points == 0:
        verdict.notes.append("the witness holds no point for this period: nothing to compare")
    elif verdict.newest is not None:
        verdict.notes.append(
            f"the witness's newest point is seq {verdict.newest.seq} at {_iso(verdict.newest.ts)}; records "
            "written after it are not witnessed"
        )
    return verdict
