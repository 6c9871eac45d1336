"""Every error accessgate raises on purpose, in one tree.

    AccessgateError
    ├── PolicyError            a policy file is not valid (carries every problem)
    ├── InvalidHost (ValueError) a name that cannot be a host name
    ├── StateStoreError        the quota store cannot answer
    │   └── StateStoreUnavailable  it cannot be reached at all (Redis down)
    └── AuditLogError          an audit log cannot be read, written or verified

Messages say what is wrong and what to do about it, in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass


class AccessgateError(Exception):
    """Base of every error accessgate raises on purpose."""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy, located in its source file."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(AccessgateError):
    """A policy is not valid.

    `problems` lists the problems found, in file order, at most the loader's
    limit of them; `total` counts every problem found, shown or not.
    """

    def __init__(self, problems: list[PolicyProblem] | tuple[PolicyProblem, ...], total: int | None = None):
        self.problems = tuple(problems)
        self.total = max(total or 0, len(self.problems))
        head = f"policy is not valid ({_count(self.total)}):"
        lines = [head, *(f"  {p}" for p in self.problems)]
        if self.hidden:
            lines.append(f"  ... and {self.hidden} more; fix these first")
        super().__init__("\n".join(lines))

    @property
    def hidden(self) -> int:
        """How many problems were found but not listed."""
        return self.total - len(self.problems)

    def lines(self) -> list[str]:
        """Every listed problem as `file:line:col: message`, and a last line for the rest."""
        out = [str(p) for p in self.problems]
        if self.hidden:
            out.append(f"... and {self.hidden} more problem{'s' if self.hidden != 1 else ''} "
                       "not listed; fix these first")
        return out


def _count(n: int) -> str:
    return f"{n} problem{'s' if n != 1 else ''}"


class InvalidHost(AccessgateError, ValueError):
    """A request names something that cannot be a host name."""


class StateStoreError(AccessgateError):
    """The quota state store failed to answer."""


class StateStoreUnavailable(StateStoreError):
    """The quota state store cannot be reached (for example Redis is down)."""


class AuditLogError(AccessgateError):
    """An audit log cannot be read, written or verified."""
