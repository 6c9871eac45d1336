"""Forward-secure sealing of the audit log: what was sealed before a take-over stays provable.

The unkeyed hash chain (`seq`, `prev`) shows changes only to someone who
trusts the newest line: whoever can write the file can recompute it.  With a
sealing key, every line also carries `"epoch":E,"mac":"…"` at its end, after
`prev`: an HMAC-SHA256 (cut to 128 bits) of the line's bytes up to the MAC,
under the key of epoch E.  Epoch E covers [t0 + E*interval, t0 + (E+1)*interval).

    K_0     = 32 random bytes (`keygen`; the auditors' verification key holds it)
    K_{E+1} = HMAC-SHA256(K_E, "accessgate seal evolve")
    mac     = HMAC-SHA256(K_E, "accessgate seal record\\0" + line up to the MAC)[:16]

The proxy holds only the current K_E (file and memory); when an epoch ends
it seals the epoch with a `sealed` record, derives the next key and erases
the old one.  Someone who takes the proxy over in epoch D cannot compute
K_E for E < D, so every record sealed before D is fixed: editing it breaks
its MAC; removing, inserting or moving one breaks `prev` of a sealed record,
or leaves an epoch without its `sealed` record.  Epochs the proxy was not
running for are closed at the next start by one `epochs_skipped` record
under the first skipped epoch's key, so a stop is not mistaken for a
deletion.  Sealing begins with a `sealing_started` record in epoch 0,
which only the keygen's K_0 can seal.

The audit writer calls, from its one thread: `Sealer.open(path)`, then
`resume(last_line, seq, prev, now)`, `tick(now, seq, prev)` every flush,
`seal(line)` per record, `commit()` after the lines are written, `close()`.
Auditors call `verify_sealed(read_lines(files), load_verification_key(path))`.
docs/sealing.md says what is covered and what is not.
"""

from __future__ import annotations

import binascii
import ctypes
import errno
import gzip
import hashlib
import hmac
import json
import math
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from accessgate.audit.schema import CHAIN_TAIL, TS_TEXT, ZERO_HASH
from accessgate.errors import AuditLogError

SEALING_FORMAT = "accessgate-sealing-key/1"
VERIFICATION_FORMAT = "accessgate-verification-key/1"
DEFAULT_INTERVAL = 900  # seconds: 96 sealed epochs a day
MIN_INTERVAL = 1  # below a minute only makes sense in tests
MAX_INTERVAL = 86400
MAC_BYTES = 16

_EVOLVE = b"accessgate seal evolve"
_RECORD = b"accessgate seal record\x00"
_CONTROL = b"accessgate seal control\x00"
_KEY_ID = b"accessgate seal key id"

# Records the sealer makes itself.  They are MACed in their own domain, so
# that no record given to seal() can pass for one.
SEALING_STARTED = "sealing_started"
SEALED = "sealed"
EPOCHS_SKIPPED = "epochs_skipped"
SEALING_RESUMED = "sealing_resumed"
CONTROL_EVENTS = (SEALING_STARTED, SEALED, EPOCHS_SKIPPED, SEALING_RESUMED)
_CONTROL_PREFIXES = tuple(b'{"event":"%s",' % name.encode() for name in CONTROL_EVENTS)

_MAC_TAIL = len(b',"mac":"') + 2 * MAC_BYTES + len(b'"}')
_SEALED_TAIL = re.compile(CHAIN_TAIL + rb',"epoch":(\d+),"mac":"([0-9a-f]{%d})"\}\Z' % (2 * MAC_BYTES))
_TS = re.compile(rb'"ts":"(%s)"' % TS_TEXT.encode())
_KEY_FIELD = {SEALING_FORMAT: "key", VERIFICATION_FORMAT: "seed"}
_KIND = {SEALING_FORMAT: "sealing key", VERIFICATION_FORMAT: "verification key"}
_MAX_KEY_FILE = 4096
_MAX_FAST_FORWARD = 100_000  # epochs a log may be ahead of its key file (a crash before commit)
_CHECKPOINT_EVERY = 4096  # epochs between keys the verifier keeps, for going back


class SealingKeyError(AuditLogError):
    """A sealing or verification key file is missing, unsafe or not a key file.

    Messages name the file and what to do; they never contain key material.
    """


# -- keys -------------------------------------------------------------------------------

# CPython keeps a bytes object's data at a fixed offset; wiping it in place
# is the only way to erase the immutable copies hashlib hands back.
_BYTES_DATA = bytes.__basicsize__ - 1 if sys.implementation.name == "cpython" else None


def _wipe(data: bytes | bytearray) -> None:
    """Overwrite a key copy with zeros, as far as the interpreter lets us."""
    if type(data) is bytearray:
        data[:] = bytes(len(data))
    elif type(data) is bytes and len(data) > 1 and _BYTES_DATA is not None:
        ctypes.memset(id(data) + _BYTES_DATA, 0, len(data))


def _evolve(key: bytearray) -> None:
    """K_{E+1} from K_E, in place."""
    new = hmac.digest(key, _EVOLVE, "sha256")
    key[:] = new
    _wipe(new)


class _Keyed:
    """HMAC-SHA256 under one key and domain, with the key's pads hashed once.

    Copying two prepared SHA-256 states costs a third of what copying an
    hmac object does; the result is the same HMAC (RFC 2104).
    """

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes | bytearray, domain: bytes) -> None:
        pad = bytearray(64)
        pad[: len(key)] = key
        for i in range(64):
            pad[i] ^= 0x36
        self.inner = hashlib.sha256(pad)
        self.inner.update(domain)
        for i in range(64):
            pad[i] ^= 0x36 ^ 0x5C
        self.outer = hashlib.sha256(pad)
        _wipe(pad)

    def tag(self, body: bytes | memoryview) -> bytes:
        """The MAC of `body` as the hex digits a line carries."""
        inner = self.inner.copy()
        inner.update(body)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return binascii.hexlify(outer.digest()[:MAC_BYTES])


def key_id(seed: bytes | bytearray) -> str:
    """16 hex digits naming a key pair; they reveal nothing about the seed."""
    digest = hmac.digest(seed, _KEY_ID, "sha256")
    return digest[:8].hex()


def epoch_at(t0: int, interval: int, now: float) -> int:
    """The epoch `now` falls in (0 before t0: a clock behind the keygen's)."""
    return max(0, int((now - t0) // interval))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `keygen` made; no key material."""

    key_id: str
    t0: int
    interval: int
    sealing_path: Path
    verification_path: Path

    def advice(self) -> str:
        """What `accessgate audit keygen` prints."""
        return (
            f"key {self.key_id}: epochs of {self.interval} s from {_iso(self.t0)}\n"
            f"sealing key:      {self.sealing_path}\n"
            "  stays on the proxy, readable only by the proxy's user; the proxy evolves it\n"
            "  every epoch. Point the proxy's sealing option at it.\n"
            f"verification key: {self.verification_path}\n"
            "  MOVE IT OFF THE PROXY NOW, to the auditors (an offline vault or their machine),\n"
            "  then delete it here: with it anyone can re-seal the whole log. Auditors run\n"
            "  `accessgate audit verify --key FILE LOG...`.\n"
        )


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """The auditors' key: the seed K_0 and the epoch schedule."""

    key_id: str
    t0: int
    interval: int
    seed: bytes = field(repr=False)

    def epoch_start(self, epoch: int) -> float:
        return float(self.t0 + epoch * self.interval)


def keygen(
    sealing_path: str | os.PathLike[str],
    verification_path: str | os.PathLike[str],
    *,
    interval: int = DEFAULT_INTERVAL,
    now: float | None = None,
) -> KeyInfo:
    """Make a key pair: the proxy's sealing key (epoch 0) and the auditors' verification key.

    Both files are created 0600 and never overwritten.
    """
    sealing_path, verification_path = Path(sealing_path), Path(verification_path)
    if type(interval) is not int or not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise SealingKeyError(
            f"epoch interval {interval!r}: give whole seconds from {MIN_INTERVAL} to {MAX_INTERVAL} "
            f"(the default, {DEFAULT_INTERVAL}, seals every 15 minutes)"
        )
    if sealing_path.resolve() == verification_path.resolve():
        raise SealingKeyError("the sealing key and the verification key need two different files")
    for path in (sealing_path, verification_path):
        if os.path.lexists(path):
            raise SealingKeyError(
                f"{path} exists; keygen never overwrites a key (the log sealed with it could no "
                "longer be verified). Choose another file, or move the old one away first."
            )
    raw = os.urandom(32)
    seed = bytearray(raw)
    _wipe(raw)
    t0 = int(time.time() if now is None else now)
    info = KeyInfo(key_id(seed), t0, interval, sealing_path, verification_path)
    head = {"key_id": info.key_id, "t0": t0, "interval": interval}
    try:
        _create_key_file(sealing_path, {"format": SEALING_FORMAT, **head, "epoch": 0}, seed, exclusive=True)
        try:
            _create_key_file(verification_path, {"format": VERIFICATION_FORMAT, **head}, seed, exclusive=True)
        except BaseException:
            sealing_path.unlink(missing_ok=True)
            raise
    finally:
        _wipe(seed)
    return info


def _render(fields: dict, secret_name: str, secret: bytearray) -> bytearray:
    """One line of JSON with the secret last, built in a buffer that can be wiped."""
    out = bytearray(json.dumps(fields, separators=(",", ":"))[:-1].encode())
    hexed = binascii.hexlify(secret)
    out += b',"%s":"' % secret_name.encode()
    out += hexed
    out += b'"}\n'
    _wipe(hexed)
    return out


def _create_key_file(path: Path, fields: dict, secret: bytearray, *, exclusive: bool) -> None:
    """Write a key file 0600: new (exclusive) or replacing the old one atomically."""
    body = _render(fields, _KEY_FIELD[fields["format"]], secret)
    target = path if exclusive else path.with_name(path.name + ".new")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        if not exclusive:
            target.unlink(missing_ok=True)  # left by a crash mid-write
        fd = os.open(target, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if not exclusive:
            os.replace(target, path)
        _fsync_dir(path.parent)
    except FileExistsError:
        raise SealingKeyError(f"{target} exists; keygen never overwrites a key") from None
    except OSError as exc:
        raise SealingKeyError(f"{target}: cannot write the key file ({exc.strerror})") from None
    finally:
        _wipe(body)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path, expected_format: str, what: str) -> tuple[dict, bytearray]:
    """(fields, secret) of a key file; refused unless it is a regular file only its owner can use."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SealingKeyError(f"{path}: no {what} there; make one with `accessgate audit keygen`") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SealingKeyError(
                f"{path} is a symbolic link; a {what} is only read from the file itself "
                "(a link could be pointed elsewhere): give the real path"
            ) from None
        raise SealingKeyError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SealingKeyError(f"{path} is not a regular file; give the {what} file itself")
        if st.st_mode & 0o077:
            raise SealingKeyError(
                f"{path}: other users can use the {what} (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run `chmod 600 {path}` and make sure only the user that needs it owns it"
            )
        buf = bytearray()
        while len(buf) <= _MAX_KEY_FILE and (chunk := os.read(fd, _MAX_KEY_FILE + 1)):
            buf += chunk
            _wipe(chunk)
    finally:
        os.close(fd)
    try:
        return _parse_key_file(buf, expected_format, path, what)
    finally:
        _wipe(buf)


def _parse_key_file(buf: bytearray, expected_format: str, path: Path, what: str) -> tuple[dict, bytearray]:
    name = _KEY_FIELD[expected_format].encode()
    found = re.search(rb'"%s":"([0-9a-f]{64})"' % name, buf) if len(buf) <= _MAX_KEY_FILE else None
    if found is None:
        other = [f for f in _KEY_FIELD if f != expected_format][0]
        kind = f"; it is a {_KIND[other]}" if b'"format":"%s"' % other.encode() in buf else ""
        raise SealingKeyError(f"{path} is not an accessgate {what} (made by `accessgate audit keygen`){kind}")
    start, end = found.span(1)
    secret = bytearray(32)
    for i in range(32):  # no immutable copy of the hex digits
        secret[i] = int(buf[start + 2 * i : start + 2 * i + 2], 16)
    buf[start:end] = b"0" * (end - start)
    try:
        fields = json.loads(bytes(buf))
    except ValueError:
        fields = None
    problem = _check_fields(fields, expected_format)
    if problem is None and _key_id_matches(fields, secret, expected_format):
        return fields, secret
    _wipe(secret)
    raise SealingKeyError(
        f"{path} is not a valid {what} ({problem or 'its key does not match its key_id'}); "
        "restore it from where it came, or make a new pair with `accessgate audit keygen`"
    )


def _check_fields(fields: object, expected_format: str) -> str | None:
    if not isinstance(fields, dict):
        return "not a JSON object"
    if fields.get("format") != expected_format:
        return f"format is not {expected_format}"
    ints = ("t0", "interval", "epoch") if expected_format == SEALING_FORMAT else ("t0", "interval")
    for name in ints:
        value = fields.get(name)
        if type(value) is not int or value < 0:
            return f"{name} is not a whole number"
    if not MIN_INTERVAL <= fields["interval"] <= MAX_INTERVAL:
        return "interval out of range"
    if not isinstance(fields.get("key_id"), str):
        return "no key_id"
    return None


def _key_id_matches(fields: dict, secret: bytearray, expected_format: str) -> bool:
    """The verification key's seed names itself; a sealing key's id is checked in resume()."""
    if expected_format == VERIFICATION_FORMAT:
        return hmac.compare_digest(key_id(secret), fields["key_id"])
    return True


def load_verification_key(path: str | os.PathLike[str]) -> VerificationKey:
    fields, seed = _read_key_file(Path(path), VERIFICATION_FORMAT, "verification key")
    key = VerificationKey(fields["key_id"], fields["t0"], fields["interval"], bytes(seed))
    _wipe(seed)
    return key


# -- the proxy's side -----------------------------------------------------------------------


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
        self._record_mac: _Keyed | None = None  # set by resume()
        self._control_mac: _Keyed | None = None
        self._epoch_suffix = b""
        self._next_epoch_at = math.inf  # tick() does nothing before resume()
        self._opened_at = -1  # the chain's seq when the open epoch began with no line in it

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Sealer:
        """Read the sealing key file (0600, made by `keygen`); SealingKeyError says what is wrong."""
        path = Path(path)
        fields, key = _read_key_file(path, SEALING_FORMAT, "sealing key")
        if fields["epoch"] == 0 and not hmac.compare_digest(key_id(key), fields["key_id"]):
            _wipe(key)
            raise SealingKeyError(f"{path} is not a valid sealing key (its key does not match its key_id)")
        return cls(path, fields, key)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def stored_epoch(self) -> int:
        """The epoch whose key the file holds: older keys than this one are gone from the disk."""
        return self._stored_epoch

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
                _evolve(probe)
            assert last_line is not None
            ours = _mac_ok(probe, last_line)
            if ours:
                self._key[:] = probe  # the log is ahead of the key file: a crash before commit()
                self._epoch = tail.epoch
            _wipe(probe)
        self._rekey()
        if ours:
            assert tail is not None
            if tail.closes_through is not None:
                self._advance(tail.closes_through + 1 - self._epoch)
                self._opened_at = seq
        elif self._epoch == 0:
            seq, prev = self._control(
                lines, SEALING_STARTED, seq, prev, now,
                {"t0": _iso(self.t0), "interval": self.interval},
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
        if line[-1:] != b"}" or line.startswith(_CONTROL_PREFIXES):
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
        _create_key_file(self.path, fields, self._key, exclusive=False)
        self._stored_epoch = self._epoch

    def close(self) -> None:
        """Erase the key from memory.  The open epoch is closed at the next start."""
        _wipe(self._key)
        self._record_mac = self._control_mac = None
        self._next_epoch_at = math.inf

    # -- inside ---------------------------------------------------------------------------

    def _catch_up(self, lines: list[bytes], seq: int, prev: str, now: float, note: str | None) -> tuple[int, str]:
        target = self.epoch_at(now)
        if target <= self._epoch:
            return seq, prev
        if seq != self._opened_at:  # the epoch has lines: close it with its own key
            start = self.t0 + self._epoch * self.interval
            closing = {"from": _iso(start), "until": _iso(start + self.interval)}
            if note:
                closing["note"] = note
            seq, prev = self._control(lines, SEALED, seq, prev, now, closing)
            self._advance(1)
        if target > self._epoch:
            start = self.t0 + self._epoch * self.interval
            seq, prev = self._control(
                lines, EPOCHS_SKIPPED, seq, prev, now,
                {"through": target - 1, "from": _iso(start), "until": _iso(self.t0 + target * self.interval),
                 "note": "no records were sealed in these epochs: the proxy was not running (or not writing)"},
            )  # fmt: skip
            self._advance(target - self._epoch)
        self._opened_at = seq
        return seq, prev

    def _advance(self, epochs: int) -> None:
        for _ in range(epochs):
            _evolve(self._key)
        self._epoch += epochs
        self._rekey()

    def _rekey(self) -> None:
        # The hash states hold the key's pads; OpenSSL cleanses them when freed.
        self._record_mac = _Keyed(self._key, _RECORD)
        self._control_mac = _Keyed(self._key, _CONTROL)
        self._epoch_suffix = b',"epoch":%d' % self._epoch
        self._next_epoch_at = float(self.t0 + (self._epoch + 1) * self.interval)

    def _control(self, lines: list[bytes], event: str, seq: int, prev: str, now: float, extra: dict) -> tuple[int, str]:
        rec = {"event": event, "ts": _iso(now), "key": self.key_id, **extra, "seq": seq + 1, "prev": prev}
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
    found = _SEALED_TAIL.search(line, max(0, len(line) - 200))
    if found is None:
        return None
    epoch = int(found.group(3))
    control = line.startswith(_CONTROL_PREFIXES)
    closes = None
    if line.startswith(_CONTROL_PREFIXES[1]):  # sealed
        closes = epoch
    elif line.startswith(_CONTROL_PREFIXES[2]):  # epochs_skipped
        through = _parse(line).get("through")
        closes = through if type(through) is int and through >= epoch else epoch
    return _Tail(int(found.group(1)), found.group(2).decode(), epoch, control, closes)


def _mac_ok(key: bytes | bytearray, line: bytes) -> bool:
    domain = _CONTROL if line.startswith(_CONTROL_PREFIXES) else _RECORD
    return _mac_matches(_Keyed(key, domain), line)


def _mac_matches(keyed: _Keyed, line: bytes) -> bool:
    return hmac.compare_digest(keyed.tag(memoryview(line)[:-_MAC_TAIL]), line[-_MAC_TAIL + 8 : -2])


def _parse(line: bytes) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


# -- the auditors' side -------------------------------------------------------------------


class LogLine(NamedTuple):
    file: str
    number: int  # 1-based line number in `file`
    data: bytes  # without the newline
    complete: bool  # it ended with a newline


def read_lines(paths: Iterable[Path]) -> Iterator[LogLine]:
    """Every line of `paths` (plain or gzip), oldest file first as given."""
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                complete = raw.endswith(b"\n")
                yield LogLine(str(path), number, raw[:-1] if complete else raw, complete)


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
        self._macs = (_Keyed(self._key, _RECORD), _Keyed(self._key, _CONTROL))

    def macs(self, epoch: int) -> tuple[_Keyed, _Keyed]:
        if epoch != self._epoch:
            if epoch < self._epoch:
                base = max(e for e in self._saved if e <= epoch)
                self._key, self._epoch = bytearray(self._saved[base]), base
            while self._epoch < epoch:
                _evolve(self._key)
                self._epoch += 1
                if self._epoch % _CHECKPOINT_EVERY == 0:
                    self._saved[self._epoch] = bytes(self._key)
            self._macs = (_Keyed(self._key, _RECORD), _Keyed(self._key, _CONTROL))
        return self._macs


class Chained(NamedTuple):
    seq: int
    prev: str
    epoch: int | None  # None: not sealed at all


def chain_fields(data: bytes) -> Chained | None:
    """(seq, prev, epoch or None) of a chained line; None for anything else."""
    found = _SEALED_TAIL.search(data, max(0, len(data) - 200))
    if found is not None:
        return Chained(int(found.group(1)), found.group(2).decode(), int(found.group(3)))
    rec = _parse(data)
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
                    if "ts" in _parse(line.data):
                        self.brk(line, None, "unchained", "a record without seq/prev inside the chain: it was inserted")
                    else:
                        torn = line
                continue
            seq, prev, epoch = found
            # The sealer's own records may come between a torn line and the
            # writer's log_resumed: a restart closes epochs before anything is sealed.
            if torn is not None and not line.data.startswith(_CONTROL_PREFIXES):
                rec = _parse(line.data)
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
        expected = (self.v.last_seq or 0) + 1
        if prev == prev_hash and seq == expected:
            return
        last = self.last_line
        assert last is not None
        before = f"{last.file}:{last.number}"
        if prev == prev_hash:
            self.brk(line, seq, "edited", f"seq expected {expected}, found {seq} although prev matches: seq was edited")
        elif prev == ZERO_HASH and seq == 1:
            self.brk(
                line, seq, "restarted",
                f"the chain starts again here (seq 1) after seq {expected - 1}: the log was started "
                "afresh, so whatever came between cannot be checked",
            )  # fmt: skip
        elif seq > expected:
            self.brk(
                line, seq, "missing",
                f"seq expected {expected}, found {seq}: {seq - expected} record(s) missing "
                f"(deleted, or moved elsewhere) after {before}",
            )  # fmt: skip
        elif seq < expected:
            self.brk(
                line, seq, "reordered",
                f"seq expected {expected}, found {seq}: the record repeats an earlier seq or is out of "
                f"order (inserted, duplicated or moved) after {before}",
            )  # fmt: skip
        elif not (self.v.breaks and (self.v.breaks[-1].file, self.v.breaks[-1].line) == (last.file, last.number)):
            # seq is right but the line before does not hash to prev: that line changed.
            self.brk(
                last, seq - 1, "edited",
                f"record seq {seq - 1} was changed after it was written: its hash no longer matches "
                f"prev of the next record ({line.file}:{line.number})",
            )  # fmt: skip

    def seal(self, line: LogLine, seq: int, epoch: int | None) -> None:
        control = line.data.startswith(_CONTROL_PREFIXES)
        if control:
            other = _parse(line.data).get("key")
            if isinstance(other, str) and other != self.key.key_id:
                self.other_keys.add(other)
        ok = False
        if epoch is not None and epoch <= self.future:
            record_mac, control_mac = self.ring.macs(epoch)
            ok = _mac_matches(control_mac if control else record_mac, line.data)
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
        if line.data.startswith(_CONTROL_PREFIXES[0]):  # sealing_started
            if self.before:
                self.v.notes.append(
                    f"{self.before} record(s) before sealing began (seq {seq}) are covered by the hash "
                    "that the first sealed record carries: they are as they were then"
                )
        elif self.before == 0:
            self.v.notes.append(
                f"sealing began before these files: the first record here (seq {seq}) is sealed in "
                f"epoch {epoch} (from {_iso(self.key.epoch_start(epoch))})"
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
            rec = _parse(line.data)
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
                f"{epoch} from {_iso(self.key.epoch_start(epoch))})"
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
                f"sealed through epoch {v.last_epoch} (until {_iso(self.key.epoch_start(v.last_epoch + 1))}); "
                f"the log ends at seq {v.last_seq}: records removed from the end show only against a witness"
            )
        else:
            v.notes.append(
                f"the newest records, from epoch {v.last_epoch} (began {_iso(self.key.epoch_start(v.last_epoch))}), "
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
