"""The audit log's writer: one JSON object per line, hash-chained, written off the hot path.

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
How a record becomes a line is `encoding`'s; the files are `files`'.

With a sealing key (`seal_key`), every line is also sealed with the key of
the current epoch, and each epoch is closed as it ends, from this thread
(`accessgate.audit.sealing.Sealer`); the key file moves on only after the
lines sealed with the old key are in the file.  `head` is the last record
written to the file, for a witness (`accessgate.audit.witness`).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from accessgate.audit.encoding import Encoder, format_ts
from accessgate.audit.files import Appender, Head, delete_rotated, resume_point
from accessgate.audit.schema import LOG_RESUMED, MAX_RECORD_BYTES, RECORDS_DROPPED, RETENTION_DELETED
from accessgate.oplog import get_logger

if TYPE_CHECKING:
    from accessgate.audit.sealing import Emitted, Sealer

DEFAULT_MAX_BACKLOG = 100_000
_WAKE_AT = 20_000  # queue length that wakes the writer before the interval ends
_RETRY_ON_CLOSE = 0.05  # seconds between attempts while close() drains
_ERROR_LOG_EVERY = 60.0  # seconds between operational-log lines while failing


class _Deferred(NamedTuple):
    """A queued record still to be made: `make(*args)` (see AuditWriter.defer)."""

    make: Callable[..., dict]
    args: tuple


_new_tuple = tuple.__new__  # a NamedTuple's own constructor is Python code; this runs per request


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
        seal_key: str | os.PathLike[str] | None = None,
    ) -> None:
        """Raises SealingKeyError when `seal_key` is given and is not a safe sealing key file."""
        self.path = Path(path)
        self._sealer: Sealer | None = None
        if seal_key:
            from accessgate.audit.sealing import Sealer

            self._sealer = Sealer.open(seal_key)
        self._interval = flush_interval
        self._on_error = on_error
        self._on_flush = on_flush
        self._max_backlog = max_backlog
        self._close_timeout = close_timeout
        self._log = get_logger("audit")

        # Shared with callers: deque.append/popleft are atomic, no lock needed.
        self._queue: deque[dict] = deque()
        # Writer-thread state only.
        self._file = Appender(self.path)  # and the lines waiting for it
        self._encoder = Encoder(
            pseudonymize_key, max_record_bytes, seal=self._sealer.seal if self._sealer is not None else None
        )
        self._resumed = False
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        self._unannounced_drops = 0
        self._first_drop_ts: float | None = None
        self._key_failing = False

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
        the writer makes the records in batches, off the event loop.  A `make`
        that raises loses that record, counted as dropped and reported, as a
        record that cannot be encoded is.
        """
        if self._closed:
            self._refused += 1
            return
        self._queue.append(_new_tuple(_Deferred, (make, args)))
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

    @property
    def head(self) -> Head | None:
        """The last record written to the file (seq, sha256 of its line); None before the first."""
        return self._file.head

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    def stats(self) -> AuditStats:
        return AuditStats(
            written=self._file.written,
            pending=len(self._queue) + self._file.records,
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
        deleted = delete_rotated(self.path, now_ts - days * 86400, self._report)
        if deleted:
            self.write({"event": RETENTION_DELETED, "ts": now_ts, "files": [p.name for p in deleted], "days": days})
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
            if not self._queue and not self._file.lines:
                break
            deadline = deadline or time.monotonic() + self._close_timeout
            if time.monotonic() >= deadline:
                self._give_up()
                break
            time.sleep(_RETRY_ON_CLOSE)
        self._file.close()
        if self._sealer is not None:
            self._sealer.close()  # erases the key; the open epoch is closed at the next start
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        # A write() racing with close() may have queued after the last pass.
        late = len(self._queue)
        if late:
            self._queue.clear()
            self._dropped += late

    def _cycle(self) -> None:
        file = self._file
        if self._reopen_wanted:
            self._reopen_wanted = False
            file.close()
        elif file.fd is not None and file.rotated():
            file.close()
        if file.fd is None:
            self._open()
        # Older records first, and room in the backlog before new ones come in.
        if file.fd is not None and file.lines and not self._write_waiting():
            self._chain_or_hold()
            return
        self._chain_or_hold()
        if file.fd is not None and file.lines:
            self._write_waiting()
        if self._sealer is not None and file.fd is not None and not file.lines:
            self._commit_key()

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
        try:
            self._file.open()
        except OSError as exc:
            self._failed(exc)
            return
        if not self._resumed:
            try:
                self._resume()
            except OSError as exc:
                self._file.close()
                self._failed(exc)

    def _resume(self) -> None:
        """Continue the chain where the log (or its newest rotation) ends."""
        point = resume_point(self.path)
        self._encoder.seq, self._encoder.prev = point.seq, point.prev
        self._file.head = point.head
        notes: list[str] = []
        if point.foreign:
            notes.append("the last complete line is not an accessgate record; a new chain starts")
        if point.torn:
            # Finish the torn line so that the next record starts a line of its own.
            self._file.push_bytes(b"\n")
            notes.append(
                f"the log ended in an incomplete line of {point.torn} bytes "
                "(a crash mid-write); it is left as it was and is not part of the chain"
            )
        if self._sealer is not None:
            # The sealer's records come first: they close the epochs that ended while the proxy was down.
            self._push_sealed(self._sealer.resume(point.line, point.seq, point.prev, time.time()))
        self._resumed = True
        if notes:
            self._queue.appendleft(
                {"event": LOG_RESUMED, "ts": time.time(), "truncated_bytes": point.torn, "note": "; ".join(notes)}
            )

    def _chain_queue(self) -> None:
        file, queue, encoder = self._file, self._queue, self._encoder
        encode = encoder.encode
        if self._sealer is not None:
            # Epochs end whether records come or not; their closing records are never dropped.
            self._push_sealed(self._sealer.tick(time.time(), encoder.seq, encoder.prev))
        room = self._max_backlog - len(file.lines)
        if self._unannounced_drops and room > 0:
            file.push(encode(self._drop_notice()), encoder.seq, encoder.prev)
            room -= 1
        while queue:
            rec = queue.popleft()
            if room <= 0:
                self._drop(1)
                continue
            try:
                if type(rec) is _Deferred:
                    rec = rec.make(*rec.args)
                line = encode(rec)
            except Exception as exc:
                self._drop(1)
                self._report(exc)
                continue
            file.push(line, encoder.seq, encoder.prev)
            room -= 1

    def _push_sealed(self, out: Emitted) -> None:
        """The sealer's own records, already chained and sealed; the chain goes on after them."""
        seq = self._encoder.seq
        for line in out.lines:
            seq += 1
            self._file.push(line + b"\n", seq, hashlib.sha256(line).hexdigest())
        self._encoder.seq, self._encoder.prev = out.seq, out.prev

    def _commit_key(self) -> None:
        """Move the key file on to the current epoch, now that what the old key sealed is written."""
        from accessgate.audit.sealing import SealingKeyError

        assert self._sealer is not None
        try:
            self._sealer.commit()
        except SealingKeyError as exc:
            self._report(exc)
            if not self._key_failing:
                self._oplog(
                    "error", "audit_seal_key_not_replaced", path=str(self._sealer.path), error=str(exc),
                    hint="the sealing key file keeps an older epoch's key until it can be replaced (retried "
                    "every second); make its directory writable",
                )  # fmt: skip
            self._key_failing = True
            return
        if self._key_failing:
            self._oplog("info", "audit_seal_key_replaced", path=str(self._sealer.path))
            self._key_failing = False
    def _write_waiting(self) -> bool:
        try:
            self._file.write()
        except OSError as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    def _drop(self, count: int) -> None:
        self._dropped += count
        self._unannounced_drops += count
        if self._first_drop_ts is None:
            self._first_drop_ts = time.time()

    def _drop_notice(self) -> dict:
        notice = {
            "event": RECORDS_DROPPED,
            "ts": time.time(),
            "count": self._unannounced_drops,
            "since": format_ts(self._first_drop_ts),
            "note": "records were lost while the audit log could not be written",
        }
        self._unannounced_drops = 0
        self._first_drop_ts = None
        return notice

    def _give_up(self) -> None:
        lost = len(self._queue) + self._file.clear()
        self._queue.clear()
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
                written=self._file.written,
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


def _epoch(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return (now if now.tzinfo else now.replace(tzinfo=timezone.utc)).timestamp()
    return float(now)
