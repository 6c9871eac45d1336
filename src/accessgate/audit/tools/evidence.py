"""What `audit verify --key/--witness` and `audit witness` add to the chain: seals, a witness, one list of findings.

`verify` checks the chain (`accessgate.audit.chain`) as always; with a
verification key it also checks every seal (`accessgate.audit.sealing`), and
with a witness it compares the log's lines with the heads the witness kept
(`accessgate.audit.witness`).  `findings()` merges what they found into one
list in file order, so that the first line printed is the first record that
fails, however it was found.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, NamedTuple

from accessgate.audit.chain import Verdict
from accessgate.audit.files import Head
from accessgate.audit.sealing import SealVerdict, read_lines
from accessgate.audit.witness import (
    WitnessError, WitnessPoint, WitnessVerdict, compare_with_witness, heads, read_prometheus, read_witness_file,
)  # fmt: skip

# How far before the first record given a Prometheus witness is read: a scrape interval or four.
_WITNESS_MARGIN = 60.0


class Finding(NamedTuple):
    file: str  # "" for the witness's findings, which name a seq rather than a line
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.file else self.message


def findings(files: list[Path], chain: Verdict, sealed: SealVerdict | None) -> list[Finding]:
    """The chain's breaks and the seals' in file order; where both name a line, the seal's (more precise) message."""
    order = {str(path): index for index, path in enumerate(files)}
    found: dict[tuple[str, int], str] = {}
    for brk in chain.breaks:
        found.setdefault((brk.file, brk.line), brk.message)
    for seal in sealed.breaks if sealed is not None else ():
        found[(seal.file, seal.line)] = seal.message
    return [Finding(file, line, message)
            for (file, line), message in sorted(found.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1]))]  # fmt: skip


def first_record_time(files: list[Path]) -> float | None:
    """The time of the first record of the files given (Unix seconds), from its `ts`."""
    import json

    for line in read_lines(files):
        try:
            rec = json.loads(line.data)
            ts = rec.get("ts") if isinstance(rec, dict) and "seq" in rec else None
            if isinstance(ts, str):
                return datetime.fromisoformat(ts).timestamp()
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class WitnessSource:
    """Where the witness is: a Prometheus URL (with the proxy's `instance`, a period) or an exported file."""

    where: str
    instance: str | None = None
    since: float | None = None  # Unix seconds; None: a minute before the first record given
    until: float | None = None  # None: now

    @property
    def is_prometheus(self) -> bool:
        return self.where.startswith(("http://", "https://"))

    def points(self, files: list[Path]) -> list[WitnessPoint]:
        if not self.is_prometheus:
            if self.instance or self.since is not None or self.until is not None:
                raise WitnessError("--instance, --since and --until choose what to read from Prometheus; "
                                   f"{self.where} is a witness file, which holds its own points")  # fmt: skip
            return read_witness_file(self.where)
        return prometheus_points(self.where, self.instance, self._start(files), self.until)

    def _start(self, files: list[Path]) -> float:
        if self.since is not None:
            return self.since
        first = first_record_time(files)
        if first is None:
            raise WitnessError("the files given hold no record to compare with a witness")
        return first - _WITNESS_MARGIN


def prometheus_points(url: str, instance: str | None, since: float, until: float | None) -> list[WitnessPoint]:
    """Every head a Prometheus kept of one proxy (its `instance` label) in [since, until]."""
    selector = f'instance="{_label_value(instance)}"' if instance else ""
    end = until if until is not None else time.time() + 1
    return read_prometheus(url, start=since, end=end, selector=selector)


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def compare(files: list[Path], points: Iterable[WitnessPoint]) -> WitnessVerdict:
    """The log's lines against a witness's points."""
    return compare_with_witness(log_heads(files), points)


def log_heads(files: list[Path]) -> Iterable[Head]:
    return heads(read_lines(files))
