"""The block page (403), and what it shares with the status page (status.py).

Both answer HTML to browsers and JSON to everything else.  Every value on a
page passes through `html.escape`, since the URL, the host and even the user
name come from the client; the pages load nothing from outside (inline CSS,
a Content-Security-Policy that forbids scripts), so they render on a network
where the block is the very thing in the way.
"""

from __future__ import annotations

import html
import json
import math
import re
from datetime import date, datetime, timedelta, tzinfo
from datetime import timezone as dt_timezone
from functools import lru_cache
from importlib import resources
from string import Template
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accessgate.decision import Decision

# One plain sentence per reason code: (title, why).  `{site}` is filled in
# with the site's display name, as written: no sentence starts with it.
REASONS: dict[str, tuple[str, str]] = {
    "denied": (
        "Access blocked",
        "Your organization's web access policy does not allow you to use {site}.",
    ),
    "read-only": (
        "Read-only access",
        "You can view {site}, but not post, upload or change anything there: "
        "your access to it is read-only.",
    ),
    "outside-window": (
        "Not available right now",
        "You can use {site} only at set times, and this is not one of them.",
    ),
    "quota-exhausted": (
        "Daily time used up",
        "You have used up today's time allowance for {site}.",
    ),
    "justification-required": (
        "Tell us why you need it",
        "Your organization's web access policy lets you use {site} when you say why you need it: "
        "open it in your browser to get the page that asks for a reason.",
    ),
    "unauthenticated": (
        "Sign-in required",
        "You can use {site} only once you have signed in to the company proxy, "
        "and this request came without a sign-in.",
    ),
}
# Blocks that no reason code above describes: accessgate failed and closed.
UNKNOWN_REASON = (
    "Access blocked",
    "The access check could not be completed, so the request was blocked to be safe. "
    "Trying again in a moment usually works.",
)
INTERNAL_ERROR_RULE = "internal-error"  # the addon's rule for a fail-closed block
UNLISTED_DENIED = "This website is not on your organization's list of allowed websites."
INVALID_HOST = "The address of this request is not a valid website name, so it was blocked."

_ACCENT = {"read-only": "#d69e2e", "justification-required": "#d69e2e", "outside-window": "#3182ce", "quota-exhausted": "#3182ce"}
_ACCENT_DEFAULT = "#c53030"

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Vary": "Accept",
}
HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json"
_URL_SHOWN = 300  # characters of the URL on the page; the rest is an ellipsis


def block_response(
    decision: Decision,
    *,
    request_id: str,
    contact: str,
    url: str,
    now: datetime,
    accept: str | None,
    timezone: tzinfo | None = None,
    site_name: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """The 403 for a blocked request: (status, headers, body).

    `timezone` is the policy's, for "opens again at"; without it times show
    in the zone of `now`.  `site_name` is the site's display name (the
    policy's `name:`), shown wherever the page names the site.
    """
    tz = timezone or now.tzinfo
    opens_at = decision.opens_at.astimezone(tz) if decision.opens_at and tz else decision.opens_at
    headers = {
        "X-Accessgate-Decision": "block",
        "X-Accessgate-Reason": _header_safe(decision.reason),
        "X-Accessgate-Request-Id": _header_safe(request_id),
        **SECURITY_HEADERS,
    }
    if not prefers_html(accept):
        body = {
            "decision": "block",
            "reason": decision.reason,
            "site": decision.site,
            "rule": decision.rule,
            "request_id": request_id,
            "message": decision.message or reason_sentence(decision, site_name),
            "opens_at": opens_at.isoformat(timespec="seconds") if opens_at else None,
            "contact": contact or None,
        }
        headers["Content-Type"] = JSON_TYPE
        return 403, headers, json_bytes(body)

    title = REASONS.get(decision.reason, UNKNOWN_REASON)[0]
    host = decision.host or _host_of(url)
    site = site_name or decision.site
    name = site or host or "this website"
    if site and host:
        what = f"<strong>{esc(host)}</strong> (part of {esc(site)}) was blocked."
    elif host:
        what = f"<strong>{esc(host)}</strong> was blocked."
    else:
        what = "This request was blocked."
    sentence = reason_sentence(decision, site_name)
    why = esc(sentence)
    detail = ""
    if decision.message and decision.message != sentence:
        detail = f'<p class="detail">{esc(decision.message)}</p>'
    opens = ""
    if opens_at is not None and decision.reason in ("outside-window", "quota-exhausted"):
        opens = (
            f'<p class="opens">Access opens again <strong>{esc(when_local(opens_at, now))}</strong>'
            f" ({esc(_zone_name(opens_at))}), "
            f'<time datetime="{esc(opens_at.isoformat())}">{esc(relative(until(opens_at, now)))}</time>.</p>'
        )
    if contact:
        contact_html = f"If you need {esc(name)} for your work, contact {_contact_html(contact)}."
    else:
        contact_html = f"If you need {esc(name)} for your work, contact your IT service desk."
    page = template("block.html").substitute(
        title=esc(title),
        site_or_host=esc(name),
        accent=_ACCENT.get(decision.reason, _ACCENT_DEFAULT),
        what=what,
        why=why,
        detail=detail,
        opens=opens,
        contact=contact_html,
        request_id=esc(request_id),
        reason=esc(decision.reason),
        rule=esc(decision.rule),
        time=esc(stamp(now, tz)),
        url=esc(_shorten(url)),
    )
    headers["Content-Type"] = HTML_TYPE
    return 403, headers, page.encode("utf-8", "replace")


def reason_sentence(decision: Decision, site_name: str | None = None) -> str:
    """Why, in one plain sentence, for the reason code of `decision` (the site called `site_name`)."""
    if decision.rule == INTERNAL_ERROR_RULE:
        return UNKNOWN_REASON[1]
    if decision.reason == "denied" and decision.site is None:
        return INVALID_HOST if decision.rule == "invalid-host" else UNLISTED_DENIED
    _, why = REASONS.get(decision.reason, UNKNOWN_REASON)
    return why.format(site=site_name or decision.site or decision.host or "this website")


# -- shared with the status page -------------------------------------------------------


def prefers_html(accept: str | None) -> bool:
    """True when `accept` ranks text/html above application/json (RFC 9110 q-values).

    Each type takes the q of its most specific matching range; a tie (`*/*`,
    as curl sends) or no header at all means JSON.
    """
    if not accept:
        return False
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        fields = part.strip().split(";")
        media = fields[0].strip().lower()
        if not media:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        ranges[media] = max(q, ranges.get(media, 0.0))

    def quality(*candidates: str) -> float:
        for media in candidates:
            if media in ranges:
                return ranges[media]
        return 0.0

    html_q = max(
        quality("text/html", "text/*", "*/*"),
        quality("application/xhtml+xml", "application/*", "*/*"),
    )
    json_q = quality("application/json", "application/*", "*/*")
    return html_q > json_q


def relative(delta: timedelta) -> str:
    """`in 2 h 5 min`: how long until, rounded up to the minute."""
    seconds = delta.total_seconds()
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return "in less than a minute"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"in {hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"in {days} day{'s' if days != 1 else ''}" + (f" {hours} h" if hours else "")


def when_local(at: datetime, now: datetime) -> str:
    """`today at 12:00`, `tomorrow at 08:00`, `on Monday 30 November at 12:00`, in `at`'s zone."""
    today = now.astimezone(at.tzinfo).date() if at.tzinfo else now.date()
    clock = at.strftime("%H:%M")
    day: date = at.date()
    if day == today:
        return f"today at {clock}"
    if day == today + timedelta(days=1):
        return f"tomorrow at {clock}"
    return f"on {at.strftime('%A')} {day.day} {at.strftime('%B')} at {clock}"


def until(at: datetime, now: datetime) -> timedelta:
    # Aware datetimes sharing a tzinfo subtract as wall clocks, which is an
    # hour off across a DST change; UTC never is.
    return at.astimezone(dt_timezone.utc) - now.astimezone(dt_timezone.utc)


def _zone_name(at: datetime) -> str:
    key = getattr(at.tzinfo, "key", None)
    return key or at.tzname() or "UTC"


def stamp(now: datetime, tz: tzinfo | None) -> str:
    local = now.astimezone(tz) if tz else now
    return local.strftime("%Y-%m-%d %H:%M:%S ") + _zone_name(local)


def _host_of(url: str) -> str:
    rest = url.split("://", 1)[1] if "://" in url else url
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return authority.rsplit("@", 1)[-1]


def _shorten(url: str) -> str:
    return url if len(url) <= _URL_SHOWN else url[:_URL_SHOWN] + "\u2026"


def _contact_html(contact: str) -> str:
    """An address becomes a mailto: link, a URL a link; anything else is text."""
    text = contact.strip()
    if "@" in text and " " not in text and ":" not in text:
        return f'<a href="mailto:{esc(text)}">{esc(text)}</a>'
    if text.startswith(("https://", "http://")) and " " not in text:
        return f'<a href="{esc(text)}">{esc(text)}</a>'
    return esc(text)


def _header_safe(value: str) -> str:
    # A header value must not carry line breaks or controls (response splitting).
    return "".join(ch for ch in str(value) if ch.isprintable() and ch not in "\r\n")[:200]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def json_bytes(body: dict) -> bytes:
    # ASCII escapes keep lone surrogates from a hostile URL encodable.
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


_INCLUDE = re.compile(r"^/\* include ([a-z]+\.css) \*/$", re.M)


@lru_cache(maxsize=None)
def template(name: str) -> Template:
    """A page template; a line `/* include NAME.css */` takes in a style sheet the pages share."""
    folder = resources.files("accessgate.proxy").joinpath("templates")
    text = folder.joinpath(name).read_text("utf-8")
    return Template(_INCLUDE.sub(lambda m: folder.joinpath(m.group(1)).read_text("utf-8").rstrip("\n"), text))
