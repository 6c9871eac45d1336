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
from datetime import date, datetime, timezone
from typing import NamedTuple

from .errors import InvalidHost, StateStoreUnavailable
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


class Decision(NamedTuple):
    """The engine's answer.  A NamedTuple rather than a frozen dataclass:
    equally immutable, but built ten times faster, and one is built per request."""

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
    if len(request.hosts) == 1:
        return _decide_host(request.hosts[0], request, identity, policy, now, ledger)
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
    index = _compiled(policy)
    # Everything that depends only on host and identity is planned once and
    # cached; only the method check and time-dependent grants run per request.
    key = (raw, identity.user, identity.groups, identity.client_ip if index.by_network else None)
    plan = index.plans.get(key)
    if plan is None:
        plan = _plan(raw, identity, policy)
        _bounded_put(index.plans, key, plan)
    if plan.final is not None:
        return plan.final
    site_grants = plan.site_grants
    best = site_grants.static_best
    if best is not None:  # read-only without windows or quotas
        return _read_only(plan.allow, best, request, policy)
    return _decide_grants(plan, request, identity, policy, now, ledger)


class _Plan(NamedTuple):
    """What a host and an identity decide before method and time are known."""

    final: Decision | None  # the decision, when nothing else can change it
    allow: Decision | None = None  # the decision if static read-only grants allow
    site_grants: _SiteGrants | None = None
    site: str | None = None
    roles: tuple[str, ...] = ()
    host: str | None = None


def _plan(raw: str, identity: Identity, policy: Policy) -> _Plan:
    try:
        host = normalize_host(raw)
    except InvalidHost as exc:
        return _Plan(
            Decision(BLOCK, DENIED, RULE_INVALID_HOST, message=f"The request names an invalid host: {exc}.")
        )
    roles = roles_for(identity, policy)
    site = site_for(host, policy)
    if site is None:
        if policy.unlisted is Fallback.ALLOW:
            return _Plan(Decision(ALLOW, UNLISTED, RULE_UNLISTED, roles=roles, host=host.name))
        return _Plan(
            Decision(
                BLOCK,
                DENIED,
                RULE_UNLISTED,
                roles=roles,
                host=host.name,
                message=f"{host.name} is not on the list of allowed sites.",
            )
        )
    if not roles and identity.user is None:  # anonymous, and `unauthenticated: deny`
        return _Plan(
            Decision(
                BLOCK,
                UNAUTHENTICATED,
                RULE_UNAUTHENTICATED,
                site=site,
                host=host.name,
                message=f"{site} is only available after signing in to the proxy.",
            )
        )
    site_grants = _compiled(policy).grants(roles, site)
    if not site_grants.grants:
        return _Plan(
            Decision(
                BLOCK,
                DENIED,
                RULE_NO_GRANT,
                site=site,
                roles=roles,
                host=host.name,
                message=f"No role of yours grants access to {site}.",
            )
        )
    best = site_grants.static_best
    if best is not None and best[1].level is Level.DENY:
        return _Plan(_denied(best, site, roles, host.name))
    if best is not None and best[1].level is Level.FULL:
        return _Plan(_allowed(best, site, roles, host.name, site_grants))
    allow = _allowed(best, site, roles, host.name, site_grants) if best is not None else None
    return _Plan(None, allow, site_grants, site, roles, host.name)


def _by_grant(
    decision: str, reason: str, by: tuple[str, Grant], site: str, roles, host, **extra
) -> Decision:
    """A decision made by one role's grant: it names the role, rule and level."""
    role, grant = by
    return Decision(
        decision, reason, grant.rule, site=site, level=grant.level, role=role, roles=roles, host=host, **extra
    )


def _allowed(best, site, roles, host, site_grants) -> Decision:
    return _by_grant(ALLOW, ALLOWED, best, site, roles, host, counts_quota=site_grants.counts_quota)


def _denied(best, site, roles, host) -> Decision:
    return _by_grant(
        BLOCK, DENIED, best, site, roles, host, message=f"{site} is not available to your role {best[0]}."
    )


def _read_only(allow: Decision, best: tuple[str, Grant], request: Request, policy: Policy) -> Decision:
    refusal = read_only_refusal(request, policy.sites[allow.site])
    if refusal is None:
        return allow
    return allow._replace(
        decision=BLOCK,
        reason=READ_ONLY,
        counts_quota=False,
        message=f"{allow.site} is read-only for you: {refusal}.",
    )


def _decide_grants(
    plan: _Plan,
    request: Request,
    identity: Identity,
    policy: Policy,
    now: datetime,
    ledger: QuotaLedger,
) -> Decision:
    """Grants with windows or quotas: which are active now decides."""
    site_grants, site, roles, host = plan.site_grants, plan.site, plan.roles, plan.host
    index = _compiled(policy)
    clock = _Clock(now, index)
    best: tuple[str, Grant] | None = None
    outside_window: list[tuple[str, Grant]] = []
    exhausted: list[tuple[str, Grant]] = []
    uncounted: list[tuple[str, Grant]] = []  # quota grants whose usage the store cannot tell
    for role, grant in site_grants.grants:
        if grant.windows and not in_any_window(grant.windows, clock.local):
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
        if best is None or grant.rank > best[1].rank:
            best = (role, grant)
    if best is None:
        if exhausted:
            return _by_grant(
                BLOCK,
                QUOTA_EXHAUSTED,
                exhausted[0],
                site,
                roles,
                host,
                opens_at=index.opening(exhausted + outside_window, clock, policy),
                message=f"Today's {exhausted[0][1].daily_minutes} minutes on {site} are used up.",
            )
        if uncounted:
            return _by_grant(
                BLOCK,
                DENIED,
                uncounted[0],
                site,
                roles,
                host,
                message=f"Time-limited access to {site} is closed while the quota store cannot be reached.",
            )
        return _by_grant(
            BLOCK,
            OUTSIDE_WINDOW,
            outside_window[0],
            site,
            roles,
            host,
            opens_at=index.opening(outside_window, clock, policy),
            message=f"{site} is open only at set times ({_window_texts(outside_window)}).",
        )
    if best[1].level is Level.DENY:
        return _denied(best, site, roles, host)
    allow = _allowed(best, site, roles, host, site_grants)
    if best[1].level is Level.READ_ONLY:
        return _read_only(allow, best, request, policy)
    return allow


class _Clock:
    """`now` in the policy's zone.  Window edges fall on whole minutes, so the
    local time of the current second is computed once and shared."""

    __slots__ = ("now", "local", "day", "minute", "second")

    def __init__(self, now: datetime, index: "_Compiled"):
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


_READ_ONLY_HEADERS = frozenset(("upgrade", *METHOD_OVERRIDE_HEADERS))


def read_only_refusal(request: Request, site: Site) -> str | None:
    """Why a read-only grant refuses `request`, or None when reading allows it."""
    method = request.method.upper()
    writes = set() if method in SAFE_METHODS else {method}
    for name, value in request.headers:
        if name in _READ_ONLY_HEADERS:
            if name == "upgrade":
                return "connection upgrades such as WebSocket are writes"
            override = value.strip().upper()
            if override not in SAFE_METHODS:
                writes.add(override)
    if not writes:
        return None
    path = request.path.split("?", 1)[0]
    for method in sorted(writes):
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
    """Every role the client has, in the policy's order.

    Members that match give roles; an anonymous client that no `net:` member
    matches gets the role named by `unauthenticated` (none when it is `deny`).
    """
    index = _compiled(policy)
    roles = index.user_roles(identity.user, identity.groups, policy) if identity.user is not None else ()
    if index.by_network and identity.client_ip is not None:
        net_roles = index.network_roles(identity.client_ip)
        if net_roles:
            roles = tuple(sorted(set(roles) | set(net_roles), key=index.order.__getitem__))
    if not roles and identity.user is None and policy.unauthenticated != "deny":
        roles = (policy.unauthenticated,)
    return roles


def grants_for(roles: tuple[str, ...], site: str, policy: Policy) -> tuple[tuple[str, Grant], ...]:
    """(role, grant) for `site` from each role: its entry for the site, else `*`."""
    return _compiled(policy).grants(roles, site).grants


_CACHE_SIZE = 100_000  # per cache; cleared when full, so memory stays bounded


class _SiteGrants(NamedTuple):
    grants: tuple[tuple[str, Grant], ...]
    # The winning grant when no grant has windows or quotas: the common case
    # needs no clock and no ledger.
    static_best: tuple[str, Grant] | None
    counts_quota: bool


class _Compiled:
    """Lookup tables and caches for one policy; a reload starts afresh."""

    def __init__(self, policy: Policy):
        self.order = {name: i for i, name in enumerate(policy.roles)}
        self.access = {name: dict(role.access) for name, role in policy.roles.items()}
        self.by_user: dict[str, set[str]] = {}
        self.by_group: dict[str, set[str]] = {}
        self.everyone: set[str] = set()
        self.by_network: list[tuple[IPNetwork, str]] = []
        for role in policy.roles.values():
            for member in role.members:
                if member.kind is MemberKind.USER:
                    self.by_user.setdefault(member.value, set()).add(role.name)
                elif member.kind is MemberKind.GROUP:
                    self.by_group.setdefault(member.value, set()).add(role.name)
                elif member.kind is MemberKind.ALL:
                    self.everyone.add(role.name)
                elif member.kind is MemberKind.NET and member.network is not None:
                    self.by_network.append((member.network, role.name))
        self._users: dict[tuple[str, frozenset[str]], tuple[str, ...]] = {}
        self._networks: dict[IPAddress, tuple[str, ...]] = {}
        self._grants: dict[tuple[tuple[str, ...], str], _SiteGrants] = {}
        self.plans: dict[tuple, _Plan] = {}
        self.timezone = policy.timezone
        self.last_clock: tuple[int, datetime, date] | None = None
        self._openings: dict[tuple, datetime | None] = {}

    def opening(self, blocked: list[tuple[str, Grant]], clock: _Clock, policy: Policy) -> datetime | None:
        # The same grants blocked in the same minute open at the same time.
        key = (tuple(id(grant) for _, grant in blocked), clock.minute)
        if key not in self._openings:
            _bounded_put(self._openings, key, _earliest_opening(blocked, clock, policy))
        return self._openings[key]

    def user_roles(self, user: str, groups: frozenset[str], policy: Policy) -> tuple[str, ...]:
        key = (user, groups)
        roles = self._users.get(key)
        if roles is None:
            matched = set(self.everyone)
            matched.update(self.by_user.get(user, ()))
            for group in policy.user_groups.get(user, frozenset()) | groups:
                matched.update(self.by_group.get(group, ()))
            roles = tuple(sorted(matched, key=self.order.__getitem__))
            _bounded_put(self._users, key, roles)
        return roles

    def network_roles(self, ip: IPAddress) -> tuple[str, ...]:
        roles = self._networks.get(ip)
        if roles is None:
            addr = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
            matched = {role for network, role in self.by_network if addr in network}
            roles = tuple(sorted(matched, key=self.order.__getitem__))
            _bounded_put(self._networks, ip, roles)
        return roles

    def grants(self, roles: tuple[str, ...], site: str) -> _SiteGrants:
        key = (roles, site)
        found = self._grants.get(key)
        if found is None:
            grants = []
            best: tuple[str, Grant] | None = None
            static = True
            counts_quota = False
            for name in roles:
                access = self.access[name]
                grant = access.get(site)
                if grant is None:
                    grant = access.get("*")
                    if grant is None:
                        continue
                grants.append((name, grant))
                if grant.daily_minutes is not None:
                    counts_quota = True
                if static and not grant.is_static:
                    static = False
                if best is None or grant.rank > best[1].rank:  # first of equals wins
                    best = (name, grant)
            found = _SiteGrants(tuple(grants), best if static else None, counts_quota)
            _bounded_put(self._grants, key, found)
        return found


def _bounded_put(cache: dict, key, value) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()  # a scan of many clients cannot grow memory without bound
    cache[key] = value


def _compiled(policy: Policy) -> _Compiled:
    # Kept on the policy object itself: it lives and dies with the policy.
    index = policy.__dict__.get("_compiled")
    if index is None:
        index = _Compiled(policy)
        object.__setattr__(policy, "_compiled", index)
    return index
