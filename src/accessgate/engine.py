"""The pure decision engine: `decide(request, identity, policy, now) -> Decision`.

No I/O, no mitmproxy, no logging: given the same inputs it gives the same
answer, which is what makes policies testable and disputes settleable.  The
only outside state it reads is the quota ledger, through a protocol.

The rules are those of the product contract, section 2:
1. every name the request gives for its host is decided, the strictest stands;
2. identity -> roles; 3. each role's grant for the site (site, else "*");
4. a grant is active inside its windows and while its quota lasts;
5. the most permissive active grant wins; 6. read-only blocks writes.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache

from .errors import InvalidHost
from .hosts import NormalHost, normalize_host
from .model import Fallback, Grant, IPAddress, IPNetwork, Level, MemberKind, Policy, Site
from .quota import NoQuotaUsed, QuotaLedger
from .windows import in_any_window, next_window_start, start_of_next_day

ALLOW = "allow"
BLOCK = "block"

# Reason codes, one per outcome (contract section 2).
DENIED = "denied"
READ_ONLY = "read-only"
OUTSIDE_WINDOW = "outside-window"
QUOTA_EXHAUSTED = "quota-exhausted"
UNAUTHENTICATED = "unauthenticated"
ALLOWED = "allowed"
UNLISTED = "unlisted"

BLOCK_REASONS = (DENIED, READ_ONLY, OUTSIDE_WINDOW, QUOTA_EXHAUSTED, UNAUTHENTICATED)
ALLOW_REASONS = (ALLOWED, UNLISTED)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")

# Rule names for outcomes that no grant decided.
RULE_UNLISTED = "unlisted"
RULE_UNAUTHENTICATED = "unauthenticated"
RULE_INVALID_HOST = "invalid-host"
RULE_NO_GRANT = "no-grant"


@dataclass(frozen=True, slots=True)
class Request:
    """What the engine needs to know of a request.

    `hosts` holds every name the request gives for its host (CONNECT
    target, SNI, absolute-form authority, `:authority`, each `Host`
    header), raw as received.  `headers` are (lower-case name, value).
    """

    method: str
    hosts: tuple[str, ...]
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking.  `user` None means anonymous."""

    user: str | None = None
    groups: frozenset[str] = frozenset()  # from an outside directory (LDAP)
    client_ip: IPAddress | None = None

    @property
    def subject(self) -> str:
        """Whose quota a request spends: the user, else the client address."""
        if self.user is not None:
            return f"user:{self.user}"
        return f"ip:{self.client_ip}" if self.client_ip is not None else "anonymous"


@dataclass(frozen=True, slots=True)
class Decision:
    decision: str  # ALLOW | BLOCK
    reason: str
    rule: str  # the policy rule that decided, e.g. "roles.everyone.access.facebook"
    site: str | None = None
    level: Level | None = None  # effective level for the site, if any grant applied
    role: str | None = None  # the role whose grant decided
    roles: tuple[str, ...] = ()  # every role the client has
    host: str | None = None  # the normalized host that decided
    opens_at: datetime | None = None  # when access next opens (window/quota blocks)
    counts_quota: bool = False  # an allowed request that spends a quota minute
    message: str = ""  # one plain sentence for people

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW


def decide(
    request: Request,
    identity: Identity,
    policy: Policy,
    now: datetime,
    quota: QuotaLedger | None = None,
) -> Decision:
    """Decide `request` from `identity` under `policy` at `now` (aware datetime).

    Every name in `request.hosts` is decided; the strictest decision stands,
    so a request cannot borrow a harmless name to reach a governed site.
    """
    if not request.hosts:
        return Decision(BLOCK, DENIED, RULE_INVALID_HOST, message="The request names no host.")
    ledger = quota if quota is not None else _NO_QUOTA
    strictest: Decision | None = None
    for raw in dict.fromkeys(request.hosts):
        decision = _decide_host(raw, request, identity, policy, now, ledger)
        if strictest is None or _strictness(decision) < _strictness(strictest):
            strictest = decision
    assert strictest is not None
    return strictest


_NO_QUOTA = NoQuotaUsed()


def _strictness(decision: Decision) -> tuple[int, int]:
    """Lower is stricter: any block beats any allow, then the lower level."""
    level = decision.level.rank if decision.level is not None else 3
    return (0 if decision.decision == BLOCK else 1, level)


def _decide_host(
    raw: str,
    request: Request,
    identity: Identity,
    policy: Policy,
    now: datetime,
    ledger: QuotaLedger,
) -> Decision:
    try:
        host = normalize_host(raw)
    except InvalidHost as exc:
        return Decision(
            BLOCK, DENIED, RULE_INVALID_HOST, message=f"The request names an invalid host: {exc}."
        )
    roles = roles_for(identity, policy)
    site = site_for(host, policy)
    if site is None:
        if policy.unlisted is Fallback.ALLOW:
            return Decision(ALLOW, UNLISTED, RULE_UNLISTED, roles=roles, host=host.name)
        return Decision(
            BLOCK,
            DENIED,
            RULE_UNLISTED,
            roles=roles,
            host=host.name,
            message=f"{host.name} is not on the list of allowed sites.",
        )
    if not roles and identity.user is None:
        if policy.unauthenticated == "deny":
            return Decision(
                BLOCK,
                UNAUTHENTICATED,
                RULE_UNAUTHENTICATED,
                site=site,
                host=host.name,
                message=f"{site} is only available after signing in to the proxy.",
            )
        roles = (policy.unauthenticated,)
    grants = grants_for(roles, site, policy)
    if not grants:
        return Decision(
            BLOCK,
            DENIED,
            RULE_NO_GRANT,
            site=site,
            roles=roles,
            host=host.name,
            message=f"No role of yours grants access to {site}.",
        )
    return _decide_grants(grants, site, host.name, roles, request, identity, policy, now, ledger)


def _decide_grants(
    grants: tuple[tuple[str, Grant], ...],
    site: str,
    host: str,
    roles: tuple[str, ...],
    request: Request,
    identity: Identity,
    policy: Policy,
    now: datetime,
    ledger: QuotaLedger,
) -> Decision:
    clock = _Clock(now, policy)
    best: tuple[str, Grant] | None = None
    outside_window: list[tuple[str, Grant]] = []
    exhausted: list[tuple[str, Grant]] = []
    for role, grant in grants:
        if grant.windows and not in_any_window(grant.windows, clock.local):
            outside_window.append((role, grant))
            continue
        if grant.daily_minutes is not None:
            usage = ledger.usage(identity.subject, site, clock.day, clock.minute)
            if usage.exhausted(grant.daily_minutes):
                exhausted.append((role, grant))
                continue
        if best is None or grant.level.rank > best[1].level.rank:
            best = (role, grant)
    common = dict(site=site, roles=roles, host=host)
    if best is None:
        if exhausted:
            role, grant = exhausted[0]
            return Decision(
                BLOCK,
                QUOTA_EXHAUSTED,
                grant.rule,
                level=grant.level,
                role=role,
                opens_at=_earliest_opening(exhausted + outside_window, clock, policy),
                message=f"Today's {grant.daily_minutes} minutes on {site} are used up.",
                **common,
            )
        role, grant = outside_window[0]
        return Decision(
            BLOCK,
            OUTSIDE_WINDOW,
            grant.rule,
            level=grant.level,
            role=role,
            opens_at=_earliest_opening(outside_window, clock, policy),
            message=f"{site} is open only at set times ({_window_texts(outside_window)}).",
            **common,
        )
    role, grant = best
    if grant.level is Level.DENY:
        return Decision(
            BLOCK,
            DENIED,
            grant.rule,
            level=Level.DENY,
            role=role,
            message=f"{site} is not available to your role {role}.",
            **common,
        )
    if grant.level is Level.READ_ONLY:
        refusal = read_only_refusal(request, policy.sites[site])
        if refusal is not None:
            return Decision(
                BLOCK,
                READ_ONLY,
                grant.rule,
                level=Level.READ_ONLY,
                role=role,
                message=f"{site} is read-only for you: {refusal}.",
                **common,
            )
    return Decision(
        ALLOW,
        ALLOWED,
        grant.rule,
        level=grant.level,
        role=role,
        counts_quota=any(g.daily_minutes is not None for _, g in grants),
        **common,
    )


class _Clock:
    """`now` in the policy's zone, computed only when a grant needs it."""

    __slots__ = ("now", "_tz", "_local")

    def __init__(self, now: datetime, policy: Policy):
        self.now = now
        self._tz = policy.timezone
        self._local: datetime | None = None

    @property
    def local(self) -> datetime:
        if self._local is None:
            self._local = self.now.astimezone(self._tz)
        return self._local

    @property
    def day(self) -> date:
        return self.local.date()

    @property
    def minute(self) -> int:
        return minute_of(self.now)


def minute_of(now: datetime) -> int:
    """The UTC epoch minute: names a real minute even when DST repeats an hour."""
    return int(now.timestamp() // 60)


def local_day(now: datetime, policy: Policy) -> date:
    return now.astimezone(policy.timezone).date()


def _earliest_opening(
    blocked: list[tuple[str, Grant]], clock: _Clock, policy: Policy
) -> datetime | None:
    """When the first of the blocked grants opens again (window start or new day)."""
    tz = policy.timezone
    candidates: list[datetime] = []
    for _, grant in blocked:
        if grant.windows and not in_any_window(grant.windows, clock.local):
            opening = next_window_start(grant.windows, clock.now, tz)
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


def read_only_refusal(request: Request, site: Site) -> str | None:
    """Why a read-only grant refuses `request`, or None when reading allows it."""
    if any(k == "upgrade" for k, _ in request.headers):
        return "connection upgrades such as WebSocket are writes"
    methods = {request.method.upper()}
    for name in METHOD_OVERRIDE_HEADERS:
        methods.update(v.strip().upper() for v in request.header_values(name))
    writes = sorted(m for m in methods if m not in SAFE_METHODS)
    if not writes:
        return None
    path = request.path.split("?", 1)[0]
    for method in writes:
        if not any(
            (rule.method is None or rule.method == method) and fnmatch.fnmatchcase(path, rule.path)
            for rule in site.read_only_allow
        ):
            return f"{method} requests are writes"
    return None


def site_for(host: NormalHost, policy: Policy) -> str | None:
    """The site whose longest domain (or network, for an address) covers `host`."""
    if host.ip is not None:
        for network, site in policy.network_index:
            if host.ip in network:
                return site
        return policy.domain_index.get(host.name)
    index = policy.domain_index
    name = host.name
    while True:
        site = index.get(name)
        if site is not None:
            return site
        dot = name.find(".")
        if dot < 0:
            return None
        name = name[dot + 1 :]


def roles_for(identity: Identity, policy: Policy) -> tuple[str, ...]:
    """Every role whose members match `identity`, in the policy's order."""
    index = _member_index(policy)
    key = (identity.user, identity.groups, identity.client_ip)
    cached = index.cache.get(key)
    if cached is not None:
        return cached
    matched: set[str] = set()
    if identity.user is not None:
        matched.update(index.by_user.get(identity.user, ()))
        groups = policy.user_groups.get(identity.user, frozenset()) | identity.groups
        for group in groups:
            matched.update(index.by_group.get(group, ()))
        matched.update(index.everyone)
    if identity.client_ip is not None:
        ip = identity.client_ip
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network, role in index.by_network:
            if ip in network:
                matched.add(role)
    roles = tuple(name for name in policy.roles if name in matched)
    if len(index.cache) >= _ROLE_CACHE_SIZE:
        index.cache.clear()  # bounded: a scan of many clients cannot grow memory
    index.cache[key] = roles
    return roles


_ROLE_CACHE_SIZE = 100_000


def grants_for(roles: tuple[str, ...], site: str, policy: Policy) -> tuple[tuple[str, Grant], ...]:
    """(role, grant) for `site` from each role: its entry for the site, else `*`."""
    result = []
    for name in roles:
        access = policy.roles[name].access
        grant = access.get(site) or access.get("*")
        if grant is not None:
            result.append((name, grant))
    return tuple(result)


@dataclass(slots=True)
class _MemberIndex:
    by_user: dict[str, list[str]]
    by_group: dict[str, list[str]]
    everyone: list[str]
    by_network: list[tuple[IPNetwork, str]]
    cache: dict


def _member_index(policy: Policy) -> _MemberIndex:
    # Kept on the policy object itself: it lives and dies with the policy,
    # and a reload (a new Policy) starts with a fresh role cache.
    index = policy.__dict__.get("_member_index")
    if index is None:
        index = _MemberIndex({}, {}, [], [], {})
        for role in policy.roles.values():
            for member in role.members:
                if member.kind is MemberKind.USER:
                    index.by_user.setdefault(member.value, []).append(role.name)
                elif member.kind is MemberKind.GROUP:
                    index.by_group.setdefault(member.value, []).append(role.name)
                elif member.kind is MemberKind.ALL:
                    index.everyone.append(role.name)
                elif member.kind is MemberKind.NET and member.network is not None:
                    index.by_network.append((member.network, role.name))
        object.__setattr__(policy, "_member_index", index)
    return index
