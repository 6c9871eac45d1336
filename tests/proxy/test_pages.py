"""The block page: content negotiation, words, times, escaping (the status page: test_status.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from accessgate.decision import BLOCK_REASONS, Decision
from accessgate.policy.model import Level
from accessgate.proxy.pages import (
    INVALID_HOST,
    UNKNOWN_REASON,
    UNLISTED_DENIED,
    block_response,
    prefers_html,
    reason_sentence,
    relative,
)
from support.pagetext import HOSTILE, parse, text_of

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


@pytest.mark.parametrize("reason", BLOCK_REASONS)
def test_the_page_calls_the_site_by_its_display_name(reason) -> None:
    d = decision(reason, site="tiktok", host="www.tiktok.com", rule="roles.everyone.access.tiktok")
    text = text_of(block(d, site_name="TikTok", url="https://www.tiktok.com/")[2])
    assert "www.tiktok.com (part of TikTok) was blocked." in text
    assert reason_sentence(d, "TikTok") in text and "TikTok" in reason_sentence(d, "TikTok")
    assert "Tiktok" not in text and "tiktok" not in text.replace("www.tiktok.com", "").replace("access.tiktok", "")


def test_a_site_without_a_display_name_is_called_by_its_key_as_written() -> None:
    d = decision("outside-window", site="x", host="x.com", message="x is open only at set times (sat 10:00-12:00).")
    text = text_of(block(d, url="https://x.com/")[2])
    assert "x.com (part of x) was blocked." in text
    assert "You can use x only at set times" in text
    assert "x is open only at set times" in text and "X is" not in text
