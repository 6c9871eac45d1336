"""What people see: the block page (403) and their own standing at http://accessgate.status/.

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
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from datetime import timezone as dt_timezone
from functools import lru_cache
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from accessgate.decision import Decision, Identity
    from accessgate.policy.model import Policy
    from accessgate.decision.quota import QuotaLedger

STATUS_HOST = "accessgate.status"

# One plain sentence per reason code: (title, why).  `{site}` is filled in.
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
        "{site} is open to you only at set times, and this is not one of them.",
    ),
    "quota-exhausted": (
        "Daily time used up",
        "You have used up today's time allowance for {site}.",
    ),
    "unauthenticated": (
        "Sign-in required",
        "{site} is only available once you have signed in to the company proxy, "
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

_ACCENT = {"read-only": "#d69e2e", "outside-window": "#3182ce", "quota-exhausted": "#3182ce"}
_ACCENT_DEFAULT = "#c53030"

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Vary": "Accept",
}
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
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
) -> tuple[int, dict[str, str], bytes]:
    """The 403 for a blocked request: (status, headers, body).

    `timezone` is the policy's, for "opens again at"; without it times show
    in the zone of `now`.
    """
    tz = timezone or now.tzinfo
    opens_at = decision.opens_at.astimezone(tz) if decision.opens_at and tz else decision.opens_at
    headers = {
        "X-Accessgate-Decision": "block",
        "X-Accessgate-Reason": _header_safe(decision.reason),
        "X-Accessgate-Request-Id": _header_safe(request_id),
        **_SECURITY_HEADERS,
    }
    if not prefers_html(accept):
        body = {
            "decision": "block",
            "reason": decision.reason,
            "site": decision.site,
            "rule": decision.rule,
            "request_id": request_id,
            "message": decision.message or reason_sentence(decision),
            "opens_at": opens_at.isoformat(timespec="seconds") if opens_at else None,
            "contact": contact or None,
        }
        headers["Content-Type"] = _JSON
        return 403, headers, _json_bytes(body)

    title = REASONS.get(decision.reason, UNKNOWN_REASON)[0]
    host = decision.host or _host_of(url)
    name = decision.site or host or "this website"
    if decision.site and host:
        what = f"<strong>{_e(host)}</strong> (part of {_e(decision.site)}) was blocked."
    elif host:
        what = f"<strong>{_e(host)}</strong> was blocked."
    else:
        what = "This request was blocked."
    why = _e(reason_sentence(decision))
    detail = ""
    if decision.message and decision.message != reason_sentence(decision):
        detail = f'<p class="detail">{_e(_sentence(decision.message))}</p>'
    opens = ""
    if opens_at is not None and decision.reason in ("outside-window", "quota-exhausted"):
        opens = (
            f'<p class="opens">Access opens again <strong>{_e(when_local(opens_at, now))}</strong>'
            f" ({_e(_zone_name(opens_at))}), "
            f'<time datetime="{_e(opens_at.isoformat())}">{_e(relative(_until(opens_at, now)))}</time>.</p>'
        )
    if contact:
        contact_html = f"If you need {_e(name)} for your work, contact {_contact_html(contact)}."
    else:
        contact_html = f"If you need {_e(name)} for your work, contact your IT service desk."
    page = _template("block.html").substitute(
        title=_e(title),
        site_or_host=_e(name),
        accent=_ACCENT.get(decision.reason, _ACCENT_DEFAULT),
        what=what,
        why=why,
        detail=detail,
        opens=opens,
        contact=contact_html,
        request_id=_e(request_id),
        reason=_e(decision.reason),
        rule=_e(decision.rule),
        time=_e(_stamp(now, tz)),
        url=_e(_shorten(url)),
    )
    headers["Content-Type"] = _HTML
    return 403, headers, page.encode("utf-8", "replace")


def reason_sentence(decision: Decision) -> str:
    """Why, in one plain sentence, for the reason code of `decision`."""
    if decision.rule == INTERNAL_ERROR_RULE:
        return UNKNOWN_REASON[1]
    if decision.reason == "denied" and decision.site is None:
        return INVALID_HOST if decision.rule == "invalid-host" else UNLISTED_DENIED
    _, why = REASONS.get(decision.reason, UNKNOWN_REASON)
    return _sentence(why.format(site=decision.site or decision.host or "this website"))


def _sentence(text: str) -> str:
    # Site names are policy keys, often lower case; a sentence starts with a capital.
    return text[:1].upper() + text[1:]


# -- the status page -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteStanding:
    """One row of the status page: where a user stands with one site, now."""

    site: str
    level: str  # "full" | "read-only" | "none" (blocked now)
    window_text: str  # the grant's windows as written; "" for any time
    minutes_used: int | None  # today's minutes; None without a daily quota
    minutes_left: int | None
    next_window: datetime | None  # when a blocked site opens again
    reason: str = ""  # the decision's reason code


def standing(
    policy: Policy, identity: Identity, now: datetime, ledger: QuotaLedger | None
) -> list[SiteStanding]:
    """Where `identity` stands with every site of `policy` at `now`, by site name.

    Each site is decided like a GET to its first domain, so the page shows
    exactly what the proxy would do; the deciding grant gives window and quota.
    """
    from accessgate.decision import Request, decide, grants_for, local_day, minute_of
    from accessgate.decision.quota import NoQuotaUsed

    ledger = ledger if ledger is not None else NoQuotaUsed()
    rows: list[SiteStanding] = []
    for name in sorted(policy.sites):
        site = policy.sites[name]
        if site.domains:
            host = site.domains[0]
        elif site.networks:
            host = str(site.networks[0].network_address)
        else:
            continue
        decision = decide(Request("GET", (host,), "/", "https"), identity, policy, now, ledger)
        grants = grants_for(decision.roles, name, policy) if decision.roles else ()
        grant = next((g for _, g in grants if g.rule == decision.rule), None)
        if grant is None and grants:
            grant = max((g for _, g in grants), key=lambda g: g.level.rank)
        used = left = None
        if grant is not None and grant.daily_minutes is not None:
            used = ledger.usage(identity.subject, name, local_day(now, policy), minute_of(now)).used
            left = max(0, grant.daily_minutes - used)
        opens = decision.opens_at.astimezone(policy.timezone) if decision.opens_at else None
        rows.append(
            SiteStanding(
                site=name,
                level=decision.level.value if decision.allowed and decision.level else "none",
                window_text=", ".join(w.text for w in grant.windows) if grant else "",
                minutes_used=used,
                minutes_left=left,
                next_window=None if decision.allowed else opens,
                reason=decision.reason,
            )
        )
    return rows


_LEVEL_WORDS = {"full": "Full", "read-only": "Read-only", "none": "No access"}
_WHY_NONE = {
    "outside-window": "outside its hours",
    "quota-exhausted": "today's minutes are used up",
    "unauthenticated": "sign in to the proxy first",
    "denied": "not allowed for your roles",
}


def status_response(
    *,
    identity: Identity,
    roles: Sequence[str],
    rows: Iterable[SiteStanding],
    now: datetime,
    accept: str | None,
    timezone: tzinfo | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """The page at http://accessgate.status/: (status, headers, body)."""
    rows = list(rows)
    tz = timezone or now.tzinfo
    headers = dict(_SECURITY_HEADERS)
    if not prefers_html(accept):
        body = {
            "user": identity.user,
            "client_ip": str(identity.client_ip) if identity.client_ip else None,
            "roles": list(roles),
            "now": now.astimezone(tz).isoformat(timespec="seconds") if tz else now.isoformat(),
            "sites": [
                {
                    "site": r.site,
                    "level": r.level,
                    "reason": r.reason,
                    "window": r.window_text or None,
                    "minutes_used": r.minutes_used,
                    "minutes_left": r.minutes_left,
                    "next_window": (
                        r.next_window.isoformat(timespec="seconds") if r.next_window else None
                    ),
                }
                for r in rows
            ],
        }
        headers["Content-Type"] = _JSON
        return 200, headers, _json_bytes(body)

    if identity.user is not None:
        who = f"Signed in as <strong>{_e(identity.user)}</strong>"
    elif identity.client_ip is not None:
        who = f"Not signed in; your computer is <strong>{_e(str(identity.client_ip))}</strong>"
    else:
        who = "Not signed in"
    who += (
        f". Your roles: <strong>{_e(', '.join(roles))}</strong>."
        if roles
        else ". You have no role in the web access policy."
    )
    lines = []
    for r in rows:
        why = _WHY_NONE.get(r.reason, "") if r.level == "none" else ""
        level = (
            f'<span class="lvl {_e(r.level)}">{_e(_LEVEL_WORDS.get(r.level, r.level))}</span>'
            + (f'<span class="why">{_e(why)}</span>' if why else "")
        )
        dash = '<span class="empty">&ndash;</span>'
        closed = r.level == "none" and r.reason in ("denied", "unauthenticated")
        when = _e(r.window_text) if r.window_text else '<span class="empty">any time</span>'
        if closed:
            when = minutes = dash  # times and minutes do not matter to a closed site
        elif r.minutes_left is not None:
            minutes = f"{r.minutes_left} of {r.minutes_left + (r.minutes_used or 0)}"
            if r.minutes_used is not None and r.minutes_left == 0:
                minutes = f"0 (used {r.minutes_used})"
        else:
            minutes = '<span class="empty">no limit</span>'
        if r.next_window is not None:
            local = r.next_window.astimezone(tz) if tz else r.next_window
            opens = f'{_e(when_local(local, now))}<span class="why">{_e(relative(_until(local, now)))}</span>'
        else:
            opens = dash
        lines.append(
            f"        <tr><td>{_e(r.site)}</td><td>{level}</td><td>{when}</td>"
            f"<td>{minutes}</td><td>{opens}</td></tr>"
        )
    if not lines:
        lines.append(
            '        <tr><td colspan="5" class="empty">The policy names no sites.</td></tr>'
        )
    page = _template("status.html").substitute(
        who=who, rows="\n".join(lines), time=_e(_stamp(now, tz))
    )
    headers["Content-Type"] = _HTML
    return 200, headers, page.encode("utf-8", "replace")


# -- helpers -----------------------------------------------------------------------


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


def _until(at: datetime, now: datetime) -> timedelta:
    # Aware datetimes sharing a tzinfo subtract as wall clocks, which is an
    # hour off across a DST change; UTC never is.
    return at.astimezone(dt_timezone.utc) - now.astimezone(dt_timezone.utc)


def _zone_name(at: datetime) -> str:
    key = getattr(at.tzinfo, "key", None)
    return key or at.tzname() or "UTC"


def _stamp(now: datetime, tz: tzinfo | None) -> str:
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
        return f'<a href="mailto:{_e(text)}">{_e(text)}</a>'
    if text.startswith(("https://", "http://")) and " " not in text:
        return f'<a href="{_e(text)}">{_e(text)}</a>'
    return _e(text)


def _header_safe(value: str) -> str:
    # A header value must not carry line breaks or controls (response splitting).
    return "".join(ch for ch in str(value) if ch.isprintable() and ch not in "\r\n")[:200]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _json_bytes(body: dict) -> bytes:
    # ASCII escapes keep lone surrogates from a hostile URL encodable.
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


@lru_cache(maxsize=None)
def _template(name: str) -> Template:
    return Template(resources.files("accessgate.proxy").joinpath("templates", name).read_text("utf-8"))
