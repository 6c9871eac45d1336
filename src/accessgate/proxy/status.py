"""Every user's own standing at http://accessgate.status/, answered by the proxy itself.

The request hook asks `names_status` (on the Host names it has read anyway)
before it decides anything; such a request never reaches a site.  The page
shows, per site of the policy, the level now, the hours it is open, the
minutes left today and whether its connections are decrypted, each
computed by the engine as the proxy would decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Iterable, Sequence

from mitmproxy import http

from accessgate import decision as engine
from accessgate.auth.groups import GroupSource, sources_of
from accessgate.decision import inspection as insp
from accessgate.decision.quota import NoQuotaUsed
from accessgate.policy.model import Level
from accessgate.proxy.pages import (
    HTML_TYPE,
    JSON_TYPE,
    SECURITY_HEADERS,
    esc,
    json_bytes,
    prefers_html,
    relative,
    stamp,
    template,
    until,
    when_local,
)

if TYPE_CHECKING:
    from accessgate.decision import Identity
    from accessgate.decision.quota import QuotaLedger
    from accessgate.policy.model import Policy

STATUS_HOST = "accessgate.status"
_PREFIX = STATUS_HOST.split(".")[0]
_PREFIX_LEN = len(_PREFIX)


def names_status(flow: http.HTTPFlow, host_values: list[str]) -> bool:
    """Whether the request is for the status page: its URL's host or any Host header names it."""
    for name in (flow.request.data.host, *host_values):
        # The prefix first: a cheap "no" for nearly every request.
        if name[:_PREFIX_LEN].lower() == _PREFIX and name.lower().rstrip(".").split(":")[0] == STATUS_HOST:
            return True
    return False


def answer_status(
    flow: http.HTTPFlow, identity: Identity, policy: Policy, now: datetime, ledger: QuotaLedger | None,
    inspect_mode: str = insp.NEEDED,
) -> None:
    """Answer `flow` with the status page of `identity`."""
    roles = engine.roles_for(identity, policy)
    groups = sources_of(policy.user_groups.get(identity.user, ()), identity.groups) if identity.user else ()
    status, headers, body = status_response(
        identity=identity,
        roles=roles,
        groups=groups,
        rows=standing(policy, identity, now, ledger),
        now=now,
        accept=flow.request.headers.get("accept", ""),
        timezone=policy.timezone,
        decryption=decryption(policy, identity, now, ledger, inspect_mode),
    )
    flow.response = http.Response.make(status, body, dict(headers))


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
    continued_until: datetime | None = None  # a warn grant: open after a reason until then
    continue_minutes: int | None = None  # a warn grant: how long a reason opens it
    title: str = ""  # the site's display name (`name:`), "" when it has none

    @property
    def shown(self) -> str:
        """What the page calls the site."""
        return self.title or self.site


def standing(
    policy: Policy, identity: Identity, now: datetime, ledger: QuotaLedger | None
) -> list[SiteStanding]:
    """Where `identity` stands with every site of `policy` at `now`, by the name people read.

    Each site is decided like a GET to its first domain, so the page shows
    exactly what the proxy would do; the deciding grant gives window and quota.
    """
    ledger = ledger if ledger is not None else NoQuotaUsed()
    went_on = ledger if hasattr(ledger, "continued_until") else None  # the state store knows who continued
    rows: list[SiteStanding] = []
    for name in sorted(policy.sites, key=lambda key: (policy.sites[key].title.casefold(), key)):
        site = policy.sites[name]
        if site.domains:
            host = site.domains[0]
        elif site.networks:
            host = str(site.networks[0].network_address)
        else:
            continue
        decision = engine.decide(engine.Request("GET", (host,), "/", "https"), identity, policy, now, ledger, went_on)
        grants = engine.grants_for(decision.roles, name, policy) if decision.roles else ()
        grant = next((g for _, g in grants if decision.rule in (g.rule, g.continued_rule)), None)
        if grant is None and grants:
            grant = max((g for _, g in grants), key=lambda g: g.level.rank)
        used = left = None
        if grant is not None and grant.daily_minutes is not None:
            used = ledger.usage(identity.subject, name, engine.local_day(now, policy), engine.minute_of(now)).used
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
                **_continuation(decision, grant, identity, went_on),
                title=site.display_name,
            )
        )
    return rows


_SOURCE_WORDS = {"yaml": "the policy", "ldap": "the directory"}


def decryption(
    policy: Policy, identity: Identity, now: datetime, ledger: QuotaLedger | None, mode: str
) -> dict[str, tuple[bool, str]]:
    """Per site of `policy`: whether `identity`'s connections to it are decrypted now, and why
    (decision.inspection's code), as the proxy would choose for an ordinary connection."""
    found = {}
    for name, site in policy.sites.items():
        host = site.domains[0] if site.domains else str(site.networks[0].network_address) if site.networks else None
        if host is not None:
            result = insp.site_inspection(host, identity, policy, now, ledger, mode)
            found[name] = (result.decrypt, result.why)
    return found


# What the page says about decryption, by decision.inspection's code.
_DECRYPTED_WORDS = {
    insp.METHOD: "Yes: to tell reading from writing",
    insp.LEVEL: "Yes: each request is decided",
    insp.BLOCKED: "Yes: to show why it is blocked",
    insp.RECORDS: "Yes: each request is recorded",
    insp.EVERYTHING: "Yes: the proxy decrypts every site",
    insp.FULL: "No",
    insp.UNLISTED: "No",
    insp.NEVER: "No, never",
}
_DECRYPTION_NOTE = {
    insp.NEEDED: "Connections to sites that are not listed here are not decrypted, unless their server also "
                 "serves a listed site.",
    insp.ALL: "The proxy decrypts every connection but those its policy never decrypts.",
}


def _continuation(decision, grant, identity: Identity, went_on) -> dict:
    """A warn grant's part of a row: until when the user's reason keeps the site open, and for how long one does."""
    if grant is None or grant.continue_minutes is None or decision.level is not Level.WARN:
        return {}
    until = None
    if decision.allowed and went_on is not None:
        stamp = went_on.continued_until(identity.subject, decision.site)
        until = datetime.fromtimestamp(stamp, timezone.utc) if stamp is not None else None
    return {"continued_until": until, "continue_minutes": grant.continue_minutes}


_LEVEL_WORDS = {"full": "Full", "warn": "After a reason", "read-only": "Read-only", "none": "No access"}
_WHY_NONE = {
    "justification-required": "give a reason on its page to open it",
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
    groups: Sequence[GroupSource] = (),
    decryption: dict[str, tuple[bool, str]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """The page at http://accessgate.status/: (status, headers, body).

    `groups` are the user's groups with where each came from: the policy
    (`yaml`), the directory (`ldap`), or both. `decryption`, when given: per
    site, whether its connections are decrypted and why.
    """
    rows = list(rows)
    decryption = decryption if decryption is not None else {}
    tz = timezone or now.tzinfo
    headers = dict(SECURITY_HEADERS)
    if not prefers_html(accept):
        body = {
            "user": identity.user,
            "client_ip": str(identity.client_ip) if identity.client_ip else None,
            "roles": list(roles),
            "groups": [{"name": g.name, "sources": list(g.sources)} for g in groups],
            "now": now.astimezone(tz).isoformat(timespec="seconds") if tz else now.isoformat(),
            "sites": [
                {
                    "site": r.site,
                    "name": r.shown,
                    "level": r.level,
                    "reason": r.reason,
                    "window": r.window_text or None,
                    "minutes_used": r.minutes_used,
                    "minutes_left": r.minutes_left,
                    "next_window": (
                        r.next_window.isoformat(timespec="seconds") if r.next_window else None
                    ),
                    **(
                        {"decrypted": decryption[r.site][0], "decrypted_why": decryption[r.site][1]}
                        if r.site in decryption else {}
                    ),
                    "continued_until": (
                        r.continued_until.astimezone(tz).isoformat(timespec="seconds") if r.continued_until else None
                    ),
                    "continue_minutes": r.continue_minutes,
                }
                for r in rows
            ],
        }
        headers["Content-Type"] = JSON_TYPE
        return 200, headers, json_bytes(body)

    if identity.user is not None:
        who = f"Signed in as <strong>{esc(identity.user)}</strong>"
    elif identity.client_ip is not None:
        who = f"Not signed in; your computer is <strong>{esc(str(identity.client_ip))}</strong>"
    else:
        who = "Not signed in"
    who += (
        f". Your roles: <strong>{esc(', '.join(roles))}</strong>."
        if roles
        else ". You have no role in the web access policy."
    )
    if groups:
        who += " Your groups: " + ", ".join(
            f"<strong>{esc(g.name)}</strong> ({esc(' and '.join(_SOURCE_WORDS.get(s, s) for s in g.sources))})"
            for g in groups
        ) + "."
    lines = []
    for r in rows:
        why = _WHY_NONE.get(r.reason, "") if r.level == "none" else ""
        if r.continued_until is not None:
            left = relative(until(r.continued_until, now)).removeprefix("in ")
            why = f"open {left} more, after your reason"
        elif r.continue_minutes is not None and r.reason == engine.JUSTIFICATION_REQUIRED:
            why = f"give a reason on its page to open it for {r.continue_minutes} min"
        level = (
            f'<span class="lvl {esc(r.level)}">{esc(_LEVEL_WORDS.get(r.level, r.level))}</span>'
            + (f'<span class="why">{esc(why)}</span>' if why else "")
        )
        dash = '<span class="empty">&ndash;</span>'
        closed = r.level == "none" and r.reason in ("denied", "unauthenticated")
        when = esc(r.window_text) if r.window_text else '<span class="empty">any time</span>'
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
            opens = f'{esc(when_local(local, now))}<span class="why">{esc(relative(until(local, now)))}</span>'
        else:
            opens = dash
        decrypted = ""
        if decryption:
            shown, why = decryption.get(r.site, (False, ""))
            decrypted = f"<td>{esc(_DECRYPTED_WORDS.get(why, 'Yes' if shown else 'No'))}</td>"
        lines.append(
            f"        <tr><td>{esc(r.shown)}</td><td>{level}</td><td>{when}</td>"
            f"<td>{minutes}</td><td>{opens}</td>{decrypted}</tr>"
        )
    if not lines:
        lines.append(
            f'        <tr><td colspan="{6 if decryption else 5}" class="empty">The policy names no sites.</td></tr>'
        )
    mode = insp.ALL if any(why == insp.EVERYTHING for _, why in decryption.values()) else insp.NEEDED
    page = template("status.html").substitute(
        who=who, rows="\n".join(lines), time=esc(stamp(now, tz)),
        decrypted_head="<th>Decrypted</th>" if decryption else "",
        decryption_note=f" {esc(_DECRYPTION_NOTE[mode])}" if decryption else "",
    )
    headers["Content-Type"] = HTML_TYPE
    return 200, headers, page.encode("utf-8", "replace")
