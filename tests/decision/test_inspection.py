"""Which TLS connections are decrypted: decision/inspection.py, from the table in cases/inspection/."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from accessgate.decision import Identity, MemoryLedger, minute_of
from accessgate.decision import inspection as insp
from accessgate.decision.inspection import Hello, Server, inspection, site_inspection
from accessgate.policy.loader import parse_policy

TABLE = Path(__file__).parent / "cases" / "inspection" / "table.yaml"
DOC = yaml.safe_load(TABLE.read_text("utf-8"))
POLICY = parse_policy(yaml.safe_dump(DOC["policy"], sort_keys=False), str(TABLE))
DEFAULT_AT = "2026-11-23T10:00"  # a Monday, outside lunch
MANY = tuple(f"h{i}.example" for i in range(insp.MAX_CERTIFICATE_NAMES + 1))


def _server(case) -> Server | None:
    given = case.get("server", "own")
    if given == "unknown":
        return None
    if given == "many":
        return Server(MANY)
    names = () if given == "own" else tuple(str(n) for n in given)
    return Server(names, case.get("address"))


@pytest.mark.parametrize("case", DOC["cases"], ids=[c["id"] for c in DOC["cases"]])
def test_inspection(case) -> None:
    now = datetime.fromisoformat(case.get("at", DEFAULT_AT)).replace(tzinfo=timezone.utc)
    user = case.get("user", "zoe")
    identity = Identity(user=user, client_ip=ipaddress.ip_address("10.0.0.7"))
    ledger = MemoryLedger()
    for minute in range(case.get("quota_used", 0)):
        ledger.mark(identity.subject, "minutes", now.date(), minute_of(now) - 1 - minute)
    hello = Hello(tuple(case["names"]), sni=case.get("sni", True), ech=case.get("ech", False),
                  readable=case.get("readable", True))

    got = inspection(hello, identity, POLICY, now, ledger, mode=case.get("mode", "needed"), server=_server(case))

    decrypt, why, decision = case["expect"]
    assert (got.decrypt, got.why, got.decision.decision) == (decrypt, why, decision), got.decision


def test_every_reason_code_is_in_the_table() -> None:
    """The reason codes are an audit field and a metric label: each one is reached by a case."""
    reached = {c["expect"][1] for c in DOC["cases"]}
    assert reached == set(insp.WHYS)


def test_a_passed_through_connection_that_spends_quota_says_so() -> None:
    now = datetime.fromisoformat(DEFAULT_AT).replace(tzinfo=timezone.utc)
    got = inspection(Hello(("minutes.test",)), Identity("zoe"), POLICY, now, MemoryLedger(), server=Server(()))
    assert not got.decrypt and got.decision.counts_quota and got.decision.site == "minutes"


@pytest.mark.parametrize(
    "host, decrypt, why",
    [("news.test", True, "read-only"), ("social.test", False, "full"), ("video.test", True, "blocked"),
     ("bank.test", False, "never-inspect"), ("records.test", True, "records")],
)
def test_what_the_status_page_tells_a_user_comes_from_the_same_predicate(host, decrypt, why) -> None:
    now = datetime.fromisoformat(DEFAULT_AT).replace(tzinfo=timezone.utc)
    got = site_inspection(host, Identity("zoe"), POLICY, now)
    assert (got.decrypt, got.why) == (decrypt, why)
