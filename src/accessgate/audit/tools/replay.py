"""Replay: decide logged requests again under a candidate policy, before it goes live.

Each logged access record becomes the request and identity it came from
(method, scheme, host and path; user and client address), decided with
`engine.decide` at the record's own time, so windows judge the hour it
happened.  Group membership comes from the candidate policy's directory.
Quotas replay realistically: a fresh `MemoryLedger` counts the minutes that
the candidate policy itself allows, in log order.  Warn grants too: each
`warn_continued` record (a user gave a reason) opens the site for that user
for the candidate policy's `continue_minutes`, if it warns there at all.

Not replayable from the log: request headers (method overrides, WebSocket
upgrades) and the other names a request gave for its host, so such requests
are decided on the logged host and method alone.  A write decided on what it
said it does replays with its logged `operation`, as every place a rule
reads saying that name (`query Feed` for a GraphQL document); its body is
not in the log.

Pure: no I/O.  The command (`accessgate replay`) feeds records and prints
`render_text()` or the summary's `as_dict()`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from accessgate.audit.pseudonym import is_pseudonym, pseudonymize
from accessgate.audit.tools.output import safe_text, table
from accessgate.decision import Claimed, Identity, Request, decide, local_day, minute_of
from accessgate.decision.continuations import MemoryContinuations
from accessgate.decision.explain import continue_minutes
from accessgate.decision.quota import MemoryLedger
from accessgate.decision.types import JUSTIFICATION_REQUIRED
from accessgate.policy.model import MemberKind, Policy

ALLOW_TO_BLOCK = "allow_to_block"
BLOCK_TO_ALLOW = "block_to_allow"
DIRECTIONS = (ALLOW_TO_BLOCK, BLOCK_TO_ALLOW)
NO_ROLE = "(no role)"
ANONYMOUS = "(anonymous)"
EXAMPLES = 3

# The columns replay needs, in the order `replay()` reads them.
FIELDS = ("event", "ts", "request_id", "user", "client_ip", "method", "scheme", "host", "path", "decision", "reason",
          "operation")
EVENTS = ("access", "warn_continued")  # the records replay reads


@dataclass
class Group:
    """Changes for one role, site or user."""

    allow_to_block: int = 0
    block_to_allow: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, direction: str, request_id: str | None) -> None:
        setattr(self, direction, getattr(self, direction) + 1)
        if request_id and len(self.examples) < EXAMPLES:
            self.examples.append(request_id)

    @property
    def total(self) -> int:
        return self.allow_to_block + self.block_to_allow

    def as_dict(self) -> dict[str, Any]:
        return {
            ALLOW_TO_BLOCK: self.allow_to_block,
            BLOCK_TO_ALLOW: self.block_to_allow,
            "examples": list(self.examples),
        }


@dataclass
class Summary:
    records: int = 0  # access records decided again
    skipped: int = 0  # records without the fields a decision needs
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    changed: Counter = field(default_factory=Counter)  # direction -> count
    by_role: dict[str, Group] = field(default_factory=dict)
    by_site: dict[str, Group] = field(default_factory=dict)
    by_user: dict[str, Group] = field(default_factory=dict)
    reasons: Counter = field(default_factory=Counter)  # (old reason, new reason) of changes

    @property
    def changes(self) -> int:
        return sum(self.changed.values())

    def as_dict(self) -> dict[str, Any]:
        def groups(table: dict[str, Group]) -> dict[str, Any]:
            ordered = sorted(table.items(), key=lambda kv: (-kv[1].total, kv[0]))
            return {name: g.as_dict() for name, g in ordered}

        return {
            "records": self.records,
            "skipped": self.skipped,
            "from": _iso(self.first_ts),
            "to": _iso(self.last_ts),
            "changes": self.changes,
            ALLOW_TO_BLOCK: self.changed[ALLOW_TO_BLOCK],
            BLOCK_TO_ALLOW: self.changed[BLOCK_TO_ALLOW],
            "by_role": groups(self.by_role),
            "by_site": groups(self.by_site),
            "by_user": groups(self.by_user),
            "reasons": [
                {"from": old, "to": new, "count": n}
                for (old, new), n in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def policy_users(policy: Policy) -> set[str]:
    """Every user name the policy mentions: directory groups and `user:` members."""
    names: set[str] = set()
    for users in policy.groups.values():
        names.update(users)
    for role in policy.roles.values():
        names.update(m.value for m in role.members if m.kind == MemberKind.USER and m.value)
    return names


def pseudonym_table(key: bytes, names: Iterable[str]) -> dict[str, str]:
    return {pseudonymize(key, name): name for name in names}


def _as_utc(ts: Any) -> datetime | None:
    if isinstance(ts, datetime):
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
    if isinstance(ts, str):
        try:
            return _as_utc(datetime.fromisoformat(ts.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _ip(text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


def replay(
    records: Iterable[Mapping[str, Any]],
    policy: Policy,
    *,
    names: Mapping[str, str] | None = None,
    progress=None,
) -> Summary:
    """Decide `records` (access records, oldest first) again under `policy`.

    `names` maps pseudonyms back to user names (see `pseudonym_table`), so
    that a pseudonymized log replays against a policy that names people.
    """
    names = names or {}
    ledger = MemoryLedger()
    went_on = MemoryContinuations()
    summary = Summary()
    for count, rec in enumerate(records, 1):
        if progress is not None and count % 4096 == 0:
            progress(count)
        if rec.get("event") == "warn_continued":
            _continue(rec, policy, names, went_on)
            continue
        now = _as_utc(rec.get("ts"))
        old = rec.get("decision")
        host = rec.get("host")
        if now is None or old not in ("allow", "block") or not host:
            summary.skipped += 1
            continue
        user = rec.get("user")
        if user is not None and is_pseudonym(user):
            user = names.get(user, user)
        identity = Identity(user=user, client_ip=_ip(rec.get("client_ip")))
        request = Request(
            method=(rec.get("method") or "GET").upper(),
            hosts=(host,),
            path=rec.get("path") or "/",
            scheme=rec.get("scheme") or "http",
            content=Claimed(operation) if isinstance(operation := rec.get("operation"), str) else None,
        )
        decision = decide(request, identity, policy, now, ledger, went_on)
        if decision.allowed and decision.counts_quota and decision.site is not None:
            ledger.mark(identity.subject, decision.site, local_day(now, policy), minute_of(now))
        summary.records += 1
        if summary.first_ts is None:
            summary.first_ts = now
        summary.last_ts = now
        if decision.decision == old:
            continue
        direction = ALLOW_TO_BLOCK if old == "allow" else BLOCK_TO_ALLOW
        summary.changed[direction] += 1
        summary.reasons[(rec.get("reason") or "?", decision.reason)] += 1
        request_id = rec.get("request_id")
        for role in decision.roles or (NO_ROLE,):
            summary.by_role.setdefault(role, Group()).add(direction, request_id)
        site = decision.site or "unlisted"
        summary.by_site.setdefault(site, Group()).add(direction, request_id)
        who = user or f"{ANONYMOUS[:-1]} {rec.get('client_ip') or '?'})"
        summary.by_user.setdefault(who, Group()).add(direction, request_id)
    return summary


def _continue(rec: Mapping[str, Any], policy: Policy, names: Mapping[str, str], went_on: MemoryContinuations) -> None:
    """A logged reason on a warn page: the site opens for the candidate's continue_minutes, if it warns there."""
    now, host = _as_utc(rec.get("ts")), rec.get("host")
    if now is None or not host:
        return
    user = rec.get("user")
    if user is not None and is_pseudonym(user):
        user = names.get(user, user)
    identity = Identity(user=user, client_ip=_ip(rec.get("client_ip")))
    asked = decide(Request("GET", (host,), "/", "https"), identity, policy, now)
    minutes = continue_minutes(asked, policy)
    if asked.reason == JUSTIFICATION_REQUIRED and minutes is not None and asked.site is not None:
        stamp = now.timestamp()
        went_on.continue_until(identity.subject, asked.site, stamp + minutes * 60, stamp)


def render_text(summary: Summary, path: str, digest: str, policy: Policy | None = None) -> str:
    """The report for people: what would change, by role, site and user, with examples.

    With `policy`, sites are called by its display names (the JSON keeps the keys).
    """
    span = ""
    if summary.first_ts is not None:
        span = f" from {summary.first_ts:%Y-%m-%d %H:%M} to {summary.last_ts:%Y-%m-%d %H:%M} UTC"
    out = [f"Replayed {summary.records} access records{span} under {safe_text(path)} (policy {digest})."]
    if summary.skipped:
        out.append(f"{summary.skipped} records lacked a time, host or decision and were skipped.")
    if not summary.changes:
        out.append("No decision would change.")
        return "\n".join(out) + "\n"
    out.append(
        f"{summary.changes} decisions would change: {summary.changed[ALLOW_TO_BLOCK]} allow -> block, "
        f"{summary.changed[BLOCK_TO_ALLOW]} block -> allow."
    )
    for title, groups in (("role", summary.by_role), ("site", summary.by_site), ("user", summary.by_user)):
        rows = sorted(groups.items(), key=lambda kv: (-kv[1].total, kv[0]))
        out.append("")
        out.append(f"By {title}:")
        shown = rows[:25]
        out.append(
            table(
                (title, "allow->block", "block->allow", "examples (request ids)"),
                [(_shown(title, name, policy), g.allow_to_block, g.block_to_allow, " ".join(g.examples))
                 for name, g in shown],
                max_width=80,
            ).rstrip("\n")
        )
        if len(rows) > len(shown):
            out.append(f"… and {len(rows) - len(shown)} more (see --json)")
    out.append("")
    out.append("Reasons (logged -> replayed):")
    for (old, new), count in sorted(summary.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(f"  {safe_text(old)} -> {safe_text(new)}: {count}")
    return "\n".join(out) + "\n"


def _shown(title: str, name: str, policy: Policy | None) -> str:
    """A row's name in the text report: a site by its display name when the policy gives one."""
    if title == "site" and policy is not None and name in policy.sites:
        return policy.site_title(name) or name
    return name
