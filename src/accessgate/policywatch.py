"""Watch the policy files and tell the addon when they change.

Polling, not inotify: it works on every filesystem (NFS, bind mounts,
ConfigMap symlink swaps), costs a few `stat` calls per interval, and a
half-second poll keeps a change well inside the contract's two seconds.
A file is "changed" when its mtime, size or inode changes, which also
catches editors that write a new file and rename it over the old one.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Awaitable, Callable, Iterable

Fingerprint = tuple[tuple[str, tuple[int, int, int] | None], ...]

DEFAULT_INTERVAL = 0.5  # seconds


def fingerprint(paths: Iterable[str | os.PathLike[str]]) -> Fingerprint:
    """(path, (mtime_ns, size, inode)) per file; None for a file that is missing."""
    result = []
    for path in dict.fromkeys(str(p) for p in paths):
        try:
            st = os.stat(path)
            result.append((path, (st.st_mtime_ns, st.st_size, st.st_ino)))
        except OSError:
            result.append((path, None))
    return tuple(result)


class PolicyWatch:
    """Calls `on_change()` after the files named by `paths()` change.

    `paths` is asked again on every poll, because a reload may add or drop
    included files.  `on_change` runs in the watcher's task, one at a time,
    so two quick saves never race each other.
    """

    def __init__(
        self,
        paths: Callable[[], Iterable[str | os.PathLike[str]]],
        on_change: Callable[[], Awaitable[None]],
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._paths = paths
        self._on_change = on_change
        self._interval = interval
        self._seen: Fingerprint = fingerprint(self._paths())
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="accessgate policy watch"
            )

    def rebase(self) -> None:
        """Take the files as they are now as the known state (after a load)."""
        self._seen = fingerprint(self._paths())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            now = fingerprint(self._paths())
            if now != self._seen:
                self._seen = now
                try:
                    await self._on_change()
                except Exception:  # a failed reload must not end the watching
                    from .logging import get_logger

                    get_logger("policy").exception("policy_reload_crashed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def resolve(path: str) -> Path:
    return Path(path).expanduser()
