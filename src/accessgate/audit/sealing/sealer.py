"""The proxy's side: the Sealer seals the writer's lines and closes each epoch.

The audit writer calls, from its one thread: `Sealer.open(path)`, then
`resume(last_line, seq, prev, now)`, `tick(now, seq, prev)` every flush,
`seal(line)` per record, `commit()` after the lines are written, `close()`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

from accessgate.audit.encoding import format_ts
from accessgate.audit.sealing.keys import (
    MAC_BYTES, SEALING_FORMAT, Keyed, SealingKeyError, create_key_file, epoch_at, evolve, key_id, read_key_file, wipe,
)  # fmt: skip
from accessgate.audit.sealing.line import (
    CONTROL, CONTROL_EVENTS, CONTROL_PREFIXES, EPOCHS_SKIPPED, RECORD, SEALED, SEALED_TAIL, SEALING_RESUMED,
    SEALING_STARTED, mac_matches, parse,
)  # fmt: skip

_MAX_FAST_FORWARD = 100_000  # epochs a log may be ahead of its key file (a crash before commit)


class Emitted(NamedTuple):
    """Lines the sealer made (no newline), already chained and sealed, and the chain after them."""

    lines: tuple[bytes, ...]
    seq: int
    prev: str


class Sealer:
    """Seals the audit writer's lines; holds the current epoch's key only.

    Not thread-safe: the audit writer's thread is its only user.
    """

    def __init__(self, path: Path, fields: dict, key: bytearray) -> None:
        self.path = path
        self.key_id: str = fields["key_id"]
        self.t0: int = fields["t0"]
        self.interval: int = fields["interval"]
        self._key = key
        self._epoch: int = fields["epoch"]
        self._stored_epoch = self._epoch  # the epoch whose key is in the file
        self._record_mac: Keyed | None = None  # set by resume()
        self._control_mac: Keyed | None = None
        self._epoch_suffix = b""
        self._next_epoch_at = math.inf  # tick() does nothing before resume()
        self._opened_at = -1  # the chain's seq when the open epoch began with no line in it

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Sealer:
        """Read the sealing key file (0600, made by `keygen`); SealingKeyError says what is wrong."""
        path = Path(path)
        fields, key = read_key_file(path, SEALING_FORMAT, "sealing key")
        if fields["epoch"] == 0 and not hmac.compare_digest(key_id(key), fields["key_id"]):
            wipe(key)
            raise SealingKeyError(f"{path} is not a valid sealing key (its key does not match its key_id)")
        if not os.access(path.parent, os.W_OK | os.X_OK):  # a read-only mount says no to root too
            wipe(key)
            raise SealingKeyError(
                f"{path.parent} cannot be written by this user, and the sealing key is replaced there at "
                "every epoch's end (an old key must not stay behind): keep the key in a directory only the "
                "proxy's user can write, e.g. /var/lib/accessgate"
            )
        return cls(path, fields, key)

    @property
    def epoch(self) -> int:
        return self._epoch

    def epoch_at(self, now: float) -> int:
        return epoch_at(self.t0, self.interval, now)

    def resume(self, last_line: bytes | None, seq: int, prev: str, now: float) -> Emitted:
        """Continue after the log's last complete line (None: a new log), sealing up to `now`.

        Returns what to write before any record: a `sealing_started` record
        for a new key, a `sealing_resumed` one when the log does not end
        with this key's records, and the records that close the epochs
        that passed while the proxy was down.
        """
        lines: list[bytes] = []
        tail = _seal_fields(last_line) if last_line is not None else None
        ours = False
        self._opened_at = -1
        if tail is not None and tail.closes_through is not None and tail.closes_through + 1 == self._epoch:
            ours = True  # stopped right after closing an epoch: its key is gone, and that is as it should be
            tail = tail._replace(epoch=self._epoch, closes_through=None)
            self._opened_at = seq
        elif tail is not None and self._epoch <= tail.epoch <= self._epoch + _MAX_FAST_FORWARD:
            probe = bytearray(self._key)
            for _ in range(tail.epoch - self._epoch):
                evolve(probe)
            assert last_line is not None
            ours = _mac_ok(probe, last_line)
            if ours:
                self._key[:] = probe  # the log is ahead of the key file: a crash before commit()
                self._epoch = tail.epoch
            wipe(probe)
        self._rekey()
        if ours:
            assert tail is not None
            if tail.closes_through is not None:
                self._advance(tail.closes_through + 1 - self._epoch)
                self._opened_at = seq
        elif self._epoch == 0:
            seq, prev = self._control(
                lines, SEALING_STARTED, seq, prev, now,
                {"t0": format_ts(self.t0), "interval": self.interval},
            )  # fmt: skip
        else:
            note = (
                f"the log's last record (seq {seq}) is sealed in epoch {tail.epoch}, but the key is at "
                f"epoch {self._epoch}: what was sealed in between is not in this log"
                if tail is not None and tail.epoch < self._epoch
                else "the log does not end with a record sealed with this key: the records sealed "
                "with it before are not in this log (a new or replaced log file?)"
            )
            seq, prev = self._control(lines, SEALING_RESUMED, seq, prev, now, {"note": note})
        seq, prev = self._catch_up(lines, seq, prev, now, "closed at restart: the proxy stopped in this epoch")
        return Emitted(tuple(lines), seq, prev)

    def tick(self, now: float, seq: int, prev: str) -> Emitted:
        """Close the epochs that ended by `now`; call it every writer cycle, records or not."""
        if now < self._next_epoch_at:
            return Emitted((), seq, prev)
        lines: list[bytes] = []
        seq, prev = self._catch_up(lines, seq, prev, now, None)
        return Emitted(tuple(lines), seq, prev)

    def seal(self, line: bytes) -> bytes:
        """`line` (a JSON object ending in seq and prev, no newline) with `"epoch":E,"mac":"…"` added."""
        mac = self._record_mac
        if mac is None:
            raise RuntimeError("Sealer.resume() must run before the first record is sealed")
        if line[-1:] != b"}" or line.startswith(CONTROL_PREFIXES):
            raise ValueError(
                "only a JSON object line can be sealed, and events "
                + ", ".join(CONTROL_EVENTS) + " are the sealer's own"
            )  # fmt: skip
        head = line[:-1] + self._epoch_suffix
        inner = mac.inner.copy()
        inner.update(head)
        outer = mac.outer.copy()
        outer.update(inner.digest())
        return head + b',"mac":"' + binascii.hexlify(outer.digest()[:MAC_BYTES]) + b'"}'

    def commit(self) -> None:
        """Replace the key file with the current epoch's key, if it moved on.

        Call it after the lines sealed so far are in the log file: a crash
        in between then leaves a key that can still close the last epoch
        in the log, rather than an epoch nobody can close any more.
        """
        if self._epoch == self._stored_epoch:
            return
        fields = {
            "format": SEALING_FORMAT, "key_id": self.key_id, "t0": self.t0,
            "interval": self.interval, "epoch": self._epoch,
        }  # fmt: skip
        create_key_file(self.path, fields, self._key, exclusive=False)
        self._stored_epoch = self._epoch

    def close(self) -> None:
        """Erase the key from memory.  The open epoch is closed at the next start."""
        wipe(self._key)
        self._record_mac = self._control_mac = None
        self._next_epoch_at = math.inf

    # -- inside ---------------------------------------------------------------------------

    def _catch_up(self, lines: list[bytes], seq: int, prev: str, now: float, note: str | None) -> tuple[int, str]:
        target = self.epoch_at(now)
        if target <= self._epoch:
            return seq, prev
        if seq != self._opened_at:  # the epoch has lines: close it with its own key
            start = self.t0 + self._epoch * self.interval
            closing = {"from": format_ts(start), "until": format_ts(start + self.interval)}
            if note:
                closing["note"] = note
            seq, prev = self._control(lines, SEALED, seq, prev, now, closing)
            self._advance(1)
        if target > self._epoch:
            start = self.t0 + self._epoch * self.interval
            seq, prev = self._control(
                lines, EPOCHS_SKIPPED, seq, prev, now,
                {"through": target - 1, "from": format_ts(start), "until": format_ts(self.t0 + target * self.interval),
                 "note": "no records were sealed in these epochs: the proxy was not running (or not writing)"},
            )  # fmt: skip
            self._advance(target - self._epoch)
        self._opened_at = seq
        return seq, prev

    def _advance(self, epochs: int) -> None:
        for _ in range(epochs):
            evolve(self._key)
        self._epoch += epochs
        self._rekey()

    def _rekey(self) -> None:
        # The hash states hold the key's pads; OpenSSL cleanses them when freed.
        self._record_mac = Keyed(self._key, RECORD)
        self._control_mac = Keyed(self._key, CONTROL)
        self._epoch_suffix = b',"epoch":%d' % self._epoch
        self._next_epoch_at = float(self.t0 + (self._epoch + 1) * self.interval)

    def _control(self, lines: list[bytes], event: str, seq: int, prev: str, now: float, extra: dict) -> tuple[int, str]:
        rec = {"event": event, "ts": format_ts(now), "key": self.key_id, **extra, "seq": seq + 1, "prev": prev}
        body = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)[:-1].encode() + self._epoch_suffix
        assert self._control_mac is not None
        line = body + b',"mac":"' + self._control_mac.tag(body) + b'"}'
        lines.append(line)
        return seq + 1, hashlib.sha256(line).hexdigest()


class _Tail(NamedTuple):
    seq: int
    prev: str
    epoch: int
    control: bool
    closes_through: int | None  # last epoch a sealed/epochs_skipped record closes


def _seal_fields(line: bytes) -> _Tail | None:
    found = SEALED_TAIL.search(line, max(0, len(line) - 200))
    if found is None:
        return None
    epoch = int(found.group(3))
    control = line.startswith(CONTROL_PREFIXES)
    closes = None
    if line.startswith(CONTROL_PREFIXES[1]):  # sealed
        closes = epoch
    elif line.startswith(CONTROL_PREFIXES[2]):  # epochs_skipped
        through = parse(line).get("through")
        closes = through if type(through) is int and through >= epoch else epoch
    return _Tail(int(found.group(1)), found.group(2).decode(), epoch, control, closes)


def _mac_ok(key: bytes | bytearray, line: bytes) -> bool:
    domain = CONTROL if line.startswith(CONTROL_PREFIXES) else RECORD
    return mac_matches(Keyed(key, domain), line)
