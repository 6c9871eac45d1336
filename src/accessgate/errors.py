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
    """A policy is not valid.  `problems` lists every problem found, in file order."""

    def __init__(self, problems: list[PolicyProblem] | tuple[PolicyProblem, ...]):
        self.problems = tuple(problems)
        count = len(self.problems)
        head = f"policy is not valid ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class InvalidHost(AccessgateError, ValueError):
    """A request names something that cannot be a host name."""


class StateStoreError(AccessgateError):
    """The quota state store failed to answer."""


class StateStoreUnavailable(StateStoreError):
    """The quota state store cannot be reached (for example Redis is down)."""


class AuditLogError(AccessgateError):
    """An audit log cannot be read, written or verified."""
