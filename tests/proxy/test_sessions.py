"""Long-lived flows are re-decided while open: window ends, quota runs out, policy changes."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from accessgate.decision import Identity, Request
from accessgate.policy.loader import parse_policy
from accessgate.proxy.sessions import LongLivedFlows
from accessgate.decision.quota import MemoryLedger
from support.policies import everyone_policy

BERLIN = ZoneInfo("Europe/Berlin")
LUNCH = '["mon-fri 12:00-13:00"]'


def chat_and_feed(chat_level: str = "full") -> str:
    """Chat in a lunch window, a feed with two minutes a day."""
    access = {"chat": f"{{level: {chat_level}, windows: {LUNCH}}}", "feed": "{level: full, daily_minutes: 2}"}
    return everyone_policy(access, timezone="Europe/Berlin")


POLICY = parse_policy(chat_and_feed())
MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=BERLIN)
WS = Request("GET", ("chat.test",), "/socket", headers=(("upgrade", "websocket"),))
STREAM = Request("GET", ("feed.test",), "/live")
ERIN = Identity("erin")


def flows_with(*entries):
    flows = LongLivedFlows()
    for key, request in entries:
        flows.track(key, object(), request, ERIN, key)
    return flows


@pytest.mark.parametrize(
    "minutes_later, closed",
    [(0, []), (59, []), (60, ["chat"])],
    ids=["open-at-window-start", "open-in-last-minute", "closed-when-window-ends"],
)
def test_a_websocket_is_closed_when_its_window_ends(minutes_later, closed):
    flows = flows_with(("chat", WS))
    now = MONDAY_NOON + timedelta(minutes=minutes_later)
    assert [key for key, _, _ in flows.to_close(POLICY, now, None)] == closed


def test_the_closing_decision_says_why():
    flows = flows_with(("chat", WS))
    [(_, _, decision)] = flows.to_close(POLICY, MONDAY_NOON + timedelta(hours=1), None)
    assert (decision.reason, decision.rule) == ("outside-window", "roles.everyone.access.chat")


def test_a_stream_is_closed_when_its_quota_runs_out():
    ledger = MemoryLedger()
    flows = flows_with(("feed", STREAM))
    day = MONDAY_NOON.date()
    for minute in range(3):
        now = MONDAY_NOON + timedelta(minutes=minute)
        closing = flows.to_close(POLICY, now, ledger)
        if flows.activity("feed", now) is not None and not closing:
            ledger.mark(ERIN.subject, "feed", day, int(now.timestamp() // 60))
        if minute < 2:
            assert closing == [], f"minute {minute} is within the 2-minute quota"
    assert [k for k, _, d in closing if d.reason == "quota-exhausted"] == ["feed"]


def test_activity_counts_once_per_minute():
    flows = flows_with(("feed", STREAM))
    first = flows.activity("feed", MONDAY_NOON)
    again = flows.activity("feed", MONDAY_NOON + timedelta(seconds=30))
    next_minute = flows.activity("feed", MONDAY_NOON + timedelta(seconds=60))
    assert (first is not None, again is None, next_minute is not None) == (True, True, True)


def test_a_reload_that_removes_access_closes_open_flows():
    flows = flows_with(("chat", WS), ("feed", STREAM))
    stricter = parse_policy(chat_and_feed("read-only"))
    closing = flows.to_close(stricter, MONDAY_NOON, None)
    assert [(k, d.reason) for k, _, d in closing] == [("chat", "read-only")]


def test_untracked_flows_are_forgotten():
    flows = flows_with(("chat", WS))
    flows.untrack("chat")
    flows.untrack("never-tracked")
    assert len(flows) == 0
    assert flows.to_close(POLICY, MONDAY_NOON + timedelta(hours=2), None) == []
