"""What several commands share: reading a policy, opening the audit log, reporting errors."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, TextIO

from accessgate.audit.tools.output import safe_text
from accessgate.errors import AccessgateError, PolicyError
from accessgate.policy.loader import load_policy
from accessgate.policy.model import Policy


def load_or_report(path: str, out: TextIO) -> Policy | None:
    """The policy at `path`, or None after writing every problem to `out`.

    Every command that reads a policy reports an invalid one the same way:
    `file:line:col: message`, one a line (at most the loader's limit of
    them, then how many more there are).
    """
    try:
        return load_policy(path)
    except PolicyError as exc:
        for line in exc.lines():
            print(line, file=out)
        print(f"{path}: not valid ({plural(exc.total, 'problem')})", file=out)
        return None


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def exit_2_on_error(command: str, run: Callable[[], int]) -> int:
    """`run()`, or exit status 2 after one line on stderr saying what went wrong."""
    try:
        return run()
    except (AccessgateError, ValueError, OSError) as exc:
        print(f"accessgate {command}: {safe_text(exc)}", file=sys.stderr)
        return 2


def open_log(args: argparse.Namespace, label: str, build_cache: str = "rotated", prefilter=None):
    """The audit log files `args.logs` as an AuditReader; what it skipped is said on stderr."""
    from accessgate.audit.cache import Cache
    from accessgate.audit.reader import AuditReader
    from accessgate.audit.tools import progress

    log = AuditReader(
        args.logs,
        cache=None if getattr(args, "no_cache", False) else Cache(),
        build_cache=build_cache,
        progress=progress.for_queries(label),
        prefilter=prefilter,
    )
    for problem in log.problems:
        print(f"warning: {safe_text(problem)}", file=sys.stderr)
    return log
