"""The block page and the status page: content negotiation, words, times, escaping."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from ipaddress import ip_address
from zoneinfo import ZoneInfo

import pytest

from accessgate.decision import BLOCK_REASONS, Decision, Identity
from accessgate.policy.loader import parse_policy
from accessgate.policy.model import Level
from accessgate.proxy.pages import (
    INVALID_HOST,
    UNKNOWN_REASON,
    UNLISTED_DENIED,
    SiteStanding,
    block_response,
    prefers_html,
    reason_sentence,
    relative,
    standing,
    status_response,
)
from accessgate.decision.quota import MemoryLedger

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 23, 10, 55, tzinfo=BERLIN)  # a Monday
CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def decision(reason: str = "denied", **kw) -> Decision:
    fields = dict(
        decision="block",
        reason=reason,
        rule="roles.everyone.access.facebook",
        site="facebook",
        level=Level.FULL,
        role="everyone",
        roles=("everyone",),
        host="www.facebook.com",
    )
    fields.update(kw)
    return Decision(**fields)


def block(d: Decision, accept: str | None = CHROME, **kw):
    args = dict(
        request_id="req-42",
        contact="it-help@example.com",
        url="https://www.facebook.com/groups/1",
        now=NOW,
        accept=accept,
        timezone=BERLIN,
    )
    args.update(kw)
    return block_response(d, **args)


INLINE = {"strong", "a", "time", "b", "em"}


class Tags(HTMLParser):
    """Every start tag and attribute of a page, to prove no markup was injected."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in INLINE:
            self.text.append(" ")

    def handle_endtag(self, tag):
        if tag not in INLINE:
            self.text.append(" ")

    def handle_data(self, data):
        self.text.append(data)


def parse(body: bytes) -> Tags:
    tags = Tags()
    tags.feed(body.decode("utf-8"))
    return tags


def text_of(body: bytes) -> str:
    return " ".join("".join(parse(body).text).split())


@pytest.mark.parametrize(
    "accept, html",
    [
        pytest.param(CHROME, True, id="chrome"),
        pytest.param(FIREFOX, True, id="firefox"),
        pytest.param("*/*", False, id="curl-any-type-is-json"),
        pytest.param(None, False, id="no-accept-is-json"),
        pytest.param("", False, id="empty-accept-is-json"),
        pytest.param("application/json", False, id="json-asked"),
        pytest.param("text/html;q=0.5, application/json", False, id="json-ranked-higher"),
        pytest.param("application/json;q=0.1, text/html", True, id="html-ranked-higher"),
        pytest.param("text/*", True, id="any-text"),
        pytest.param("application/xhtml+xml", True, id="xhtml"),
        pytest.param("text/html;q=0, */*", False, id="html-refused"),
        pytest.param("TEXT/HTML", True, id="case-insensitive"),
        pytest.param("text/html;q=bogus, application/json;q=0.2", False, id="bad-q-counts-as-zero"),
    ],
)
def test_html_only_when_accept_prefers_it(accept, html) -> None:
    assert prefers_html(accept) is html
    status, headers, body = block(decision(), accept=accept)
    assert status == 403
    if html:
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert body.startswith(b"<!DOCTYPE html>")
    else:
        assert headers["Content-Type"] == "application/json"
        json.loads(body)


@pytest.mark.parametrize("accept", [CHROME, "*/*"], ids=["html", "json"])
def test_block_headers_name_the_decision_reason_and_request(accept) -> None:
    _, headers, _ = block(decision("quota-exhausted"), accept=accept)
    assert headers["X-Accessgate-Decision"] == "block"
    assert headers["X-Accessgate-Reason"] == "quota-exhausted"
    assert headers["X-Accessgate-Request-Id"] == "req-42"
    assert headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_json_body_has_exactly_the_contract_fields() -> None:
    opens = datetime(2026, 11, 23, 11, 0, tzinfo=timezone.utc)
    d = decision("outside-window", opens_at=opens, message="facebook is open only at set times.")
    _, _, body = block(d, accept="application/json")
    assert json.loads(body) == {
        "decision": "block",
        "reason": "outside-window",
        "site": "facebook",
        "rule": "roles.everyone.access.facebook",
        "request_id": "req-42",
        "message": "facebook is open only at set times.",
        "opens_at": "2026-11-23T12:00:00+01:00",
        "contact": "it-help@example.com",
    }


@pytest.mark.parametrize("reason", BLOCK_REASONS)
def test_every_block_reason_has_its_own_plain_sentence(reason) -> None:
    d = decision(reason)
    sentence = reason_sentence(d)
    assert sentence and sentence != UNKNOWN_REASON[1]
    assert sentence[0].isupper() and sentence.endswith(".")
    assert sentence in text_of(block(d)[2])
    others = {reason_sentence(decision(r)) for r in BLOCK_REASONS if r != reason}
    assert sentence not in others


@pytest.mark.parametrize(
    "d, sentence",
    [
        pytest.param(
            decision("denied", site=None, rule="unlisted", host="example.org"),
            UNLISTED_DENIED,
            id="unlisted-host-denied",
        ),
        pytest.param(
            decision("denied", site=None, rule="invalid-host", host=None),
            INVALID_HOST,
            id="invalid-host",
        ),
        pytest.param(
            Decision("block", "denied", "internal-error", message="accessgate could not decide"),
            UNKNOWN_REASON[1],
            id="fail-closed-by-the-addon",
        ),
        pytest.param(decision("no-such-code"), UNKNOWN_REASON[1], id="unknown-reason-code"),
    ],
)
def test_blocks_without_a_site_or_code_still_say_why(d, sentence) -> None:
    assert reason_sentence(d) == sentence
    assert sentence in text_of(block(d)[2])


@pytest.mark.parametrize(
    "opens_at, day_text, in_text",
    [
        pytest.param(datetime(2026, 11, 23, 11, 0, tzinfo=timezone.utc), "today at 12:00", "in 1 h 5 min",
                     id="later-today-in-policy-time"),
        pytest.param(datetime(2026, 11, 23, 13, 0, tzinfo=BERLIN), "today at 13:00", "in 2 h 5 min",
                     id="hours-and-minutes"),
        pytest.param(datetime(2026, 11, 23, 10, 55, 30, tzinfo=BERLIN), "today at 10:55", "in less than a minute",
                     id="seconds-away"),
        pytest.param(datetime(2026, 11, 24, 0, 0, tzinfo=BERLIN), "tomorrow at 00:00", "in 13 h 5 min",
                     id="quota-resets-at-local-midnight"),
        pytest.param(datetime(2026, 11, 28, 12, 0, tzinfo=BERLIN), "on Saturday 28 November at 12:00",
                     "in 5 days 1 h", id="days-away-names-the-day"),
    ],
)  # fmt: skip
def test_opening_time_in_policy_time_and_relative(opens_at, day_text, in_text) -> None:
    for reason in ("outside-window", "quota-exhausted"):
        text = text_of(block(decision(reason, opens_at=opens_at))[2])
        assert f"Access opens again {day_text} (Europe/Berlin), {in_text}." in text


def test_opening_time_across_a_dst_change_uses_the_new_offset() -> None:
    now = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)  # CET, UTC+1
    opens = datetime(2026, 3, 29, 10, 0, tzinfo=timezone.utc)  # 12:00 CEST, UTC+2
    d = decision("outside-window", opens_at=opens)
    text = text_of(block(d, now=now)[2])
    assert "Access opens again tomorrow at 12:00 (Europe/Berlin), in 23 h." in text
    assert json.loads(block(d, now=now, accept=None)[2])["opens_at"] == "2026-03-29T12:00:00+02:00"


def test_no_opening_time_for_blocks_that_do_not_open_by_themselves() -> None:
    d = decision("denied", opens_at=datetime(2026, 11, 23, 11, 0, tzinfo=timezone.utc))
    assert "opens again" not in text_of(block(d)[2])


@pytest.mark.parametrize(
    "delta, words",
    [
        (timedelta(0), "now"),
        (timedelta(seconds=59), "in less than a minute"),
        (timedelta(seconds=61), "in 2 min"),
        (timedelta(minutes=60), "in 1 h"),
        (timedelta(hours=2, minutes=5), "in 2 h 5 min"),
        (timedelta(days=1), "in 1 day"),
        (timedelta(days=2, hours=3), "in 2 days 3 h"),
    ],
    ids=lambda v: str(v).replace(" ", "_"),
)
def test_relative_times_round_up_to_the_minute(delta, words) -> None:
    assert relative(delta) == words


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>&amp;'


def test_hostile_host_path_and_ids_are_shown_as_text_not_markup() -> None:
    d = decision(
        "read-only",
        site="face<b>book",
        host=f"evil{HOSTILE}.example",
        rule=f"roles.{HOSTILE}",
        message=f"read-only {HOSTILE}",
    )
    status, headers, body = block(
        d,
        url=f"http://evil.example/{HOSTILE}?q={HOSTILE}",
        request_id=f"id{HOSTILE}\r\nSet-Cookie: pwned=1",
        contact=f"mailto:{HOSTILE}",
    )
    page = parse(body)
    assert set(page.tags) <= {
        "html", "head", "meta", "title", "style", "body", "header", "span", "main", "div",
        "h1", "p", "strong", "a", "dl", "dt", "dd", "footer", "time",
    }  # fmt: skip
    assert "script" not in page.tags and "img" not in page.tags and "b" not in page.tags
    assert not any(name.startswith("on") for name, _ in page.attrs)
    assert HOSTILE in text_of(body), "shown to the user, literally"
    assert "\r" not in headers["X-Accessgate-Request-Id"]
    assert "\n" not in headers["X-Accessgate-Request-Id"]


def test_a_long_url_is_cut_and_lone_surrogates_do_not_break_the_page() -> None:
    url = "http://x.example/" + "a" * 5000 + "\udcff"
    for accept in (CHROME, None):
        status, _, body = block(decision(), url=url, accept=accept)
        assert status == 403 and len(body) < 20_000


@pytest.mark.parametrize(
    "contact, link",
    [
        ("it-help@example.com", "mailto:it-help@example.com"),
        ("https://help.example.com/access", "https://help.example.com/access"),
        ("the IT service desk, extension 4711", None),
        ("", None),
    ],
    ids=["mail", "web", "words", "none"],
)
def test_the_contact_is_named_and_linked_when_it_is_an_address(contact, link) -> None:
    _, _, body = block(decision(), contact=contact)
    hrefs = [v for k, v in parse(body).attrs if k == "href"]
    assert hrefs == ([link] if link else [])
    assert (contact or "your IT service desk") in text_of(body)
    assert "req-42" in text_of(body)


# -- status page ------------------------------------------------------------------

POLICY = """\
version: 1
timezone: Europe/Berlin
sites:
  facebook: {domains: [facebook.com, fbcdn.net]}
  linkedin: {domains: [linkedin.com]}
  tiktok: {domains: [tiktok.com]}
  xing: {domains: [xing.com]}
directory:
  groups:
    pr: [alice]
roles:
  marcom:
    members: ["group:pr"]
    access: {"*": full}
  everyone:
    members: [all]
    access:
      linkedin: read-only
      facebook: {level: full, windows: ["mon-fri 12:00-13:00"], daily_minutes: 20}
      xing: {level: full, daily_minutes: 10}
      "*": deny
unauthenticated: deny
unlisted: allow
"""


@pytest.fixture(scope="module")
def policy():
    return parse_policy(POLICY)


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
        "site": "facebook", "level": "full", "reason": "allowed", "window": "mon-fri 12:00-13:00",
        "minutes_used": 5, "minutes_left": 15, "next_window": None,
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
