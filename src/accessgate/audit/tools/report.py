"""The usage report: who used which site how much, what was blocked, per day, warn pages.

Active minutes are counted the way quotas count them: a minute counts for a
user and a site when the user made at least one allowed request to the site
in it (UTC minute buckets, so minutes never depend on the reader's zone).
Anonymous clients are counted per source address.  Unlisted hosts are not
governed, so they appear only in the totals.

`build_report` reads the log once into a small table and answers every
section from it; `render_text` and `render_html` only format.  The HTML is one
self-contained file: inline CSS and SVG, no scripts, no external references,
so it can be mailed or archived as evidence.  Values from the log (user
names, sites, reasons) come from clients in the end: both renderings show
their control characters as visible escapes, and the HTML escapes markup.
Sites are shown by the display names given (a policy's `name:`s, `names`);
the log itself records their keys.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from accessgate.audit.reader import AuditReader, naive_utc
from accessgate.audit.tools.output import safe_text, table

ANONYMOUS = "(anonymous {ip})"


@dataclass(frozen=True)
class UserSite:
    user: str
    site: str
    minutes: int
    allowed: int
    blocked: int


@dataclass(frozen=True)
class RoleSite:
    role: str
    site: str
    minutes: int
    allowed: int
    users: int


@dataclass(frozen=True)
class WarnSite:
    """What became of warn pages' forms for a site: reasons given (by how many users), forms refused."""

    site: str
    continued: int
    users: int
    refused: int


@dataclass(frozen=True)
class Day:
    day: date
    minutes: int
    allowed: int
    blocked: int
    users: int


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    files: int
    requests: int
    allowed: int
    blocked: int
    unlisted: int
    users: int
    user_sites: list[UserSite] = field(default_factory=list)
    blocked_by_reason: list[tuple[str, int]] = field(default_factory=list)
    blocked_by_site: list[tuple[str, str, int]] = field(default_factory=list)  # site, reason, count
    top_sites_per_role: list[RoleSite] = field(default_factory=list)
    days: list[Day] = field(default_factory=list)
    warn_by_site: list[WarnSite] = field(default_factory=list)


TOP_PER_ROLE = 5

_WHO = "coalesce(\"user\", replace('" + ANONYMOUS + "', '{ip}', coalesce(client_ip, '?')))"


def build_report(log: AuditReader, since: datetime, until: datetime) -> Report:
    log.sql(
        f"""
        CREATE OR REPLACE TEMP TABLE report_rows AS
        SELECT ts, date_trunc('minute', ts) AS minute, {_WHO} AS who, roles, site,
               decision, reason
        FROM audit
        WHERE event = 'access' AND ts >= ? AND ts < ?
        """,
        [since, until],
    )
    q = lambda sql: log.sql(sql).rows  # noqa: E731
    requests, allowed, blocked, unlisted, users = q(
        """
        SELECT count(*), count(*) FILTER (decision = 'allow'), count(*) FILTER (decision = 'block'),
               count(*) FILTER (site IS NULL), count(DISTINCT who)
        FROM report_rows
        """
    )[0]
    user_sites = [
        UserSite(*row)
        for row in q(
            """
            SELECT who, site,
                   count(DISTINCT minute) FILTER (decision = 'allow') AS minutes,
                   count(*) FILTER (decision = 'allow') AS allowed,
                   count(*) FILTER (decision = 'block') AS blocked
            FROM report_rows WHERE site IS NOT NULL
            GROUP BY who, site ORDER BY minutes DESC, allowed DESC, blocked DESC, who, site
            """
        )
    ]
    by_reason = q(
        "SELECT coalesce(reason, '?'), count(*) FROM report_rows WHERE decision = 'block' "
        "GROUP BY 1 ORDER BY 2 DESC, 1"
    )
    by_site = q(
        "SELECT coalesce(site, 'unlisted'), coalesce(reason, '?'), count(*) FROM report_rows "
        "WHERE decision = 'block' GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    )
    top = [
        RoleSite(*row)
        for row in q(
            f"""
            WITH per_role AS (
              SELECT unnest(roles) AS role, who, site, minute FROM report_rows
              WHERE decision = 'allow' AND site IS NOT NULL
            )
            SELECT role, site, count(DISTINCT (who, minute)) AS minutes, count(*) AS allowed,
                   count(DISTINCT who) AS users
            FROM per_role GROUP BY role, site
            QUALIFY row_number() OVER (PARTITION BY role ORDER BY minutes DESC, allowed DESC, site) <= {TOP_PER_ROLE}
            ORDER BY role, minutes DESC, allowed DESC, site
            """
        )
    ]
    counted = {
        row[0]: row
        for row in q(
            """
            SELECT ts::DATE AS day,
                   count(DISTINCT (who, site, minute)) FILTER (decision = 'allow' AND site IS NOT NULL),
                   count(*) FILTER (decision = 'allow'), count(*) FILTER (decision = 'block'),
                   count(DISTINCT who)
            FROM report_rows GROUP BY day
            """
        )
    }
    warn_by_site = [
        WarnSite(*row)
        for row in log.sql(
            f"""
            SELECT coalesce(site, 'unlisted'),
                   count(*) FILTER (event = 'warn_continued'),
                   count(DISTINCT {_WHO}) FILTER (event = 'warn_continued'),
                   count(*) FILTER (event = 'warn_refused')
            FROM audit
            WHERE event IN ('warn_continued', 'warn_refused') AND ts >= ? AND ts < ?
            GROUP BY 1 ORDER BY 2 DESC, 4 DESC, 1
            """,
            [since, until],
        ).rows
    ]
    days = []
    day = naive_utc(since).date()
    last = (naive_utc(until) - timedelta(microseconds=1)).date()
    while day <= last and len(days) < 3660:
        row = counted.get(day)
        days.append(Day(day, *row[1:]) if row else Day(day, 0, 0, 0, 0))
        day += timedelta(days=1)
    return Report(
        since=since, until=until, files=len(log.files),
        requests=requests, allowed=allowed, blocked=blocked, unlisted=unlisted, users=users,
        user_sites=user_sites, blocked_by_reason=by_reason, blocked_by_site=by_site,
        top_sites_per_role=top, days=days, warn_by_site=warn_by_site,
    )  # fmt: skip


# -- text ------------------------------------------------------------------------


def _fmt_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _named(site: str, names: Mapping[str, str] | None) -> str:
    """What the report calls `site`: its display name, else its key."""
    return names.get(site, site) if names else site


def render_text(report: Report, top: int = 20, names: Mapping[str, str] | None = None) -> str:
    """The report as text; `names` maps site keys to display names."""
    out = [
        f"Usage report {_fmt_time(report.since)} .. {_fmt_time(report.until)} ({report.files} file(s))",
        f"{report.requests} requests: {report.allowed} allowed, {report.blocked} blocked; "
        f"{report.unlisted} to unlisted hosts; {report.users} users",
        "",
        "Active minutes and requests per user and site",
    ]

    def section(columns, rows) -> None:
        shown = rows[:top]
        out.append(table(columns, shown).rstrip("\n"))
        if len(rows) > len(shown):
            out.append(f"… {len(rows) - len(shown)} more rows (see --html, or raise --top)")
        out.append("")

    section(
        ("user", "site", "minutes", "allowed", "blocked"),
        [(r.user, _named(r.site, names), r.minutes, r.allowed, r.blocked) for r in report.user_sites],
    )
    out.append("Blocked attempts by reason")
    section(("reason", "blocked"), report.blocked_by_reason)
    out.append(f"Top sites per role (by active minutes, at most {TOP_PER_ROLE} each)")
    section(
        ("role", "site", "minutes", "allowed", "users"),
        [(r.role, _named(r.site, names), r.minutes, r.allowed, r.users) for r in report.top_sites_per_role],
    )
    if report.warn_by_site:
        out.append("Warn pages: reasons given (audit query --event warn_continued shows them) and forms refused")
        section(
            ("site", "continued", "users", "refused"),
            [(w.site, w.continued, w.users, w.refused) for w in report.warn_by_site],
        )
    out.append("Per day (UTC)")
    out.append(
        table(
            ("day", "minutes", "allowed", "blocked", "users"),
            [(d.day.isoformat(), d.minutes, d.allowed, d.blocked, d.users) for d in report.days],
        ).rstrip("\n")
    )
    return "\n".join(out) + "\n"


# -- HTML ------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.kpi{display:flex;gap:2em;flex-wrap:wrap}.kpi div{background:#f5f7fa;padding:.6em 1em;border-radius:6px}
.kpi b{display:block;font-size:1.4em}svg text{font:11px system-ui,sans-serif;fill:#444}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}
"""

_ALLOW_COLOR = "#3b7dd8"
_BLOCK_COLOR = "#d8553b"


def _esc(value: object) -> str:
    """HTML text of a value from the log: markup escaped, control characters made visible."""
    return html.escape(safe_text(value), quote=True)


def _html_table(columns: tuple[str, ...], rows, numeric: tuple[int, ...]) -> str:
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{_esc(c)}</th>' for i, c in enumerate(columns))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"n" if i in numeric else ""}">{_esc(v)}</td>' for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(columns)}">none</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def day_chart(days: list[Day], width: int = 1000, height: int = 220) -> str:
    """Bars of active minutes per day, with blocked attempts as a line of dots."""
    pad_l, pad_b, pad_t = 50, 30, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    n = max(len(days), 1)
    top_min = max([d.minutes for d in days] + [1])
    top_blk = max([d.blocked for d in days] + [1])
    slot = plot_w / n
    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="active minutes and blocked attempts per day">'
    ]
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" stroke="#999"/>')
    parts.append(f'<text x="{pad_l - 6}" y="{pad_t + 8}" text-anchor="end">{top_min}</text>')
    parts.append(f'<text x="{pad_l - 6}" y="{pad_t + plot_h}" text-anchor="end">0</text>')
    label_every = max(1, n // 15)
    for i, d in enumerate(days):
        x = pad_l + i * slot
        h = plot_h * d.minutes / top_min
        parts.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{pad_t + plot_h - h:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{h:.1f}" fill="{_ALLOW_COLOR}"><title>{d.day}: {d.minutes} active minutes, '
            f"{d.allowed} allowed, {d.blocked} blocked</title></rect>"
        )
        if d.blocked:
            y = pad_t + plot_h - plot_h * d.blocked / top_blk
            parts.append(
                f'<circle cx="{x + slot / 2:.1f}" cy="{y:.1f}" r="3" fill="{_BLOCK_COLOR}">'
                f"<title>{d.day}: {d.blocked} blocked</title></circle>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - 10}" text-anchor="middle">{d.day:%m-%d}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(items: list[tuple[str, int]], color: str = _BLOCK_COLOR, width: int = 600) -> str:
    """Horizontal bars, one per (label, value)."""
    row_h, pad_l = 22, 140
    height = row_h * max(len(items), 1) + 10
    top = max([v for _, v in items] + [1])
    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
    ]
    for i, (label, value) in enumerate(items):
        y = 5 + i * row_h
        w = (width - pad_l - 60) * value / top
        parts.append(f'<text x="{pad_l - 8}" y="{y + 14}" text-anchor="end">{_esc(label)}</text>')
        parts.append(f'<rect x="{pad_l}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{color}"/>')
        parts.append(f'<text x="{pad_l + w + 6:.1f}" y="{y + 14}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report, names: Mapping[str, str] | None = None) -> str:
    """The report as one self-contained HTML page; `names` maps site keys to display names."""
    title = f"accessgate usage {report.since:%Y-%m-%d} .. {report.until:%Y-%m-%d}"
    kpis = [
        ("requests", report.requests), ("allowed", report.allowed), ("blocked", report.blocked),
        ("to unlisted hosts", report.unlisted), ("users", report.users),
        ("active minutes", sum(r.minutes for r in report.user_sites)),
    ]  # fmt: skip
    body = [
        f"<h1>{_esc(title)}</h1>",
        f"<p>{_esc(_fmt_time(report.since))} to {_esc(_fmt_time(report.until))}, "
        f"from {report.files} log file(s). A minute is active when the user made at least one "
        "allowed request to the site in it (UTC minutes).</p>",
        '<div class="kpi">' + "".join(f"<div><b>{v}</b>{_esc(k)}</div>" for k, v in kpis) + "</div>",
        "<h2>Per day</h2>",
        f'<p class="legend"><span style="background:{_ALLOW_COLOR}"></span>active minutes'
        f'<span style="background:{_BLOCK_COLOR}"></span>blocked attempts (own scale)</p>',
        day_chart(report.days),
        _html_table(
            ("day", "active minutes", "allowed", "blocked", "users"),
            [(d.day, d.minutes, d.allowed, d.blocked, d.users) for d in report.days],
            (1, 2, 3, 4),
        ),
        "<h2>Blocked attempts by reason</h2>",
        bar_chart(report.blocked_by_reason),
        _html_table(("site", "reason", "blocked"),
                    [(_named(site, names), reason, n) for site, reason, n in report.blocked_by_site], (2,)),
        f"<h2>Top sites per role</h2><p>By active minutes, at most {TOP_PER_ROLE} per role; "
        "a client with several roles counts in each.</p>",
        _html_table(
            ("role", "site", "active minutes", "allowed", "users"),
            [(r.role, _named(r.site, names), r.minutes, r.allowed, r.users) for r in report.top_sites_per_role],
            (2, 3, 4),
        ),
        "<h2>Per user and site</h2>",
        _html_table(
            ("user", "site", "active minutes", "allowed", "blocked"),
            [(r.user, _named(r.site, names), r.minutes, r.allowed, r.blocked) for r in report.user_sites],
            (2, 3, 4),
        ),
    ]
    if report.warn_by_site:
        body += [
            "<h2>Warn pages</h2><p>Reasons given on warn pages (the site then opened for the user) and "
            "forms the proxy refused; <code>accessgate audit query --event warn_continued</code> lists "
            "the reasons.</p>",
            _html_table(
                ("site", "reasons given", "users", "forms refused"),
                [(w.site, w.continued, w.users, w.refused) for w in report.warn_by_site],
                (1, 2, 3),
            ),
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
