"""The operational log: structlog, configured once, one JSON object per line on stderr.

This is the log that IT reads when something goes wrong (a rejected policy,
an audit log that cannot be written); it is not the audit log, which has its
own writer in `accessgate.audit`.  Tests read it with
`structlog.testing.capture_logs()`, which is why loggers are not cached.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import IO

import structlog

_lock = threading.Lock()
_configured = False


def configure(
    level: str | int = "info", stream: IO[str] | None = None, *, force: bool = False
) -> None:
    """Configure structlog for JSON lines; later calls do nothing unless `force`.

    `stream` defaults to the `sys.stderr` of the moment each line is written,
    so that redirecting stderr (pytest, daemon managers) keeps working.
    """
    global _configured
    with _lock:
        if _configured and not force:
            return
        if isinstance(level, str):
            numeric = logging.getLevelName(level.upper())
            if not isinstance(numeric, int):
                raise ValueError(
                    f"unknown log level {level!r}; use debug, info, warning, error or critical"
                )
            level = numeric
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=_StderrLoggerFactory(stream),
            # Cached loggers would ignore capture_logs() in tests; the
            # operational log is rare enough that the lookup costs nothing.
            cache_logger_on_first_use=False,
        )
        _configured = True


def get_logger(component: str = "accessgate") -> structlog.typing.FilteringBoundLogger:
    """The operational logger, bound to `component`; configures structlog if nobody has."""
    if not _configured:
        configure()
    return structlog.get_logger().bind(component=component)


class _StderrLoggerFactory:
    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    def __call__(self, *args: object) -> structlog.PrintLogger:
        return structlog.PrintLogger(self._stream if self._stream is not None else sys.stderr)
