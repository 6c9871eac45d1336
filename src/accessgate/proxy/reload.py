"""Watch the policy files and run every reload, one at a time, in one task.

Polling, not inotify: it works on every filesystem (NFS, bind mounts,
ConfigMap symlink swaps), costs a few `stat` calls per interval, and a
half-second poll keeps a change well inside the contract's two seconds.

What makes the live policy the newest one on disk:

- One task runs every reload, file changes and SIGHUP alike (`request()`
  only wakes it), so no older load can finish after a newer one.
- The watcher compares the files with their state *as the last load read
  them* (the loader stamps each file before reading it), never with a
  state taken after the load: a change made while a load runs is seen at
  the next poll and loaded in turn.
- A file is read only once it has settled: its ctime (which every write,
  truncate or rename sets and no one can set back) at least `settle`
  seconds in the past.  A load is kept only if every file it read was
  settled when read and is unchanged after.  A write after the read then
  always changes the stamp, even one within the same clock tick and of the
  same size.
- The reload callback reports whether its attempt counted (installed,
  unchanged or rejected) or must be retried (files still being written, or
  the policy option changed meanwhile); a retry leaves the known state
  alone, so the next poll tries again.

A writer that pauses longer than `settle` at a line break leaves a file
that is a valid policy by itself; no reader can tell.  docs/running.md
tells operators to replace the file by renaming a finished one over it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Awaitable, Callable, Iterable

from accessgate.policy.sources import FileStamp, file_stamp

Fingerprint = tuple[tuple[str, FileStamp | None], ...]

DEFAULT_INTERVAL = 0.5  # seconds between polls
DEFAULT_SETTLE = 0.5  # seconds a file must be left alone before it is read
# A ctime this far ahead of the clock (skew, a clock stepped back) says
# nothing about age; such a file counts as settled rather than never.
_FUTURE_NS = 1_000_000_000


def fingerprint(paths: Iterable[str | os.PathLike[str]]) -> Fingerprint:
    """(path, stamp) per file, in order, each once; None for a file that is missing."""
    return tuple((path, file_stamp(path)) for path in dict.fromkeys(os.fspath(p) for p in paths))


def settled(files: Fingerprint, at_ns: int, settle: float = DEFAULT_SETTLE) -> bool:
    """Whether every file was left alone for `settle` seconds before `at_ns` (wall clock)."""
    limit = at_ns - int(settle * 1e9)
    for _, stamp in files:
        if stamp is None:
            continue
        ctime = stamp[1]
        if limit < ctime <= at_ns + _FUTURE_NS:
            return False
    return True


Reload = Callable[[], Awaitable["Fingerprint | None"]]


class PolicyWatch:
    """Runs `reload()` when the files it last read change, or when asked.

    `reload` returns the files as its load read them (a conclusive attempt:
    the watcher then watches exactly those), or None when the attempt must
    be repeated.  `main` names the policy option's file, which is always
    watched, even before a load has read anything.
    """

    def __init__(
        self,
        main: Callable[[], str],
        reload: Reload,
        seen: Fingerprint = (),
        interval: float = DEFAULT_INTERVAL,
        settle: float = DEFAULT_SETTLE,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._main = main
        self._reload = reload
        self._interval = interval
        self._settle = settle
        self._on_crash = on_crash
        self._seen: Fingerprint = ()
        self._pending = False  # a reload was asked for (SIGHUP) and has not run yet
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.rebase(seen)

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="accessgate policy watch")

    def rebase(self, seen: Fingerprint, read_at_ns: int | None = None) -> None:
        """Take `seen` (files as a load outside the watcher read them) as the known state.

        If they were read before they settled, one more load is asked for
        once they have, so that a same-tick rewrite cannot hide behind them.
        """
        self._seen = tuple(seen)
        if read_at_ns is not None and not settled(self._seen, read_at_ns, self._settle):
            self._pending = True

    def request(self) -> None:
        """Reload soon even if no file seems changed (SIGHUP)."""
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    def _paths(self) -> list[str]:
        return [self._main(), *(path for path, _ in self._seen)]

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.poll()

    async def poll(self) -> None:
        """One look at the files; reload if they changed (or a reload is pending) and have settled."""
        now = fingerprint(self._paths())
        if now == fingerprint_of(self._seen, now) and not self._pending:
            return
        if not settled(now, time.time_ns(), self._settle):
            return  # still being written: look again at the next poll
        self._pending = False
        try:
            read = await self._reload()
        except Exception as exc:  # a failed reload must not end the watching
            if self._on_crash is not None:
                self._on_crash(exc)
            return
        if read is None:
            self._pending = True  # superseded or unsettled: try again
        else:
            self._seen = tuple(read)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def fingerprint_of(seen: Fingerprint, now: Fingerprint) -> Fingerprint:
    """`seen`, laid out as `now` is (main file first), for comparing the two."""
    known = dict(seen)
    return tuple((path, known[path]) if path in known else (path, ()) for path, _ in now)  # type: ignore[misc]
