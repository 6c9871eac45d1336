"""The status page: where a user stands with every site, as JSON and as HTML."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from accessgate.decision import Identity
from accessgate.decision.quota import MemoryLedger
from accessgate.policy.loader import load_policy
from accessgate.proxy.status import SiteStanding, decryption, standing, status_response
from support.pagetext import HOSTILE, parse, text_of
from support.policies import everyone_policy

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 23, 10, 55, tzinfo=BERLIN)  # a Monday
CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def policy():
    return load_policy(Path(__file__).with_name("status_policy.yaml"))


def used(ledger: MemoryLedger, user: str, site: str, minutes: int, at: datetime) -> None:
    for m in range(minutes):
        ts = at - timedelta(minutes=m + 1)
        ledger.mark(f"user:{user}", site, ts.astimezone(BERLIN).date(), int(ts.timestamp() // 60))


def rows_by_site(rows):
    return {r.site: r for r in rows}


def test_standing_inside_the_window_with_minutes_used(policy) -> None:
    now = datetime(2026, 11, 23, 12, 30, tzinfo=BERLIN)
    ledger = MemoryLedger()
    used(ledger, "carol", "facebook", 5, now)
    used(ledger, "carol", "xing", 10, now)
    rows = rows_by_site(standing(policy, Identity(user="carol"), now, ledger))
    assert list(rows) == ["facebook", "linkedin", "tiktok", "xing"]
    assert rows["facebook"] == SiteStanding(
        "facebook", "full", "mon-fri 12:00-13:00", 5, 15, None, "allowed"
    )
    assert rows["linkedin"] == SiteStanding(
        "linkedin", "read-only", "", None, None, None, "allowed"
    )
    assert rows["tiktok"] == SiteStanding("tiktok", "none", "", None, None, None, "denied")
    xing = rows["xing"]
    assert (xing.level, xing.reason, xing.minutes_used, xing.minutes_left) == (
        "none", "quota-exhausted", 10, 0,
    )  # fmt: skip
    assert xing.next_window == datetime(2026, 11, 24, 0, 0, tzinfo=BERLIN)
    assert xing.next_window.tzinfo == BERLIN


def test_standing_outside_the_window_says_when_it_opens(policy) -> None:
    now = datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN)
    rows = rows_by_site(standing(policy, Identity(user="carol"), now, MemoryLedger()))
    fb = rows["facebook"]
    assert (fb.level, fb.reason, fb.minutes_used, fb.minutes_left) == (
        "none",
        "outside-window",
        0,
        20,
    )
    assert fb.next_window == datetime(2026, 11, 23, 12, 0, tzinfo=BERLIN)


def test_standing_of_the_most_permissive_role(policy) -> None:
    now = datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN)
    rows = standing(policy, Identity(user="alice"), now, None)
    assert {(r.site, r.level, r.window_text, r.minutes_left) for r in rows} == {
        (site, "full", "", None) for site in ("facebook", "linkedin", "tiktok", "xing")
    }


def test_standing_of_an_anonymous_client(policy) -> None:
    rows = standing(policy, Identity(client_ip=ip_address("10.1.2.3")), NOW, None)
    assert {(r.level, r.reason) for r in rows} == {("none", "unauthenticated")}


def test_status_page_json_and_html_show_the_same_standing(policy) -> None:
    now = datetime(2026, 11, 23, 12, 30, tzinfo=BERLIN)
    ledger = MemoryLedger()
    used(ledger, "carol", "facebook", 5, now)
    used(ledger, "carol", "xing", 10, now)
    identity = Identity(user="carol")
    rows = standing(policy, identity, now, ledger)

    status, headers, body = status_response(
        identity=identity, roles=("everyone",), rows=rows, now=now, accept="application/json"
    )
    assert status == 200 and headers["Cache-Control"] == "no-store"
    data = json.loads(body)
    assert data["user"] == "carol" and data["roles"] == ["everyone"]
    sites = {s["site"]: s for s in data["sites"]}
    assert sites["facebook"] == {
        "site": "facebook", "name": "facebook", "level": "full", "reason": "allowed", "window": "mon-fri 12:00-13:00",
        "minutes_used": 5, "minutes_left": 15, "next_window": None, "continued_until": None, "continue_minutes": None,
    }  # fmt: skip
    assert sites["xing"]["next_window"] == "2026-11-24T00:00:00+01:00"

    status, headers, body = status_response(
        identity=identity, roles=("everyone",), rows=rows, now=now, accept=CHROME
    )
    text = text_of(body)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Signed in as carol" in text and "Your roles: everyone" in text
    assert "facebook Full mon-fri 12:00-13:00 15 of 20" in text
    assert "linkedin Read-only any time no limit" in text
    assert "tiktok No access not allowed for your roles \u2013 \u2013 \u2013" in text
    assert (
        "xing No access today's minutes are used up any time 0 (used 10) tomorrow at 00:00 in 11 h 30 min"
        in text
    )


def test_status_page_escapes_what_the_client_controls() -> None:
    identity = Identity(user=HOSTILE)
    row = SiteStanding(f"s{HOSTILE}", "none", f"w{HOSTILE}", None, None, None, "denied")
    _, _, body = status_response(
        identity=identity, roles=(HOSTILE,), rows=[row], now=NOW, accept=FIREFOX
    )
    page = parse(body)
    assert "script" not in page.tags and "img" not in page.tags
    assert HOSTILE in text_of(body)


def test_status_page_for_a_client_without_roles_or_sites() -> None:
    identity = Identity(client_ip=ip_address("2001:db8::7"))
    _, _, body = status_response(identity=identity, roles=(), rows=[], now=NOW, accept=CHROME)
    text = text_of(body)
    assert "Not signed in; your computer is 2001:db8::7" in text
    assert "You have no role in the web access policy." in text
    assert "The policy names no sites." in text


def test_groups_show_where_each_came_from() -> None:
    from accessgate.auth.groups import GroupSource

    groups = (GroupSource("contractors", ("yaml",)), GroupSource("pr", ("yaml", "ldap")),
              GroupSource("sales", ("ldap",)))
    _, _, body = status_response(identity=Identity(user="alice"), roles=("staff",), rows=[], now=NOW,
                                 accept="application/json", groups=groups)
    assert json.loads(body)["groups"] == [
        {"name": "contractors", "sources": ["yaml"]},
        {"name": "pr", "sources": ["yaml", "ldap"]},
        {"name": "sales", "sources": ["ldap"]},
    ]
    _, _, page = status_response(identity=Identity(user="alice"), roles=("staff",), rows=[], now=NOW,
                                 accept=CHROME, groups=groups)
    assert ("Your groups: contractors (the policy), pr (the policy and the directory), "
            "sales (the directory).") in " ".join(text_of(page).split())


def test_a_hostile_group_name_is_escaped() -> None:
    from accessgate.auth.groups import GroupSource

    _, _, page = status_response(identity=Identity(user="alice"), roles=(), rows=[], now=NOW, accept=CHROME,
                                 groups=(GroupSource(HOSTILE, ("ldap",)),))
    assert HOSTILE.encode() not in page


def test_each_user_is_told_which_of_their_sites_are_decrypted(policy) -> None:
    """Decided as the proxy decides a connection: read-only and blocked sites are decrypted, full ones not."""
    now = datetime(2026, 11, 23, 12, 30, tzinfo=BERLIN)  # lunch: facebook is open to everyone
    carol = Identity(user="carol")
    found = decryption(policy, carol, now, MemoryLedger(), "needed")
    assert found == {
        "facebook": (False, "full"),
        "linkedin": (True, "read-only"),
        "tiktok": (True, "blocked"),
        "xing": (False, "full"),
    }
    rows = standing(policy, carol, now, MemoryLedger())
    _, _, body = status_response(identity=carol, roles=("everyone",), rows=rows, now=now, accept=CHROME,
                                 timezone=BERLIN, decryption=found)
    text = text_of(body)
    assert "Decrypted" in text
    assert "linkedin Read-only any time no limit – Yes: to tell reading from writing" in text
    assert "tiktok No access not allowed for your roles – – – Yes: to show why it is blocked" in text
    assert "not listed here are not decrypted" in text
    _, _, body = status_response(identity=carol, roles=("everyone",), rows=rows, now=now, accept="application/json",
                                 timezone=BERLIN, decryption=found)
    sites = {s["site"]: s for s in json.loads(body)["sites"]}
    assert (sites["linkedin"]["decrypted"], sites["linkedin"]["decrypted_why"]) == (True, "read-only")
    assert (sites["facebook"]["decrypted"], sites["facebook"]["decrypted_why"]) == (False, "full")


def test_under_inspect_all_every_site_is_decrypted(policy) -> None:
    now = datetime(2026, 11, 23, 12, 30, tzinfo=BERLIN)
    found = decryption(policy, Identity(user="alice"), now, MemoryLedger(), "all")
    assert set(found.values()) == {(True, "all")}


WARN_POLICY = everyone_policy({"tiktok": "{level: warn, continue_minutes: 30}"}, "Europe/Berlin",
                              domains="{site}.com", unauthenticated="deny", unlisted="allow")


def test_status_page_shows_warn_sites_and_the_time_a_reason_has_left() -> None:
    from accessgate.policy.loader import parse_policy
    from accessgate.stores import MemoryStore

    policy, store = parse_policy(WARN_POLICY), MemoryStore()
    asked = rows_by_site(standing(policy, Identity(user="zoe"), NOW, store))["tiktok"]
    assert (asked.level, asked.reason, asked.continue_minutes, asked.continued_until) == (
        "none", "justification-required", 30, None)
    _, _, body = status_response(identity=Identity(user="zoe"), roles=("everyone",), rows=[asked], now=NOW,
                                 accept=CHROME, timezone=BERLIN)
    assert "give a reason on its page to open it for 30 min" in text_of(body)

    store.continue_until("user:zoe", "tiktok", (NOW + timedelta(minutes=23)).timestamp(), NOW.timestamp())
    row = rows_by_site(standing(policy, Identity(user="zoe"), NOW, store))["tiktok"]
    assert (row.level, row.reason) == ("warn", "allowed")
    assert row.continued_until == NOW + timedelta(minutes=23)
    _, _, body = status_response(identity=Identity(user="zoe"), roles=("everyone",), rows=[row], now=NOW,
                                 accept=CHROME, timezone=BERLIN)
    text = text_of(body)
    assert "After a reason" in text and "open 23 min more, after your reason" in text
    _, _, body = status_response(identity=Identity(user="zoe"), roles=("everyone",), rows=[row], now=NOW,
                                 accept="application/json", timezone=BERLIN)
    assert json.loads(body)["sites"][0]["continued_until"] == "2026-11-23T11:18:00+01:00"


NAMED = """\
version: 1
timezone: Europe/Berlin
sites:
  tiktok: {name: TikTok, domains: [tiktok.com]}
  x: {name: X, domains: [x.com]}
  linkedin: {name: LinkedIn, domains: [linkedin.com]}
  plain: {domains: [plain.example]}
roles:
  everyone: {members: [all], access: {linkedin: read-only, "*": deny}}
"""


def test_status_page_shows_display_names_in_their_order(tmp_path) -> None:
    from accessgate.policy.loader import parse_policy

    policy = parse_policy(NAMED, "<named>")
    identity = Identity(user="carol")
    rows = standing(policy, identity, NOW, None)
    assert [(r.site, r.shown) for r in rows] == [
        ("linkedin", "LinkedIn"), ("plain", "plain"), ("tiktok", "TikTok"), ("x", "X"),
    ]  # fmt: skip
    text = text_of(status_response(identity=identity, roles=("everyone",), rows=rows, now=NOW, accept=CHROME)[2])
    assert "LinkedIn Read-only" in text and "TikTok No access" in text and "X No access" in text
    assert "tiktok" not in text
    data = json.loads(status_response(identity=identity, roles=("everyone",), rows=rows, now=NOW, accept=None)[2])
    assert [(s["site"], s["name"]) for s in data["sites"]][2] == ("tiktok", "TikTok")
