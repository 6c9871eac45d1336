"""The auditors' side: check a sealed log's MACs, chain and epochs with the verification key.

Breaks name the first record that fails and why; what a log alone cannot
show (records cut from its end) is left to a witness (`audit.witness`).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from accessgate.audit.chain import broken_link
from accessgate.audit.encoding import format_ts
from accessgate.audit.lines import JUNK_RUN, items, opened
from accessgate.audit.schema import MAX_LINE_BYTES, TS_TEXT, ZERO_HASH
from accessgate.audit.sealing.keys import Keyed, VerificationKey, epoch_at, evolve
from accessgate.audit.sealing.line import (
    CONTROL, CONTROL_PREFIXES, EPOCHS_SKIPPED, RECORD, SEALED, SEALED_TAIL, SEALING_RESUMED, SEALING_STARTED,
    mac_matches, parse,
)  # fmt: skip

_TS = re.compile(rb'"ts":"(%s)"' % TS_TEXT.encode())
_CHECKPOINT_EVERY = 4096  # epochs between keys the verifier keeps, for going back


class LogLine(NamedTuple):
    file: str
    number: int  # 1-based line number in `file`
    data: bytes  # without the newline
    complete: bool  # it ended with a newline


def read_lines(paths: Iterable[Path], limit: int = MAX_LINE_BYTES) -> Iterator[LogLine]:
    """Every line of `paths` (plain or gzip), oldest file first as given, in bounded memory.

    A run of blank or non-JSON lines comes as one empty line (no record); a
    line over `limit` bytes, which the writer never writes, as its last bytes,
    whose seal (if any) cannot match.
    """
    for path in paths:
        number = 0
        with opened(Path(path)) as (fh, _):
            for item in items(fh, limit):
                if type(item) is bytes:
                    number += 1
                    complete = item[-1:] == b"\n"
                    yield LogLine(str(path), number, item[:-1] if complete else item, complete)
                elif item[0] == JUNK_RUN:
                    yield LogLine(str(path), number + 1, b"", True)
                    number += item[1]
                else:
                    number += 1
                    yield LogLine(str(path), number, item[3], item[4])


@dataclass(frozen=True, slots=True)
class SealBreak:
    file: str
    line: int
    seq: int | None
    # edited | unsealed | missing | reordered | restarted | epoch-missing | epoch-order
    # | false-start | future | not-a-record | unchained | wrong-key
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class SealVerdict:
    key_id: str
    records: int = 0  # chained records read
    sealed: int = 0  # of them, sealed with this key and checked
    first_seq: int | None = None
    last_seq: int | None = None
    first_epoch: int | None = None
    last_epoch: int | None = None
    last_epoch_closed: bool = False
    head_hash: str | None = None  # sha256 of the last chained line: what a witness compares
    breaks: list[SealBreak] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks and self.sealed > 0


class _KeyRing:
    """MAC keys of any epoch from the seed, derived forward with a few keys kept for going back."""

    def __init__(self, seed: bytes) -> None:
        self._saved: dict[int, bytes] = {0: seed}
        self._epoch = 0
        self._key = bytearray(seed)
        self._macs = (Keyed(self._key, RECORD), Keyed(self._key, CONTROL))

    def macs(self, epoch: int) -> tuple[Keyed, Keyed]:
        if epoch != self._epoch:
            if epoch < self._epoch:
                base = max(e for e in self._saved if e <= epoch)
                self._key, self._epoch = bytearray(self._saved[base]), base
            while self._epoch < epoch:
                evolve(self._key)
                self._epoch += 1
                if self._epoch % _CHECKPOINT_EVERY == 0:
                    self._saved[self._epoch] = bytes(self._key)
            self._macs = (Keyed(self._key, RECORD), Keyed(self._key, CONTROL))
        return self._macs


class Chained(NamedTuple):
    seq: int
    prev: str
    epoch: int | None  # None: not sealed at all


def chain_fields(data: bytes) -> Chained | None:
    """(seq, prev, epoch or None) of a chained line; None for anything else."""
    found = SEALED_TAIL.search(data, max(0, len(data) - 200))
    if found is not None:
        return Chained(int(found.group(1)), found.group(2).decode(), int(found.group(3)))
    rec = parse(data)
    seq, prev = rec.get("seq"), rec.get("prev")
    if type(seq) is int and isinstance(prev, str):
        return Chained(seq, prev, None)
    return None


def verify_sealed(lines: Iterable[LogLine], key: VerificationKey, *, now: float | None = None) -> SealVerdict:
    """Check the seals, the chain and the epochs of a log, oldest line first.

    Breaks name the first record that fails and why.  Records before
    sealing began are checked by the chain only (the first sealed record's
    MAC covers their hash).  `now` bounds the epochs a record may claim.
    """
    return _Verifier(key, time.time() if now is None else now).run(lines)


class _Verifier:
    def __init__(self, key: VerificationKey, now: float) -> None:
        self.key = key
        self.ring = _KeyRing(key.seed)
        self.future = epoch_at(key.t0, key.interval, now) + 1
        self.v = SealVerdict(key.key_id)
        self.sealing = False  # in the part sealed with this key
        self.expect = 0  # the epoch the next sealed record must be in
        self.fresh = False  # no record yet in `expect` since it was opened by a closing record
        self.last_line: LogLine | None = None
        self.first_line: LogLine | None = None
        self.before = 0  # chained records before sealing with this key began
        self.unverified: tuple[LogLine, int, int] | None = None  # last sealed-looking line not ours
        self.other_keys: set[str] = set()
        self.backdated: list[str] = []

    def brk(self, line: LogLine, seq: int | None, kind: str, message: str) -> None:
        self.v.breaks.append(SealBreak(line.file, line.number, seq, kind, message))

    def run(self, lines: Iterable[LogLine]) -> SealVerdict:
        v = self.v
        torn: LogLine | None = None
        prev_hash: str | None = None
        for line in lines:
            found = chain_fields(line.data)
            if found is None:
                if torn is not None:
                    self.brk(torn, None, "not-a-record", _NOT_A_RECORD % len(torn.data))
                torn = None
                if self.sealing or prev_hash is not None:
                    if "ts" in parse(line.data):
                        self.brk(line, None, "unchained", "a record without seq/prev inside the chain: it was inserted")
                    else:
                        torn = line
                continue
            seq, prev, epoch = found
            # The sealer's own records may come between a torn line and the
            # writer's log_resumed: a restart closes epochs before anything is sealed.
            if torn is not None and not line.data.startswith(CONTROL_PREFIXES):
                rec = parse(line.data)
                if rec.get("event") == "log_resumed" and rec.get("truncated_bytes") == len(torn.data):
                    v.notes.append(
                        f"{torn.file}:{torn.number}: torn line of {len(torn.data)} bytes from a crash, "
                        f"accounted for by the log_resumed record at {line.file}:{line.number}"
                    )
                else:
                    self.brk(torn, None, "not-a-record", _NOT_A_RECORD % len(torn.data))
                torn = None
            v.records += 1
            if prev_hash is None:
                v.first_seq, self.first_line = seq, line
                if not (seq == 1 and prev == ZERO_HASH):
                    v.notes.append(
                        f"the chain starts at seq {seq} ({line.file}:{line.number}): records before it "
                        "are not in these files (deleted by retention, or files not given)"
                    )
            else:
                self.link(line, seq, prev, prev_hash)
            self.seal(line, seq, epoch)
            prev_hash = hashlib.sha256(line.data).hexdigest()
            v.last_seq, self.last_line = seq, line
        if torn is not None:
            if torn.complete:
                self.brk(torn, None, "not-a-record", _NOT_A_RECORD % len(torn.data))
            else:
                v.notes.append(
                    f"{torn.file}:{torn.number}: incomplete last line ({len(torn.data)} bytes, most "
                    "likely cut off by a crash while writing); not part of the chain"
                )
        v.head_hash = prev_hash
        self.finish()
        return v

    def link(self, line: LogLine, seq: int, prev: str, prev_hash: str) -> None:
        last = self.last_line
        assert last is not None
        found = broken_link(self.v.last_seq, prev_hash, (last.file, last.number), seq, prev, (line.file, line.number))
        if found is None:
            return
        breaks = self.v.breaks
        at = (found.file, found.line)
        if at != (line.file, line.number) and breaks and (breaks[-1].file, breaks[-1].line) == at:
            return  # the line before is broken already: one break for it is enough
        breaks.append(SealBreak(found.file, found.line, found.found_seq, found.kind, found.message))

    def seal(self, line: LogLine, seq: int, epoch: int | None) -> None:
        control = line.data.startswith(CONTROL_PREFIXES)
        if control:
            other = parse(line.data).get("key")
            if isinstance(other, str) and other != self.key.key_id:
                self.other_keys.add(other)
        ok = False
        if epoch is not None and epoch <= self.future:
            record_mac, control_mac = self.ring.macs(epoch)
            ok = mac_matches(control_mac if control else record_mac, line.data)
        if not self.sealing:
            if not ok:
                self.before += 1
                if epoch is not None:
                    self.unverified = (line, seq, epoch)
                return
            self.start(line, seq, epoch)
        elif epoch is None:
            self.brk(
                line, seq, "unsealed",
                f"record seq {seq} has no seal, but sealing began before it: its seal was stripped, "
                "or it was inserted",
            )  # fmt: skip
            return
        elif epoch > self.future:
            self.brk(
                line, seq, "future",
                f"record seq {seq} claims epoch {epoch}, which has not begun yet: it was not sealed by the proxy",
            )  # fmt: skip
            return
        elif not ok:
            self.brk(line, seq, "edited", _MAC_FAILS.format(seq=seq, epoch=epoch))
            return
        assert epoch is not None
        self.v.sealed += 1
        self.structure(line, seq, epoch, control)
        if not control:
            self.check_time(line, seq, epoch)

    def start(self, line: LogLine, seq: int, epoch: int | None) -> None:
        """The first record sealed with this key: where sealing began, or where these files begin."""
        assert epoch is not None
        self.sealing = True
        self.v.first_epoch = self.expect = epoch
        self.fresh = False
        if line.data.startswith(CONTROL_PREFIXES[0]):  # sealing_started
            if self.before:
                self.v.notes.append(
                    f"{self.before} record(s) before sealing began (seq {seq}) are covered by the hash "
                    "that the first sealed record carries: they are as they were then"
                )
        elif self.before == 0:
            self.v.notes.append(
                f"sealing began before these files: the first record here (seq {seq}) is sealed in "
                f"epoch {epoch} (from {format_ts(self.key.epoch_start(epoch))})"
            )
        elif self.unverified is not None:
            bad, bad_seq, bad_epoch = self.unverified
            self.brk(bad, bad_seq, "edited", _MAC_FAILS.format(seq=bad_seq, epoch=bad_epoch))
        else:
            self.brk(
                line, seq, "false-start",
                f"record seq {seq} is sealed in epoch {epoch}, but no record started sealing: "
                "the records sealed before it were removed",
            )  # fmt: skip

    def structure(self, line: LogLine, seq: int, epoch: int, control: bool) -> None:
        """Epochs follow each other, each closed by its sealed record (or skipped)."""
        where = f"record seq {seq} is sealed in epoch {epoch}"
        if epoch > self.expect and self.fresh:
            gap = f"epoch {self.expect}" if epoch == self.expect + 1 else f"epochs {self.expect}..{epoch - 1}"
            self.brk(line, seq, "epoch-missing", f"{where}, but {gap} left no record: their records were removed")
        elif epoch > self.expect:
            self.brk(
                line, seq, "epoch-missing",
                f"{where}, but epoch {self.expect} was never closed: its newest records and its sealed "
                "record were removed",
            )  # fmt: skip
        elif epoch < self.expect:
            self.brk(line, seq, "epoch-order", f"{where}, after epoch {self.expect} began: it was moved, or copied")
        closes = None
        if control:
            rec = parse(line.data)
            event = rec.get("event")
            if event == SEALED:
                closes = epoch
            elif event == EPOCHS_SKIPPED:
                through = rec.get("through")
                closes = through if type(through) is int and through >= epoch else epoch
            elif event == SEALING_STARTED and epoch != 0:
                self.brk(line, seq, "false-start", f"{where}; a real sealing_started is sealed in epoch 0")
            elif event == SEALING_RESUMED:
                self.v.notes.append(f"{line.file}:{line.number}: the sealer resumed (seq {seq}): {rec.get('note')}")
        self.expect, self.fresh = (epoch, False) if closes is None else (closes + 1, True)
        self.v.last_epoch, self.v.last_epoch_closed = (epoch, False) if closes is None else (closes, True)

    def check_time(self, line: LogLine, seq: int, epoch: int) -> None:
        found = _TS.search(line.data, 0, 80)
        if found is None:
            return
        ts = datetime.fromisoformat(found.group(1).decode()).timestamp()
        if ts < self.key.epoch_start(epoch - 1):
            self.backdated.append(
                f"{line.file}:{line.number} (seq {seq}, ts {found.group(1).decode()}, sealed in epoch "
                f"{epoch} from {format_ts(self.key.epoch_start(epoch))})"
            )

    def finish(self) -> None:
        v = self.v
        if v.records and not self.sealing:
            if self.other_keys:
                kind = "wrong-key"
                why = (
                    f"it was sealed with key {', '.join(sorted(self.other_keys))}; the verification key "
                    f"given is {self.key.key_id}"
                )
            else:
                kind = "unsealed"
                why = "no record is sealed with this key: the seals were stripped, or the log was never sealed"
            first = self.first_line
            assert first is not None
            v.breaks.insert(0, SealBreak(first.file, first.number, v.first_seq, kind, why))
            return
        if self.backdated:
            v.notes.append(
                f"{len(self.backdated)} record(s) claim a time more than an epoch before they were sealed "
                f"(first: {self.backdated[0]}): written late by the proxy, or back-dated by someone "
                "who held a later key"
            )
        if v.last_epoch is None:
            return
        if v.last_epoch_closed:
            v.notes.append(
                f"sealed through epoch {v.last_epoch} (until {format_ts(self.key.epoch_start(v.last_epoch + 1))}); "
                f"the log ends at seq {v.last_seq}: records removed from the end show only against a witness"
            )
        else:
            v.notes.append(
                f"the newest records, from epoch {v.last_epoch} (began {format_ts(self.key.epoch_start(v.last_epoch))}), "
                "are sealed with a key the proxy still held: who takes the proxy over before it closes can "
                f"change them; the log ends at seq {v.last_seq}, and only a witness shows records removed "
                "from the end"
            )


_MAC_FAILS = (
    "record seq {seq} does not match its seal (epoch {epoch}): it was changed after it was sealed, "
    "or sealed by someone without that epoch's key"
)
_NOT_A_RECORD = (
    "line is not a JSON audit record (%d bytes) and no log_resumed record accounts for it: "
    "it was edited, or written by something else"
)
