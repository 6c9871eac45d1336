"""decide(): every rule of the contract's section 2, from tables in cases/decide/."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from accessgate.decision import Claimed, Content, Identity, Request, decide
from accessgate.errors import StateStoreUnavailable
from accessgate.policy.loader import parse_policy
from accessgate.decision.quota import QuotaUsage

CASES_DIR = Path(__file__).parent / "cases"
DEFAULT_AT = "2026-11-23T10:00"  # a Monday morning, outside lunch


def load_case_file(path: Path):
    doc = yaml.safe_load(path.read_text("utf-8"))
    return parse_policy(yaml.safe_dump(doc["policy"], sort_keys=False), str(path)), doc["cases"]


def load_cases():
    for path in sorted(CASES_DIR.glob("*.yaml")):
        policy, cases = load_case_file(path)
        for case in cases:
            yield pytest.param(policy, case, id=f"{path.stem}:{case['id']}")


class FixedUsage:
    """A ledger that reports `used` minutes for every subject and site."""

    def __init__(self, used: int, current_counted: bool):
        self.answer = QuotaUsage(used, current_counted)

    def usage(self, subject, site, day, minute):
        return self.answer

    def mark(self, subject, site, day, minute):
        raise AssertionError("decide() must never write to the ledger")


class Continued:
    """Continuations where every subject continued on every site until `until` (None: nobody did)."""

    def __init__(self, until: datetime | None):
        self.until = until.timestamp() if until is not None else None

    def continued_until(self, subject, site):
        return self.until


def content_for(case, headers) -> Content | Claimed | None:
    """What the request says it does: `body` (padded with 'x' to `body_size`
    bytes), a body the proxy did not read (`unread`), or an `operation`."""
    query = urlsplit(case.get("url", "")).query
    if "operation" in case:
        return Claimed(case["operation"])
    if "unread" in case:
        return Content(headers, None, case["unread"], query)
    if "body" in case:
        body = case["body"].encode()
        return Content(headers, body + b"x" * (case.get("body_size", len(body)) - len(body)), query=query)
    return None


def request_for(case) -> Request:
    headers = tuple(
        (name.strip().lower(), value.strip())
        for name, value in (h.split(":", 1) for h in case.get("headers", []))
    )
    if "hosts" in case:
        return Request(method=case.get("method", "GET"), hosts=tuple(case["hosts"]), headers=headers)
    url = urlsplit(case["url"])
    path = url.path + (f"?{url.query}" if url.query else "")
    return Request(
        method=case.get("method", "GET"),
        hosts=(url.netloc,),
        path=path or "/",
        scheme=url.scheme,
        headers=headers,
        content=content_for(case, headers),
    )


def time_for(case, policy) -> datetime:
    at = datetime.fromisoformat(case.get("at", DEFAULT_AT))
    return at if at.tzinfo else at.replace(tzinfo=policy.timezone)


@pytest.mark.parametrize("policy, case", list(load_cases()))
def test_decision(policy, case):
    identity = Identity(
        user=case.get("user"),
        groups=frozenset(case.get("groups", ())),
        client_ip=ipaddress.ip_address(case["client_ip"]) if "client_ip" in case else None,
    )
    ledger = FixedUsage(case.get("used", 0), case.get("current_counted", False))
    continued = Continued(time_for({"at": case["continued_until"]}, policy) if "continued_until" in case else None)
    decision = decide(request_for(case), identity, policy, time_for(case, policy), ledger, continued)

    assert decision.decision == case["expect"], decision
    expected = {k: case[k] for k in ("reason", "site", "role", "rule", "counts_quota") if k in case}
    actual = {k: getattr(decision, k) for k in expected}
    assert actual == expected, decision
    if "roles" in case:
        assert list(decision.roles) == case["roles"], decision
    if "level" in case:
        assert decision.level is not None and decision.level.value == case["level"], decision
    if "opens_at" in case:
        assert decision.opens_at == datetime.fromisoformat(case["opens_at"]), decision
    if decision.decision == "block":
        assert decision.message, "every block explains itself in a sentence"
    if "message" in case:
        assert case["message"] in decision.message, decision


class UnreachableStore:
    """A ledger whose backend is down (Redis unreachable with on_error=closed)."""

    def usage(self, subject, site, day, minute):
        raise StateStoreUnavailable("redis://127.0.0.1:1 did not answer")

    def mark(self, subject, site, day, minute):
        raise StateStoreUnavailable("redis://127.0.0.1:1 did not answer")


UNREACHABLE_CASES = [
    # id, user, url, method, expect, reason, level
    ("quota-grant-fails-closed-when-store-unreachable", "erin", "https://facebook.com/", "GET", "block", "denied", "full"),
    ("other-grants-still-apply-when-store-unreachable", "carol", "https://facebook.com/", "POST", "allow", "allowed", "full"),
    ("grants-without-quota-never-ask-the-store", "erin", "https://linkedin.com/", "GET", "allow", "allowed", "read-only"),
]  # fmt: skip


@pytest.mark.parametrize("user, url, method, expect, reason, level", [c[1:] for c in UNREACHABLE_CASES],
                         ids=[c[0] for c in UNREACHABLE_CASES])
def test_an_unreachable_quota_store_closes_only_quota_grants(user, url, method, expect, reason, level):
    policy, _ = load_case_file(CASES_DIR / "company.yaml")
    lunch = datetime(2026, 11, 23, 12, 30, tzinfo=policy.timezone)
    decision = decide(request_for({"url": url, "method": method}), Identity(user=user), policy, lunch,
                      UnreachableStore())
    assert (decision.decision, decision.reason, decision.level.value) == (expect, reason, level), decision
