"""The audit log: one JSON object per line, hash-chained, written off the hot path.

`AuditWriter.write()` only appends the record to a queue; a background thread
formats, chains and writes at least every `flush_interval` seconds.  That
keeps disk latency (and a full disk) away from mitmproxy's event loop, at the
price the contract allows: a crash loses at most one interval of records.

Each line carries `seq` (+1 per record, across rotations and restarts) and
`prev` (sha256 of the previous line's exact bytes), so that a deleted,
inserted or edited line shows as a break in the chain.  When the file cannot
be written, records wait in a bounded backlog and are retried every flush;
records beyond the bound are dropped, counted, and announced by a
`records_dropped` record once writing works again, so a gap is never silent.

Every line is valid UTF-8 JSON that every reader (the auditors' DuckDB
tools, jq, log shippers) reads the same: text that was not UTF-8 (lone
surrogates from mitmproxy's surrogateescape decoding) is written as visible
escapes and its field named in `escaped`, and no line is longer than
`MAX_RECORD_BYTES`: a larger record is written shortened, its cut fields
named in `truncated` (docs/audit-log.md).
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import json
import math
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime, timezone
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Callable, NamedTuple

import orjson

from accessgate.audit.pseudonym import pseudonymize
from accessgate.audit.schema import ACCESS_ORDER, CHAIN_KEYS, MAX_RECORD_BYTES, ZERO_HASH, is_rotation_of
from accessgate.oplog import get_logger

_ORDER_AFTER_EVENT = ACCESS_ORDER[1:]
# Key sequences already in that order: an access record, with and without `error`.
_IN_ORDER = frozenset({ACCESS_ORDER, ACCESS_ORDER[:-1]})
_CHAIN_KEYS = frozenset(CHAIN_KEYS)

DEFAULT_MAX_BACKLOG = 100_000
_WAKE_AT = 20_000  # queue length that wakes the writer before the interval ends
_WRITE_CHUNK = 1 << 20  # bytes per os.write()
_RETRY_ON_CLOSE = 0.05  # seconds between attempts while close() drains
_ERROR_LOG_EVERY = 60.0  # seconds between operational-log lines while failing


class _Deferred(NamedTuple):
    """A queued record still to be made: `make(*args)` (see AuditWriter.defer)."""

    make: Callable[..., dict]
    args: tuple


_new_deferred = tuple.__new__  # a NamedTuple's own constructor is Python code; this runs per request


@dataclass(frozen=True, slots=True)
class AuditStats:
    written: int  # records in the file
    pending: int  # records queued or waiting for the file to be writable
    dropped: int  # records lost: backlog full, unserializable, or unwritable at close
    errors: int  # failed write attempts (one per flush that failed)


class AuditWriter:
    """Writes audit records to `path`; see the module docstring.  Never raises into callers."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 1.0,
        pseudonymize_key: bytes | None = None,
        on_error: Callable[[Exception], None] | None = None,
        on_flush: Callable[[AuditStats], None] | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        close_timeout: float = 5.0,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.path = Path(path)
        self._interval = flush_interval
        self._key = pseudonymize_key
        self._on_error = on_error
        self._on_flush = on_flush
        self._max_backlog = max_backlog
        self._close_timeout = close_timeout
        self._max_record = max_record_bytes
        self._log = get_logger("audit")

        # Shared with callers: deque.append/popleft are atomic, no lock needed.
        self._queue: deque[dict] = deque()
        # Writer-thread state only.
        self._backlog: deque[tuple[bytes, bool]] = deque()  # (bytes, is_record)
        self._head_done = 0  # bytes of _backlog[0] already in the file
        self._backlog_records = 0  # records in _backlog, readable from any thread
        self._seq = 0
        self._prev = ZERO_HASH
        self._resumed = False
        self._fd: int | None = None
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        self._unannounced_drops = 0
        self._first_drop_ts: float | None = None

        self._written = 0
        self._dropped = 0  # by the writer thread
        self._refused = 0  # by write(): the callers' thread, so a counter of its own
        self._errors = 0

        self._cond = threading.Condition()
        self._wake = False
        self._reopen_wanted = False
        self._closing = False
        self._closed = False
        self._requested = 0  # flush generations asked for ...
        self._completed = 0  # ... and done
        self._thread = threading.Thread(
            target=self._run, name=f"accessgate-audit:{self.path.name}", daemon=True
        )
        self._thread.start()
        # A daemon thread dies with the interpreter; atexit drains it first.
        atexit.register(self.close)

    # -- caller side: cheap, never blocks on disk, never raises ---------------

    def write(self, record: dict) -> None:
        """Queue `record` (a mapping of §5 fields plus `event`) for writing."""
        if self._closed:
            self._refused += 1
            return
        try:
            rec = dict(record)
        except Exception:  # not a mapping: nothing sensible to write
            self._refused += 1
            return
        if "ts" not in rec:
            rec["ts"] = time.time()
        self._queue.append(rec)
        if len(self._queue) == _WAKE_AT:
            self._poke()

    def defer(self, make: Callable[..., dict], *args: object) -> None:
        """Queue the record that `make(*args)` returns, made in the writer thread.

        For the proxy's record per request: the request's thread queues only
        what the record is made of (`args`, which must not change after), and
        the writer makes the records in batches.  Measured in a busy proxy,
        building the dict between two requests cost several times what it
        costs in a batch.  A `make` that raises loses that record, counted
        as dropped and reported, as a record that cannot be encoded is.
        """
        if self._closed:
            self._refused += 1
            return
        self._queue.append(_new_deferred(_Deferred, (make, args)))
        if len(self._queue) == _WAKE_AT:
            self._poke()

    def reopen(self) -> None:
        """Close and reopen the file at `path` (for SIGHUP after logrotate)."""
        with self._cond:
            self._reopen_wanted = True
            self._wake = True
            self._cond.notify_all()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Write what is queued now; wait for it.  True when nothing is pending after."""
        with self._cond:
            if self._closed:
                return self.stats().pending == 0
            self._requested += 1
            target = self._requested
            self._wake = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._completed >= target or self._closed, timeout)
        return self.stats().pending == 0

    def close(self) -> None:
        """Drain everything to the file and stop the writer thread.

        While the file cannot be written, retries for `close_timeout` seconds,
        then counts what is left as dropped and reports it.
        """
        with self._cond:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
                self._wake = True
                self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(self._close_timeout + 10.0)
        if not already:
            atexit.unregister(self.close)

    def stats(self) -> AuditStats:
        return AuditStats(
            written=self._written,
            pending=len(self._queue) + self._backlog_records,
            dropped=self._dropped + self._refused,
            errors=self._errors,
        )

    def prune_rotated(self, days: int, now: datetime | float | None = None) -> list[Path]:
        """Delete rotated siblings of the log older than `days` (by mtime).

        Writes a `retention_deleted` record naming what went.  Returns the
        deleted paths.  Files that cannot be deleted are reported to
        `on_error` and left.
        """
        now_ts = _epoch(now)
        cutoff = now_ts - days * 86400
        deleted: list[Path] = []
        for sibling in rotated_siblings(self.path):
            try:
                if sibling.stat().st_mtime < cutoff:
                    sibling.unlink()
                    deleted.append(sibling)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._report(exc)
        if deleted:
            self.write(
                {
                    "event": "retention_deleted",
                    "ts": now_ts,
                    "files": [p.name for p in deleted],
                    "days": days,
                }
            )
        return deleted

    # -- writer thread ----------------------------------------------------------

    def _poke(self) -> None:
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def _run(self) -> None:
        deadline: float | None = None
        while True:
            with self._cond:
                if not (self._wake or self._closing):
                    self._cond.wait(self._interval)
                self._wake = False
                generation = self._requested
                closing = self._closing
            try:
                self._cycle()
            except Exception as exc:  # a bug must not end the writer
                self._report(exc)
            with self._cond:
                self._completed = generation
                self._cond.notify_all()
            if self._on_flush is not None:
                try:
                    self._on_flush(self.stats())
                except Exception:
                    pass
            if not closing:
                continue
            if not self._queue and not self._backlog:
                break
            deadline = deadline or time.monotonic() + self._close_timeout
            if time.monotonic() >= deadline:
                self._give_up()
                break
            time.sleep(_RETRY_ON_CLOSE)
        self._close_fd()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        # A write() racing with close() may have queued after the last pass.
        late = len(self._queue)
        if late:
            self._queue.clear()
            self._dropped += late

    def _cycle(self) -> None:
        if self._reopen_wanted:
            self._reopen_wanted = False
            self._close_fd()
        elif self._fd is not None and self._rotated():
            self._close_fd()
        if self._fd is None:
            self._open()
        # Older records first, and room in the backlog before new ones come in.
        if self._fd is not None and self._backlog and not self._write_backlog():
            self._chain_or_hold()
            return
        self._chain_or_hold()
        if self._fd is not None and self._backlog:
            self._write_backlog()

    def _chain_or_hold(self) -> None:
        if self._resumed:
            self._chain_queue()
        else:
            # Records cannot be chained before the old tail is known; keep
            # them unformatted, within the same bound.
            while len(self._queue) > self._max_backlog:
                self._queue.popleft()
                self._drop(1)

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.path, flags, 0o640)
            except FileNotFoundError:
                # Create missing directories only when missing, so that other
                # errors (a file in the way: ENOTDIR) reach the log as they are.
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, flags, 0o640)
        except OSError as exc:
            self._failed(exc)
            return
        self._fd = fd
        if not self._resumed:
            try:
                self._resume()
            except OSError as exc:
                self._close_fd()
                self._failed(exc)

    def _resume(self) -> None:
        """Continue seq/prev from the file's last complete line (or its newest rotation)."""
        tail = read_last_line(self.path)
        if tail.line is None and not tail.fragment:
            self._link_to_rotated()
            self._resumed = True
            return
        notes: list[str] = []
        if tail.line is not None:
            self._prev = hashlib.sha256(tail.line).hexdigest()
            try:
                seq = json.loads(tail.line)["seq"]
                if not isinstance(seq, int):
                    raise TypeError
                self._seq = seq
            except (ValueError, KeyError, TypeError):
                self._seq, self._prev = 0, ZERO_HASH
                notes.append(
                    "the last complete line is not an accessgate record; a new chain starts"
                )
        if tail.fragment:
            # Finish the torn line so that the next record starts a line of its own.
            self._backlog.append((b"\n", False))
            notes.append(
                f"the log ended in an incomplete line of {len(tail.fragment)} bytes "
                "(a crash mid-write); it is left as it was and is not part of the chain"
            )
        self._resumed = True
        if notes:
            self._queue.appendleft(
                {
                    "event": "log_resumed",
                    "ts": time.time(),
                    "truncated_bytes": len(tail.fragment),
                    "note": "; ".join(notes),
                }
            )

    def _link_to_rotated(self) -> None:
        """An empty log continues the chain of its newest rotation, if that is ours."""
        for sibling in sorted(rotated_siblings(self.path), key=_mtime, reverse=True):
            try:
                line = read_last_line(sibling).line
                seq = json.loads(line)["seq"] if line is not None else None
            except (OSError, EOFError, ValueError, KeyError, TypeError):
                continue
            if isinstance(seq, int) and line is not None:
                self._seq, self._prev = seq, hashlib.sha256(line).hexdigest()
                return

    def _chain_queue(self) -> None:
        room = self._max_backlog - len(self._backlog)
        if self._unannounced_drops and room > 0:
            self._push(self._encode(self._drop_notice()))
            room -= 1
        while self._queue:
            rec = self._queue.popleft()
            if room <= 0:
                self._drop(1)
                continue
            try:
                if type(rec) is _Deferred:
                    rec = rec.make(*rec.args)
                line = self._encode(rec)
            except Exception as exc:
                self._drop(1)
                self._report(exc)
                continue
            self._push(line)
            room -= 1

    def _push(self, line: bytes) -> None:
        self._backlog.append((line, True))
        self._backlog_records += 1

    def _encode(self, rec: dict) -> bytes:
        keys = tuple(rec)
        if keys in _IN_ORDER and rec["event"]:
            out = rec  # the proxy's own records come in order; `rec` is write()'s copy or defer()'s own
        else:
            out = {"event": rec.get("event") or "access"}
            out |= {key: rec[key] for key in _ORDER_AFTER_EVENT if key in rec}
            if len(out) != len(rec) + ("event" not in rec):  # fields the order does not name
                for key, value in rec.items():
                    if key not in out and key not in _CHAIN_KEYS:
                        out[key] = value
        given = out.get("ts")
        out["ts"] = ts = _time_text(given)
        if ts is None:  # not a time: the tools could not place the record
            out["ts"] = format_ts(None)
            out["ts_given"] = _cut(_plain(given, False), 200)[0]
        if self._key is not None and isinstance(out.get("user"), str):
            out["user"] = _pseudonym(self._key, out["user"])
        out["seq"] = self._seq + 1
        out["prev"] = self._prev
        try:
            line = orjson.dumps(out, default=_json_default, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:  # lone surrogates, or what only the json module writes
            out = _readable(out)
            line = _dumps(out)
        if len(line) > self._max_record:
            line = _shortened(out, len(line), self._max_record)
        self._seq += 1
        self._prev = hashlib.sha256(line).hexdigest()
        return line + b"\n"

    def _write_backlog(self) -> bool:
        assert self._fd is not None
        while self._backlog:
            parts: list[bytes] = []
            size = 0
            for i, (data, _) in enumerate(self._backlog):
                if i == 0 and self._head_done:
                    data = data[self._head_done :]
                parts.append(data)
                size += len(data)
                if size >= _WRITE_CHUNK:
                    break
            try:
                done = os.write(self._fd, b"".join(parts))
            except OSError as exc:
                self._failed(exc)
                return False
            self._advance(done)
        self._recovered()
        return True

    def _advance(self, done: int) -> None:
        """Pop what `done` bytes completed; remember how far into the next item we got."""
        done += self._head_done
        self._head_done = 0
        while self._backlog and done >= len(self._backlog[0][0]):
            data, is_record = self._backlog.popleft()
            done -= len(data)
            if is_record:
                self._backlog_records -= 1
                self._written += 1
        self._head_done = done if self._backlog else 0

    def _rotated(self) -> bool:
        assert self._fd is not None
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        mine = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino)

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
            # A line cut short in the old file is written whole in the new one.
            self._head_done = 0

    def _drop(self, count: int) -> None:
        self._dropped += count
        self._unannounced_drops += count
        if self._first_drop_ts is None:
            self._first_drop_ts = time.time()

    def _drop_notice(self) -> dict:
        notice = {
            "event": "records_dropped",
            "ts": time.time(),
            "count": self._unannounced_drops,
            "since": format_ts(self._first_drop_ts),
            "note": "records were lost while the audit log could not be written",
        }
        self._unannounced_drops = 0
        self._first_drop_ts = None
        return notice

    def _give_up(self) -> None:
        lost = len(self._queue) + self._backlog_records
        self._queue.clear()
        self._backlog.clear()
        self._backlog_records = 0
        self._dropped += lost
        self._oplog(
            "error",
            "audit_records_lost_at_close",
            path=str(self.path),
            records=lost,
            hint="the audit log could not be written while stopping; check the disk and permissions",
        )

    def _failed(self, exc: Exception) -> None:
        self._report(exc)
        now = time.monotonic()
        if self._failing_since is None or now - self._last_error_log >= _ERROR_LOG_EVERY:
            self._oplog(
                "error",
                "audit_write_failed",
                path=str(self.path),
                error=str(exc),
                pending=self.stats().pending,
                hint="records are kept in memory and retried every flush; "
                "make the log directory writable or free disk space",
            )
            self._last_error_log = now
        if self._failing_since is None:
            self._failing_since = now

    def _recovered(self) -> None:
        if self._failing_since is not None:
            self._oplog(
                "info",
                "audit_write_recovered",
                path=str(self.path),
                failed_for_seconds=round(time.monotonic() - self._failing_since, 3),
                written=self._written,
                dropped=self._dropped,
            )
            self._failing_since = None

    def _oplog(self, level: str, event: str, **fields: object) -> None:
        # The writer thread must survive a closed stderr (interpreter exit).
        try:
            getattr(self._log, level)(event, **fields)
        except Exception:
            pass

    def _report(self, exc: Exception) -> None:
        self._errors += 1
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                pass


# -- formatting -------------------------------------------------------------------


def format_ts(value: object) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`: 2026-11-22T21:05:33.123Z.

    Accepts aware datetimes (naive ones are taken as UTC), epoch seconds, and
    RFC 3339 / ISO 8601 strings; a string that is none of these stays as given.
    """
    text = _time_text(value)
    if text is None:
        return value if isinstance(value, str) else str(value)
    return text


def _time_text(value: object) -> str | None:
    """format_ts's text, or None when `value` is no time (None: now)."""
    if type(value) is datetime and value.tzinfo is timezone.utc:  # the proxy's own
        if value.microsecond and value.year >= 1000:
            # orjson writes it five times faster than isoformat(timespec=...);
            # the slice keeps milliseconds, truncated as isoformat does.  It
            # leaves out a zero fraction, hence the test.
            return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:24].decode() + "Z"
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"
    if value is None:
        value = time.time()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, ValueError, OSError):
            return None
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    elif value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    # isoformat() is several times faster than strftime(); "+00:00" -> "Z".
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"


def _json_default(obj: object) -> object:
    if isinstance(obj, datetime):
        return format_ts(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (IPv4Address, IPv6Address, Path)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, bytes):  # bytes that are not UTF-8 are escaped as in text
        return obj.decode("utf-8", "surrogateescape")
    return str(obj)


# orjson writes a record in a tenth of the json module's time (11 us here,
# a tenth of accessgate's CPU per request), the same compact JSON; datetimes
# and dataclasses go through _json_default as with the json module.  It
# refuses lone surrogates (see _readable) and integers beyond 64 bits; the
# json module writes those integers.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

# Built once: json.dumps() with options builds a new encoder on every call.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def _dumps(value: object) -> bytes:
    """Compact JSON of a value _readable() made: orjson, else the json module (big integers)."""
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _JSON_ENCODER.encode(value).encode("utf-8")


# -- text that was not UTF-8, and records over the size bound ---------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_TO_ESCAPE = re.compile(r"[\\" + "\ud800-\udfff]")  # a backslash, or a lone surrogate


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x5C:  # a backslash
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _escape(text: str) -> str:
    return _TO_ESCAPE.sub(_escape_char, text)


def _plain(value: object, escape: bool) -> object:
    """`value` as JSON types: text (escaped if `escape`), lists, objects with text keys,
    numbers (NaN and infinities as null, as orjson writes them), true, false, null."""
    if isinstance(value, str):
        return _escape(value) if escape else value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_plain(k if isinstance(k, str) else str(k), escape): _plain(v, escape) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, escape) for v in value]
    return _plain(_json_default(value), escape)


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(map(_has_surrogate, value))
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def _readable(rec: dict) -> dict:
    """`rec` as valid UTF-8 JSON means it: lone surrogates (bytes that were not UTF-8)
    become visible escapes.

    In a field named in `escaped`, every text reads as Python's backslashreplace
    would show the bytes: a byte that is not UTF-8 as `\\xNN`, any other lone
    surrogate as `\\uNNNN`, and a backslash as two, so that no text is ambiguous.
    """
    out: dict = {}
    escaped: list[str] = []
    for key, value in rec.items():
        if key in _CHAIN_KEYS:
            continue
        plain = _plain(value, False)
        if _has_surrogate(key) or _has_surrogate(plain):
            key = _escape(key)
            plain = _plain(value, True)
            escaped.append(key)
        out[key] = plain
    if escaped:
        out["escaped"] = escaped
    out["seq"] = rec["seq"]
    out["prev"] = rec["prev"]
    return out


def _pseudonym(key: bytes, user: str) -> str:
    try:
        return pseudonymize(key, user)
    except UnicodeEncodeError:  # a name with bytes that were not UTF-8
        return pseudonymize(key, _escape(user))


def _cut(value: object, room: int) -> tuple[object, int]:
    """`value` (JSON types) shortened to about `room` bytes of JSON, and its length before:
    a list keeps its first items (items), a text its beginning (characters); anything
    else becomes the beginning of its JSON text (characters)."""
    if isinstance(value, list):
        kept: list = []
        used = 2
        for item in value:
            size = len(_dumps(item)) + 1
            if used + size > room:
                if isinstance(item, str) and room - used > 16:
                    kept.append(_cut(item, room - used - 1)[0])
                break
            kept.append(item)
            used += size
        return kept, len(value)
    text = value if isinstance(value, str) else _dumps(value).decode("utf-8")
    n = min(len(text), max(room - 2, 0))
    while n > 0:
        size = len(_dumps(text[:n]))
        if size <= room:
            break
        n = min(n - 1, n * room // size)
    return text[: max(n, 0)], len(text)


_MARK_ROOM = 512  # bytes kept free for `truncated` and the chain fields


def _shortened(rec: dict, size: int, limit: int) -> bytes:
    """The line of `rec` cut to at most `limit` bytes, the largest fields first.

    `truncated` maps each shortened field to its length before (see _cut).  If
    that is not enough (a record of countless small fields), only `event` and
    `ts` stay, and `truncated` says {"record": its size in bytes}.
    """
    body = {k: _plain(v, False) for k, v in rec.items() if k not in _CHAIN_KEYS}
    sizes = {k: len(_dumps(v)) for k, v in body.items()}
    over = size - limit + _MARK_ROOM + 32 * len(body)
    truncated: dict[str, int] = {}
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if over <= 0 or sizes[key] < 64:
            break
        if key in ("event", "ts"):
            continue
        body[key], truncated[key] = _cut(body[key], max(sizes[key] - over, 0))
        over -= sizes[key] - len(_dumps(body[key]))
    body["truncated"] = truncated
    body["seq"], body["prev"] = rec["seq"], rec["prev"]
    line = _dumps(body)
    if len(line) <= limit:
        return line
    event = rec.get("event")
    minimal = {
        "event": _cut(event, 64)[0] if isinstance(event, str) else "access",
        "ts": rec["ts"],
        "truncated": {"record": size},
        "seq": rec["seq"],
        "prev": rec["prev"],
    }
    return _dumps(minimal)


def _epoch(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return (now if now.tzinfo else now.replace(tzinfo=timezone.utc)).timestamp()
    return float(now)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# -- reading back -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tail:
    line: bytes | None  # last complete line, without its newline
    fragment: bytes  # bytes after the last newline (a torn write), usually empty


def read_last_line(path: Path) -> _Tail:
    """The last complete line of a log file (plain or gzip), read from the end."""
    if path.suffix == ".gz":
        last = None
        fragment = b""
        with gzip.open(path, "rb") as fh:
            for raw in fh:
                if raw.endswith(b"\n"):
                    last = raw[:-1]
                else:
                    fragment = raw
        return _Tail(last, fragment)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return _Tail(None, b"")
    with fh:
        size = os.fstat(fh.fileno()).st_size
        block = 65536
        while True:
            start = max(0, size - block)
            fh.seek(start)
            data = fh.read(size - start)
            cut = data.rfind(b"\n")
            if cut < 0 and start > 0:
                block *= 4
                continue
            fragment = data[cut + 1 :]
            body = data[:cut] if cut >= 0 else b""
            prev_nl = body.rfind(b"\n")
            if cut >= 0 and prev_nl < 0 and start > 0:
                block *= 4  # the last line starts before what we read
                continue
            line = body[prev_nl + 1 :] if cut >= 0 else None
            return _Tail(line, fragment)


def rotated_siblings(path: Path) -> list[Path]:
    """Files next to `path` that logrotate made from it (PATH.1, PATH.2.gz, PATH-20261122...)."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if is_rotation_of(p.name, path.name) and p.is_file())
