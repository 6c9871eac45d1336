"""Ask the engine a question written by a person, and report its answer.

`accessgate explain`, `accessgate test` (and anything else that decides a
request typed by hand) turn a URL, a method, headers, a user, a client
address and a time into the engine's `Request`, `Identity` and `now`, and
a `Decision` back into a report: a JSON-ready dict and its text form.
Pure: no I/O, no clock unless the caller passes none.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone, tzinfo
from zoneinfo import ZoneInfo

from accessgate.decision.content import BODY_LIMIT, Claimed, Content
from accessgate.decision.rules import operation_said, operations_asked
from accessgate.decision.types import READ_ONLY, Decision, Identity, Request
from accessgate.policy.model import Level, Policy
from accessgate.decision.quota import QuotaUsage


def request_from_url(
    url: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()
) -> Request:
    """The request a client sends for `url`, as the engine sees it.

    Its hosts are the URL's host (with its port, without userinfo), as the
    proxy sees it in the absolute-form target, plus every `Host` header
    given: the engine decides each and the strictest stands.  Header names
    are lower-cased, as the engine expects.
    """
    text = url.strip()
    if "://" not in text:
        # `www.facebook.com/path` is what people type; read it as a browser would.
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"'{url}' is not a valid URL ({exc}); write it like https://www.example.com/") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"'{url}' is not an http:// or https:// URL")
    authority = parts.netloc.rpartition("@")[2]
    lowered = tuple((name.strip().lower(), value.strip()) for name, value in headers)
    hosts = tuple(h for h in (authority, *(v for k, v in lowered if k == "host")) if h)
    if not hosts:
        raise ValueError(f"'{url}' names no host; write it like https://www.example.com/")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Request(
        method=method.strip().upper() or "GET",
        hosts=hosts,
        path=path,
        scheme=parts.scheme,
        headers=lowered,
    )


def with_content(
    request: Request, headers: tuple[tuple[str, str], ...], body: bytes | None, operation: str | None
) -> Request:
    """`request` with what it says it does: its headers and `body` (as the proxy
    reads it: a body over BODY_LIMIT is not read), or an `operation` written
    down (`CometNewsFeedPaginationQuery`, `query Feed`).  Neither: unchanged."""
    if operation is not None:
        return request._replace(content=Claimed(operation))
    if body is None:
        return request
    lowered = tuple((name.strip().lower(), value.strip()) for name, value in headers)
    query = request.path.partition("?")[2]
    if len(body) > BODY_LIMIT:
        return request._replace(content=Content(lowered, None, f"its body is over {BODY_LIMIT // 1024} KiB", query))
    return request._replace(content=Content(lowered, body, query=query))


def parse_header(text: str) -> tuple[str, str]:
    """`'Name: value'` -> (name, value)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ValueError(f"header '{text}' is not 'Name: value'; write it like 'Host: www.example.com'")
    return name.strip(), value.strip()


def identity(user: str | None, client_ip: str | None, groups: frozenset[str] = frozenset()) -> Identity:
    """Who asks.  `groups` are the directory's (the engine reads the policy's own groups itself)."""
    ip = None
    if client_ip:
        try:
            ip = ipaddress.ip_address(client_ip.strip())
        except ValueError:
            raise ValueError(f"'{client_ip}' is not an IP address; write one like 10.1.2.3 or 2001:db8::1") from None
    return Identity(user=user or None, groups=groups if user else frozenset(), client_ip=ip)


def parse_time(text: str | None, tz: tzinfo, now: datetime | None = None) -> datetime:
    """An aware time from ISO `text`; without an offset it is read in `tz`.

    No `text` means `now` (or the clock, if `now` is None too).
    """
    if not text:
        return now if now is not None else datetime.now(timezone.utc)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"'{text}' is not an ISO time; write it like 2026-11-23T12:30:00 "
            "(read in the policy's time zone) or 2026-11-23T12:30:00+01:00"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


@dataclass(frozen=True, slots=True)
class UsedMinutes:
    """A quota ledger in which `minutes` are already used today, everywhere.

    For "what if" questions: `explain --quota-used 20` shows the decision
    after 20 minutes on each site today.
    """

    minutes: int

    def usage(self, subject: str, site: str, day: date, minute: int) -> QuotaUsage:
        return QuotaUsage(self.minutes, False)

    def mark(self, subject: str, site: str, day: date, minute: int) -> int:
        return self.minutes


@dataclass(frozen=True, slots=True)
class ContinuedEverywhere:
    """Continuations in which the user gave a reason on every warn page, until `until` (Unix time).

    For "what if" questions: `explain --continued` shows the decision after
    the warn page.
    """

    until: float

    def continued_until(self, subject: str, site: str) -> float | None:
        return self.until


def continue_minutes(decision: Decision, policy: Policy) -> int | None:
    """How long a reason opens the site, when a warn grant decided `decision`."""
    if decision.role is None or decision.site is None or decision.level is not Level.WARN:
        return None
    access = policy.roles[decision.role].access
    grant = access.get(decision.site) or access.get("*")
    return grant.continue_minutes if grant is not None else None


def report(
    decision: Decision,
    policy: Policy,
    *,
    request: Request,
    who: Identity,
    at: datetime,
    url: str | None = None,
    groups: Sequence[tuple[str, Sequence[str]]] = (),
    directory: str | None = None,
) -> dict[str, object]:
    """The decision and what it was decided about, ready for `json.dumps`.

    `groups` are the user's groups with their sources (`yaml`, `ldap`);
    `directory` says how the directory answered, when it was asked.
    """
    tz = policy.timezone
    return {
        "decision": decision.decision,
        "reason": decision.reason,
        "site": decision.site,
        "site_name": policy.site_title(decision.site),
        "level": decision.level.value if decision.level is not None else None,
        "rule": decision.rule,
        "role": decision.role,
        "roles": list(decision.roles),
        "host": decision.host,
        "opens_at": decision.opens_at.astimezone(tz).isoformat() if decision.opens_at else None,
        "continue_minutes": continue_minutes(decision, policy),
        "message": decision.message,
        "user": who.user,
        "groups": [{"name": name, "sources": list(sources)} for name, sources in groups],
        "directory": directory,
        "client_ip": str(who.client_ip) if who.client_ip is not None else None,
        "method": request.method,
        "url": url,
        "hosts": list(request.hosts),
        "at": at.astimezone(tz).isoformat(),
        "timezone": str(tz),
        "policy": policy.digest,
        **_operation(decision, policy, request),
    }


def _operation(decision: Decision, policy: Policy, request: Request) -> dict[str, object]:
    """`operation` (what the request says it runs) where a rule with an operation
    decides it; and a hint where such a rule would, had it been told."""
    site = policy.sites.get(decision.site) if decision.site is not None else None
    if site is None or not operations_asked(request, site):
        return {}
    if request.content is None:
        hint = "" if decision.reason != READ_ONLY else (
            "a read_only_allow rule with an operation covers this request: give --body FILE "
            "(with --header 'Content-Type: ...') or --operation NAME to decide it on what it says it does"
        )
        return {"operation": None, "hint": hint} if hint else {}
    return {"operation": operation_said(request, site)}


def render(data: dict[str, object]) -> str:
    """The text form of `report(...)`: one `label  value` line each."""
    dash = "-"
    lines = [
        ("decision", data["decision"]),
        ("reason", data["reason"]),
    ]
    if data.get("message"):
        lines.append(("", data["message"]))
    lines += [
        ("site", _site(data)),
        ("level", data["level"] or dash),
        ("role", data["role"] or dash),
        ("rule", data["rule"] or dash),
        ("roles", ", ".join(data["roles"]) or "(none)"),  # type: ignore[arg-type]
        ("user", data["user"] or "(anonymous)"),
    ]
    if data.get("groups"):
        lines.append(("groups", ", ".join(f"{g['name']} ({', '.join(g['sources'])})"  # type: ignore[index]
                                          for g in data["groups"])))  # type: ignore[union-attr]
    if data.get("directory"):
        lines.append(("directory", data["directory"]))
    lines += [
        ("client", data["client_ip"] or dash),
        ("host", data["host"] or dash),
        ("at", _when(str(data["at"]), str(data["timezone"]))),
    ]
    if data.get("continue_minutes") is not None:
        if data["decision"] == "block":
            then = (f"a page load gets the warn page; a reason given there opens {data['site']} "
                    f"for {data['continue_minutes']} minutes (other requests get the reason code)")
        else:
            then = f"allowed: the user gave a reason on the warn page ({data['continue_minutes']} minutes each)"
        lines.append(("then", then))
    if "operation" in data:
        lines.append(("operation", data["operation"] or "(none given)"))
    if data.get("hint"):
        lines.append(("hint", data["hint"]))
    if data.get("opens_at"):
        lines.append(("opens at", _when(str(data["opens_at"]), str(data["timezone"]))))
    elif data["reason"] in ("outside-window", "quota-exhausted"):
        lines.append(("opens at", "(never: no window of this grant opens again)"))
    lines.append(("policy", str(data["policy"])[:12]))
    return "\n".join(f"{label:<10}{value}".rstrip() for label, value in lines)


def _site(data: dict[str, object]) -> str:
    """The site as people read it, with the key that rules and the audit log use."""
    site, name = data["site"], data.get("site_name")
    if not site:
        return "(none: the host is in no site)"
    return f"{name} ({site})" if name and name != site else str(site)


def _when(iso: str, zone: str) -> str:
    moment = datetime.fromisoformat(iso).astimezone(ZoneInfo(zone))
    return f"{moment:%a %Y-%m-%d %H:%M:%S %Z} ({zone})"
