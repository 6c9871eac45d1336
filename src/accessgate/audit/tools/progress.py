"""A progress bar on stderr for long audit queries -- only when a person watches.

When stderr is not a terminal (a pipe, a file, CI) nothing is drawn at all,
so scripts get clean output.  The bar appears only after `delay` seconds, so
quick queries never flicker one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import IO, Callable, Iterator

import duckdb


def wanted(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    if os.environ.get("ACCESSGATE_NO_PROGRESS") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Bar:
    """Draws `label [#####-----]  42%` in place; `update(fraction)` from any thread."""

    def __init__(self, label: str, stream: IO[str] | None = None, delay: float = 0.5) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = wanted(self.stream)
        self._start = time.monotonic()
        self._delay = delay
        self._drawn = False
        self._last = -1

    def update(self, fraction: float) -> None:
        if not self.enabled or time.monotonic() - self._start < self._delay:
            return
        percent = max(0, min(100, int(fraction * 100)))
        if percent == self._last:
            return
        self._last = percent
        width = 30
        filled = width * percent // 100
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {percent:3d}%")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * (len(self.label) + 40) + "\r")
            self.stream.flush()
            self._drawn = False


@contextlib.contextmanager
def counting(label: str, total: int, stream: IO[str] | None = None) -> Iterator[Callable[[int], None]]:
    """For Python loops: yields `step(done)`; draws done/total."""
    bar = Bar(label, stream)
    try:
        yield (lambda done: bar.update(done / total if total else 1.0)) if bar.enabled else _noop
    finally:
        bar.close()


def _noop(_: int) -> None:
    pass


def for_queries(label: str, stream: IO[str] | None = None):
    """A factory for `AuditReader(progress=...)`: watches DuckDB's own query progress."""

    @contextlib.contextmanager
    def watch(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        bar = Bar(label, stream)
        if not bar.enabled:
            yield
            return
        # DuckDB tracks progress only with its bar enabled; we draw our own.
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
        con.execute("SET progress_bar_time = 0")
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                value = con.query_progress()
                if value >= 0:
                    bar.update(value / 100)

        thread = threading.Thread(target=poll, name="accessgate-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            bar.close()

    return watch
