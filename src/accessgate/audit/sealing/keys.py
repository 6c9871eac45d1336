"""Sealing keys: making a pair, their files, evolving a key, and HMAC under it.

The proxy's sealing key file holds only the current epoch's key; the
auditors' verification key holds the seed K_0 and the epoch schedule.
Key material lives in bytearrays that are wiped after use, and never
appears in an error message.
"""

from __future__ import annotations

import binascii
import ctypes
import errno
import hashlib
import hmac
import json
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from accessgate.audit.encoding import format_ts
from accessgate.errors import AuditLogError

SEALING_FORMAT = "accessgate-sealing-key/1"
VERIFICATION_FORMAT = "accessgate-verification-key/1"
DEFAULT_INTERVAL = 900  # seconds: 96 sealed epochs a day
MIN_INTERVAL = 1  # below a minute only makes sense in tests
MAX_INTERVAL = 86400
MAC_BYTES = 16

_EVOLVE = b"accessgate seal evolve"
_KEY_ID = b"accessgate seal key id"
_KEY_FIELD = {SEALING_FORMAT: "key", VERIFICATION_FORMAT: "seed"}
_KIND = {SEALING_FORMAT: "sealing key", VERIFICATION_FORMAT: "verification key"}
_MAX_KEY_FILE = 4096


class SealingKeyError(AuditLogError):
    """A sealing or verification key file is missing, unsafe or not a key file.

    Messages name the file and what to do; they never contain key material.
    """


# CPython keeps a bytes object's data at a fixed offset; wiping it in place
# is the only way to erase the immutable copies hashlib hands back.
_BYTES_DATA = bytes.__basicsize__ - 1 if sys.implementation.name == "cpython" else None


def wipe(data: bytes | bytearray) -> None:
    """Overwrite a key copy with zeros, as far as the interpreter lets us."""
    if type(data) is bytearray:
        data[:] = bytes(len(data))
    elif type(data) is bytes and len(data) > 1 and _BYTES_DATA is not None:
        ctypes.memset(id(data) + _BYTES_DATA, 0, len(data))


def evolve(key: bytearray) -> None:
    """K_{E+1} from K_E, in place."""
    new = hmac.digest(key, _EVOLVE, "sha256")
    key[:] = new
    wipe(new)


class Keyed:
    """HMAC-SHA256 under one key and domain, with the key's pads hashed once.

    Copying two prepared SHA-256 states is cheaper than copying an hmac
    object; the result is the same HMAC (RFC 2104).
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
        wipe(pad)

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
            f"key {self.key_id}: epochs of {self.interval} s from {format_ts(self.t0)}\n"
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
    wipe(raw)
    t0 = int(time.time() if now is None else now)
    info = KeyInfo(key_id(seed), t0, interval, sealing_path, verification_path)
    head = {"key_id": info.key_id, "t0": t0, "interval": interval}
    try:
        create_key_file(sealing_path, {"format": SEALING_FORMAT, **head, "epoch": 0}, seed, exclusive=True)
        try:
            create_key_file(verification_path, {"format": VERIFICATION_FORMAT, **head}, seed, exclusive=True)
        except BaseException:
            sealing_path.unlink(missing_ok=True)
            raise
    finally:
        wipe(seed)
    return info


def _render(fields: dict, secret_name: str, secret: bytearray) -> bytearray:
    """One line of JSON with the secret last, built in a buffer that can be wiped."""
    out = bytearray(json.dumps(fields, separators=(",", ":"))[:-1].encode())
    hexed = binascii.hexlify(secret)
    out += b',"%s":"' % secret_name.encode()
    out += hexed
    out += b'"}\n'
    wipe(hexed)
    return out


def create_key_file(path: Path, fields: dict, secret: bytearray, *, exclusive: bool) -> None:
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
        wipe(body)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path, expected_format: str, what: str) -> tuple[dict, bytearray]:
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
            wipe(chunk)
    finally:
        os.close(fd)
    try:
        return _parse_key_file(buf, expected_format, path, what)
    finally:
        wipe(buf)


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
    wipe(secret)
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
    fields, seed = read_key_file(Path(path), VERIFICATION_FORMAT, "verification key")
    key = VerificationKey(fields["key_id"], fields["t0"], fields["interval"], bytes(seed))
    wipe(seed)
    return key
