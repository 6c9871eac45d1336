"""The pure decision engine: `decide(request, identity, policy, now) -> Decision`.

No I/O, no mitmproxy, no logging: given the same inputs it gives the same
answer, which is what makes policies testable and disputes settleable.  The
only outside state it reads is the quota ledger, through a protocol.

The rules are those of the product contract, section 2, in its order:
1. every name the request gives for its host is decided, the strictest
   stands (`decide`); host -> site (`sites`);
2. identity -> roles (`plan.roles_for`);
3. each role's grant for the site, else its "*" (`plan.grants_for`);
4. a grant is active inside its windows and while its quota lasts, and
5. the most permissive active grant wins, else the reason points the way
   to access (`_decide_grants`);
6. read-only allows reads and the site's exceptions (`read_only_refusal`).
What depends only on host and roles is planned once (`plan`); here runs
what depends on the method and the time.
"""

from __future__ import annotations

import fnmatch
from datetime import date, datetime, timezone

from accessgate.errors import StateStoreError, StateStoreUnavailable
from accessgate.policy.model import Grant, Level, Operation, Policy, ReadOnlyRule, Site
from accessgate.policy.paths import readings as path_readings
from accessgate.policy.windows import in_any_window, next_window_start, start_of_next_day
from accessgate.decision.plan import Plan, PolicyIndex, allowed_by, denied_by, index_of, remember
from accessgate.decision.continuations import Continuations, NoContinuations
from accessgate.decision.content import described as _described
from accessgate.decision.content import refusal as _operation_refusal
from accessgate.decision.quota import NoQuotaUsed, QuotaLedger
from accessgate.decision.types import (
    ALLOW,
    ALLOWED,
    BLOCK,
    DENIED,
    HEADERS_READ,
    JUSTIFICATION_REQUIRED,
    MAX_HOST_NAMES,
    OUTSIDE_WINDOW,
    QUOTA_EXHAUSTED,
    READ_ONLY,
    RULE_INVALID_HOST,
    SAFE_METHODS,
    Decision,
    Identity,
    Request,
    by_grant,
    new_decision,
)

# "compiled" when this module was built with mypyc (ACCESSGATE_COMPILE=1).
BUILD = "python" if __file__.endswith(".py") else "compiled"

_NO_QUOTA = NoQuotaUsed()
_NO_CONTINUATIONS = NoContinuations()
_NO_HOST = new_decision(BLOCK, DENIED, RULE_INVALID_HOST, message="The request names no host.")
_TOO_MANY_NAMES = new_decision(
    BLOCK, DENIED, RULE_INVALID_HOST,
    message=f"The request names its host more than {MAX_HOST_NAMES} times; send one Host header.",
)  # fmt: skip
_REFUSALS_KEPT = 8  # read-only refusals kept per host and role set: POST, PUT, PATCH, DELETE, upgrades ...


def decide(
    request: Request,
    identity: Identity,
    policy: Policy,
    now: datetime,
    quota: QuotaLedger | None = None,
    continuations: Continuations | None = None,
) -> Decision:
    """Decide `request` from `identity` under `policy` at `now` (aware datetime).

    Every name in `request.hosts` is decided; the strictest decision stands,
    so a request cannot borrow a harmless name to reach a governed site.
    `continuations` says who gave a reason on a `warn` grant's page, and
    until when (none: nobody did).
    """
    hosts = request.hosts
    if not hosts:
        return _NO_HOST
    ledger = quota if quota is not None else _NO_QUOTA
    went_on = continuations if continuations is not None else _NO_CONTINUATIONS
    index = index_of(policy)
    # Who the client is, as far as roles go; the address only when `net:` members make it count.
    key = (identity.user, identity.groups, identity.client_ip if index.by_network else None)
    roleset = index.identities.get(key)
    if roleset is None:
        roleset = index.roleset_of(identity, key, policy)
    plans = roleset.plans
    if len(hosts) == 1:
        plan = plans.get(hosts[0])
        if plan is None:
            plan = index.plan(hosts[0], roleset, policy)
        return _decided(plan, request, identity, policy, now, ledger, went_on)
    if len(hosts) > MAX_HOST_NAMES:
        return _TOO_MANY_NAMES
    strictest: Decision | None = None
    for raw in dict.fromkeys(hosts):
        plan = plans.get(raw)
        if plan is None:
            plan = index.plan(raw, roleset, policy)
        decision = _decided(plan, request, identity, policy, now, ledger, went_on)
        if strictest is None or _strictness(decision) < _strictness(strictest):
            strictest = decision
    assert strictest is not None
    return strictest


def _strictness(decision: Decision) -> tuple[int, int]:
    """Lower is stricter: any block beats any allow, then the lower level."""
    level = decision.level.rank if decision.level is not None else 4
    return (0 if decision.decision == BLOCK else 1, level)


def _decided(
    plan: Decision | Plan, request: Request, identity: Identity, policy: Policy, now: datetime, ledger: QuotaLedger,
    went_on: Continuations,
) -> Decision:
    """What a host's plan decides for this request: the method and the time finish it."""
    if isinstance(plan, Decision):  # nothing else can change it
        return plan
    allow = plan.allow
    if plan.site_grants.static_best is not None and allow is not None:  # read-only, no windows or quotas
        return _read_only(allow, request, policy, plan.refusals)
    return _decide_grants(plan, request, identity, policy, now, ledger, went_on)


def _decide_grants(
    plan: Plan, request: Request, identity: Identity, policy: Policy, now: datetime, ledger: QuotaLedger,
    went_on: Continuations,
) -> Decision:
    """Grants with windows or quotas: which are active now decides (steps 4 and 5)."""
    site_grants, site, roles, host = plan.site_grants, plan.site, plan.roles, plan.host
    index = index_of(policy)
    clock = Clock(now, index)
    best: tuple[str, Grant] | None = None
    outside_window: list[tuple[str, Grant]] = []
    exhausted: list[tuple[str, Grant]] = []
    uncounted: list[tuple[str, Grant]] = []  # quota grants whose usage the store cannot tell
    warned: tuple[str, Grant] | None = None  # the first active warn grant
    for role, grant in site_grants.grants:
        if grant.windows and not index.window_open(grant, clock.minute, clock.local):
            outside_window.append((role, grant))
            continue
        if grant.daily_minutes is not None:
            try:
                usage = ledger.usage(identity.subject, site, clock.day, clock.minute)
            except StateStoreUnavailable:
                # Fail closed for this grant only: the user's other grants still apply.
                uncounted.append((role, grant))
                continue
            if usage.exhausted(grant.daily_minutes):
                exhausted.append((role, grant))
                continue
        if grant.level is Level.WARN:
            if warned is None:
                warned = (role, grant)
            continue
        if best is None or grant.rank > best[1].rank:
            best = (role, grant)
    if warned is not None and (best is None or best[1].level is not Level.FULL):
        return _warn(warned, best, plan, request, identity, policy, clock, went_on)
    inactive = outside_window or exhausted or uncounted
    refused: Decision | None = None
    if best is not None and best[1].level is not Level.DENY:
        allow = plan.allows.get(best[0])
        if allow is None:
            allow = plan.allows[best[0]] = allowed_by(best, site, roles, host, site_grants)
        if best[1].level is Level.FULL:
            return allow
        decided = _read_only(allow, request, policy, plan.refusals)
        if decided.decision != BLOCK or not inactive:
            return decided
        refused = decided  # a write: a full grant that is not active may point the way
    elif best is not None and not inactive:
        return denied_by(best, site, roles, host, index.titles.get(site, site))
    return _pointing(plan, request, identity, policy, clock, ledger, best, refused,
                     outside_window, exhausted, uncounted)


def _pointing(
    plan: Plan, request: Request, identity: Identity, policy: Policy, clock: Clock, ledger: QuotaLedger,
    best: tuple[str, Grant] | None, refused: Decision | None, outside_window: list[tuple[str, Grant]],
    exhausted: list[tuple[str, Grant]], uncounted: list[tuple[str, Grant]],
) -> Decision:
    """No active grant allows the request: the reason points the way to access (step 5).

    Only grants that would allow the request count, whatever a catch-all
    `deny` says: `full` ones, and `read-only` ones if reading allows it.
    Then quota-exhausted (whatever the grant's windows say), outside-window,
    read-only for a write an active grant may read, else denied.
    """
    site, roles, host = plan.site, plan.roles, plan.host
    title = index_of(policy).titles.get(site, site)
    # Whether reading allows the request, i.e. read-only grants would: a refused write is no read.
    reads = refused is None and read_only_refusal(request, policy.sites[site]) is None
    waiting = [(r, g) for r, g in outside_window if g.level is Level.FULL or reads]
    # Used up today whatever its windows say: a grant outside them may be spent too.
    spent = [(r, g) for r, g in exhausted if g.level is Level.FULL or reads]
    for role, grant in waiting:
        if grant.daily_minutes is not None and _used_up(grant, identity, site, clock, ledger):
            spent.append((role, grant))
    if spent:
        order = index_of(policy).order
        named = min(spent, key=lambda by: order[by[0]])  # the first in the policy's role order
        minutes = named[1].daily_minutes
        used_up = {id(g) for _, g in spent}
        openings = [(g, True) for _, g in spent] + [(g, False) for _, g in waiting if id(g) not in used_up]
        return by_grant(
            BLOCK, QUOTA_EXHAUSTED, named, site, roles, host,
            opens_at=_opening(openings, clock, policy),
            message=f"Today's {minutes} minutes on {title} are used up.",
        )  # fmt: skip
    unknown = [(r, g) for r, g in uncounted if g.level is Level.FULL or reads]
    if unknown:
        return by_grant(
            BLOCK, DENIED, unknown[0], site, roles, host,
            message=f"Time-limited access to {title} is closed while the quota store cannot be reached.",
        )  # fmt: skip
    if waiting:
        texts = _window_texts(waiting)
        return by_grant(
            BLOCK, OUTSIDE_WINDOW, waiting[0], site, roles, host,
            opens_at=_opening([(g, False) for _, g in waiting], clock, policy),
            message=(f"{title} is read-only for you now; full access is open only at set times ({texts})."
                     if refused is not None else f"{title} is open only at set times ({texts})."),
        )  # fmt: skip
    if refused is not None:
        return refused
    if best is not None:  # an active deny
        return denied_by(best, site, roles, host, title)
    # Nothing is active, and nothing that would allow this opens later: a
    # write where every grant is read-only and closed now.
    role, grant = (outside_window or exhausted or uncounted)[0]
    why = read_only_refusal(request, policy.sites[site]) or "it is a write"
    return new_decision(
        BLOCK, DENIED, grant.rule, site, None, role, roles, host,
        message=f"None of your grants allows this request to {title} ({why}), and your read-only access is closed now.",
    )  # fmt: skip


def _used_up(grant: Grant, identity: Identity, site: str, clock: Clock, ledger: QuotaLedger) -> bool:
    """Whether `grant`'s quota is used up today; False when the store cannot tell."""
    assert grant.daily_minutes is not None
    try:
        return ledger.usage(identity.subject, site, clock.day, clock.minute).exhausted(grant.daily_minutes)
    except StateStoreUnavailable:
        return False


def _warn(
    warned: tuple[str, Grant], best: tuple[str, Grant] | None, plan: Plan, request: Request, identity: Identity,
    policy: Policy, clock: Clock, went_on: Continuations,
) -> Decision:
    """An active warn grant, and no active full one: allowed as full while the user's
    continuation lasts; else what the other grants allow, else a block that asks for a reason."""
    site, role, grant = plan.site, warned[0], warned[1]
    try:
        until = went_on.continued_until(identity.subject, site)
    except StateStoreError:
        until = None  # the store cannot say: the warn page asks again
    if until is not None and until > clock.now.timestamp():
        allow = plan.allows.get(grant.continued_rule)
        if allow is None:
            allow = plan.allows[grant.continued_rule] = new_decision(
                ALLOW, ALLOWED, grant.continued_rule, site, grant.level, role, plan.roles, plan.host,
                counts_quota=plan.site_grants.counts_quota,
            )  # fmt: skip
        return allow
    if best is not None and best[1].level is Level.READ_ONLY:
        allow = plan.allows.get(best[0])
        if allow is None:
            allow = plan.allows[best[0]] = allowed_by(best, site, plan.roles, plan.host, plan.site_grants)
        read = _read_only(allow, request, policy, plan.refusals)
        if read.decision == ALLOW:
            return read  # reading needs no reason
    key = (role, JUSTIFICATION_REQUIRED)
    blocked = plan.refusals.get(key)
    if blocked is None:
        blocked = by_grant(
            BLOCK, JUSTIFICATION_REQUIRED, warned, site, plan.roles, plan.host,
            message=f"{site} opens for {grant.continue_minutes} minutes once you give a reason for using it.",
        )  # fmt: skip
        if len(plan.refusals) < _REFUSALS_KEPT:
            plan.refusals[key] = blocked
    return blocked


def _read_only(
    allow: Decision, request: Request, policy: Policy, refusals: dict[tuple[str | None, str], Decision]
) -> Decision:
    """Step 6: `allow` if reading allows `request`, else a read-only block."""
    assert allow.site is not None  # read-only grants are for a site
    refusal = read_only_refusal(request, policy.sites[allow.site])
    if refusal is None:
        return allow
    # The same refusal at the same host, made once: a page that posts keeps
    # posting.  Methods are the client's to invent, so only a few are kept.
    key = (allow.role, refusal)
    blocked = refusals.get(key)
    if blocked is None:
        blocked = allow._replace(
            decision=BLOCK,
            reason=READ_ONLY,
            counts_quota=False,
            message=f"{index_of(policy).titles.get(allow.site, allow.site)} is read-only for you: {refusal}.",
        )
        if len(refusals) < _REFUSALS_KEPT:
            refusals[key] = blocked
    return blocked


def read_only_refusal(request: Request, site: Site) -> str | None:
    """Why a read-only grant refuses `request`, or None when reading allows it.

    A write passes only where the site's rules match its path as servers
    read it (paths.readings: dot segments removed, unreserved escapes
    decoded); a path servers may read differently matches no rule.
    """
    method = request.method.upper()
    writes = set() if method in SAFE_METHODS else {method}
    for name, value in request.headers:
        if name in HEADERS_READ:
            if name == "upgrade":
                return "connection upgrades such as WebSocket are writes"
            override = value.strip().upper()
            if override not in SAFE_METHODS:
                writes.add(override)
    if not writes:
        return None
    if site.operation_rules:
        return _refusal_with_operations(request, site, writes)
    rules = site.path_rules
    # Only a write gets here: reads never pay for reading the path.
    readings = path_readings(request.path.split("?", 1)[0]) if rules else ()
    for method in sorted(writes):
        if not readings:
            if rules:
                return f"{method} requests are writes, and no exception covers a path servers may read differently"
            return f"{method} requests are writes"
        for path in readings:  # every way a server may read the path: a rule must match each
            if not any(
                (rule.method is None or rule.method == method) and fnmatch.fnmatchcase(path, rule.path)
                for rule in rules
            ):
                return f"{method} requests are writes"
    return None


def _refusal_with_operations(request: Request, site: Site, writes: set[str]) -> str | None:
    """`read_only_refusal` for a site with rules that read what a request says
    it does: each write method and path reading needs a rule on method and
    path, or an operation rule whose request says it reads (content.py)."""
    readings = path_readings(request.path.split("?", 1)[0])
    said: dict[int, str | None] = {}  # operation rule -> why it refuses, asked once
    for method in sorted(writes):
        if not readings:
            return f"{method} requests are writes, and no exception covers a path servers may read differently"
        for path in readings:
            if any(
                (rule.method is None or rule.method == method) and fnmatch.fnmatchcase(path, rule.path)
                for rule in site.path_rules
            ):
                continue
            why = ""
            for i, rule in enumerate(site.operation_rules):
                if (rule.method is None or rule.method == method) and fnmatch.fnmatchcase(path, rule.path):
                    if i not in said:
                        said[i] = _operation_refusal(_operation(rule), request.content)
                    refused = said[i]
                    if refused is None:
                        break
                    why = why or refused
            else:
                return f"{method} requests are writes, and {why}" if why else f"{method} requests are writes"
    return None


def _operation(rule: ReadOnlyRule) -> Operation:
    assert rule.operation is not None  # Site.operation_rules have one
    return rule.operation


def operations_asked(request: Request, site: Site) -> tuple[Operation, ...]:
    """The operation rules of `site` that would decide `request`, a write, by
    what it says: those whose method and path match it (in some reading)."""
    if not site.operation_rules:
        return ()
    method = request.method.upper()
    methods = {method} if method not in SAFE_METHODS else set()
    for name, value in request.headers:
        if name in HEADERS_READ and name != "upgrade" and value.strip().upper() not in SAFE_METHODS:
            methods.add(value.strip().upper())
    readings = path_readings(request.path.split("?", 1)[0])
    return tuple(
        _operation(rule)
        for rule in site.operation_rules
        if any(rule.method is None or rule.method == m for m in methods)
        and any(fnmatch.fnmatchcase(path, rule.path) for path in readings)
    )


def operation_said(request: Request, site: Site) -> str | None:
    """What `request` says it does, as the first of `site`'s operation rules
    that would decide it reads that (for the audit record); None if none would."""
    if request.content is None:
        return None
    for operation in operations_asked(request, site):
        return _described(operation, request.content)
    return None


class Clock:
    """`now` in the policy's zone.  Window edges fall on whole minutes, so the
    local time of the current second is computed once and shared."""

    __slots__ = ("now", "local", "day", "minute", "second")
    now: datetime
    local: datetime
    day: date
    minute: int
    second: int

    def __init__(self, now: datetime, index: PolicyIndex):
        second = int(now.timestamp())
        cached = index.last_clock
        if cached is not None and cached[0] == second:
            _, self.local, self.day = cached
        else:
            self.local = now.astimezone(index.timezone).replace(microsecond=0)
            self.day = self.local.date()
            index.last_clock = (second, self.local, self.day)
        self.now = now
        self.second = second
        self.minute = second // 60


def minute_of(now: datetime) -> int:
    """The UTC epoch minute: names a real minute even when DST repeats an hour."""
    return int(now.timestamp() // 60)


def local_day(now: datetime, policy: Policy) -> date:
    return now.astimezone(policy.timezone).date()


def _opening(blocked: list[tuple[Grant, bool]], clock: Clock, policy: Policy) -> datetime | None:
    """When the first of the `blocked` grants (each with: its quota is used up) opens again."""
    # The same grants blocked in the same minute open at the same time.
    openings = index_of(policy).openings
    key = (tuple((id(grant), spent) for grant, spent in blocked), clock.minute)
    if key not in openings:
        remember(openings, key, _earliest_opening(blocked, clock, policy))
    return openings[key]


def _earliest_opening(blocked: list[tuple[Grant, bool]], clock: Clock, policy: Policy) -> datetime | None:
    """When the first of the blocked grants opens again (window start or new day)."""
    tz = policy.timezone
    candidates: list[datetime] = []
    for grant, spent in blocked:
        if not spent:
            opening = next_window_start(grant.windows, clock.now, tz) if grant.windows else None
        else:
            # Quota used up: a new day, then the first window in it (if any).
            opening = start_of_next_day(clock.now, tz)
            if grant.windows and not in_any_window(grant.windows, opening):
                opening = next_window_start(grant.windows, opening, tz)
        if opening is not None:
            candidates.append(opening.astimezone(timezone.utc))
    return min(candidates) if candidates else None


def _window_texts(grants: list[tuple[str, Grant]]) -> str:
    return ", ".join(dict.fromkeys(w.text for _, g in grants for w in g.windows))
