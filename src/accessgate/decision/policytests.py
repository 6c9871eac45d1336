"""Run a policy's own `tests:` cases against the engine (`accessgate test`).

A case names a request (user, client address, method, URL, headers, time)
and the outcome it expects (`allow`/`block`, optionally the reason).  Each
case is decided alone, with nothing of any daily quota used, so a case's
outcome depends only on the policy and the case.  A case without `at` is
decided at the current time: cases that depend on windows should say when.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from accessgate.decision import explain
from accessgate.decision.rules import decide
from accessgate.decision.types import Decision
from accessgate.policy.model import Policy, PolicyTest


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyTest
    decision: Decision | None  # None when the case could not be decided
    error: str | None = None

    @property
    def passed(self) -> bool:
        if self.decision is None:
            return False
        if self.decision.decision != self.case.expect:
            return False
        return self.case.reason is None or self.decision.reason == self.case.reason

    @property
    def want(self) -> str:
        reason = self.case.reason or "any reason"
        return f"{self.case.expect} ({reason})"

    @property
    def got(self) -> str:
        if self.decision is None:
            return f"error: {self.error}"
        d = self.decision
        return f"{d.decision} ({d.reason}) by rule {d.rule}"


def run_case(policy: Policy, case: PolicyTest, now: datetime) -> CaseResult:
    try:
        request = explain.request_from_url(case.url, case.method, case.headers)
        request = explain.with_content(
            request, case.headers, case.body.encode() if case.body is not None else None, case.operation
        )
        who = explain.identity(case.user, case.client_ip)
        at = explain.parse_time(case.at, policy.timezone, now)
    except ValueError as exc:
        return CaseResult(case, None, str(exc))
    # Every case starts with nothing used, unless it says how much it used.
    used = case.quota_used
    ledger = explain.UsedMinutes(used) if used else None
    return CaseResult(case, decide(request, who, policy, at, ledger))


def run_tests(policy: Policy, now: datetime | None = None) -> list[CaseResult]:
    """Decide every case of `policy.tests`, in file order."""
    now = now if now is not None else datetime.now(timezone.utc)
    return [run_case(policy, case, now) for case in policy.tests]


def describe(case: PolicyTest) -> str:
    """The case as one line: who asks what, when."""
    who = case.user or "anonymous"
    if case.client_ip:
        who += f" from {case.client_ip}"
    text = f"{who} {case.method} {case.url}"
    for name, value in case.headers:
        text += f" [{name}: {value}]"
    if case.body is not None:
        text += f" body {case.body[:60]!r}" + ("…" if len(case.body) > 60 else "")
    if case.operation is not None:
        text += f" operation {case.operation!r}"
    if case.at:
        text += f" at {case.at}"
    return text


def format_failure(result: CaseResult) -> str:
    case = result.case
    title = f"{case.source}: FAIL" + (f" {case.name}" if case.name else "")
    return "\n".join(
        [title, f"  case: {describe(case)}", f"  want: {result.want}", f"  got:  {result.got}"]
    )


def summary(results: list[CaseResult]) -> str:
    failed = sum(1 for r in results if not r.passed)
    return f"{len(results) - failed} passed, {failed} failed"
