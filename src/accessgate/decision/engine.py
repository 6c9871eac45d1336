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

from accessgate.errors import InvalidHost, StateStoreUnavailable
from accessgate.policy.hosts import (
    MAX_NAME_LENGTH,
    NormalHost,
    drop_root,
    normalize_host,
    plain_labels,
    plain_name,
)
from accessgate.policy.model import (
    ALLOW,
    ALLOW_REASONS,
    ALLOWED,
    BLOCK,
    BLOCK_REASONS,
    DENIED,
    OUTSIDE_WINDOW,
    QUOTA_EXHAUSTED,
    READ_ONLY,
    UNAUTHENTICATED,
    UNLISTED,
    Fallback,
    Grant,
    IPAddress,
    IPNetwork,
    Level,
    MemberKind,
    Policy,
    Site,
)
from accessgate.policy.paths import readings as path_readings
from accessgate.decision.quota import NoQuotaUsed, QuotaLedger
from accessgate.policy.windows import in_any_window, next_window_start, start_of_next_day

# "compiled" when this module was built with mypyc (ACCESSGATE_COMPILE=1).
BUILD = "python" if __file__.endswith(".py") else "compiled"

# Decisions and host infos are NamedTuples built with this: a
# NamedTuple's own constructor is Python code, and with keywords it costs
# twice as much again.
_new_tuple = tuple.__new__

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")

# The most names a request may give for its host, counted with repeats:
# RFC 9112 allows one Host header, and eight leave room for it, the URL or
# :authority, the SNI and the CONNECT target.  Each name costs a
# normalization; a request that gives more is blocked before any is
# decided, so no request costs more than eight.
MAX_HOST_NAMES = 8

# Rule names for outcomes that no grant decided.
RULE_UNLISTED = "unlisted"
RULE_UNAUTHENTICATED = "unauthenticated"
RULE_INVALID_HOST = "invalid-host"
RULE_NO_GRANT = "no-grant"


class Request(NamedTuple):
    """What the engine needs to know of a request.

    `hosts` holds every name the request gives for its host (CONNECT
    target, SNI, absolute-form authority, `:authority`, each `Host`
    header), raw as received; more than MAX_HOST_NAMES of them block.
    `headers` are (lower-case name, value); the engine reads only those
    named in `HEADERS_READ`.  A NamedTuple, as Decision is: the proxy
    builds one per request, and this builds fastest.
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
    index = _compiled(policy)
    # Who the client is, as far as roles go; the address only when `net:` members make it count.
    key = (identity.user, identity.groups, identity.client_ip if index.by_network else None)
    roleset = index.identities.get(key)
    if roleset is None:
        roleset = index.roleset_of(identity, key, policy)
    if len(request.hosts) == 1:
        return _decide_host(request.hosts[0], roleset, index, request, identity, policy, now, ledger)
    if len(request.hosts) > MAX_HOST_NAMES:
        return _TOO_MANY_NAMES
    strictest: Decision | None = None
    for raw in dict.fromkeys(request.hosts):
        decision = _decide_host(raw, roleset, index, request, identity, policy, now, ledger)
        if strictest is None or _strictness(decision) < _strictness(strictest):
            strictest = decision
    assert strictest is not None
    return strictest


_NO_QUOTA = NoQuotaUsed()
_TOO_MANY_NAMES = Decision(
    BLOCK, DENIED, RULE_INVALID_HOST,
    message=f"The request names its host more than {MAX_HOST_NAMES} times; send one Host header.",
)  # fmt: skip


def _strictness(decision: Decision) -> tuple[int, int]:
    """Lower is stricter: any block beats any allow, then the lower level."""
    level = decision.level.rank if decision.level is not None else 3
    return (0 if decision.decision == BLOCK else 1, level)


def _decide_host(
    raw: str,
    roleset: _RoleSet,
    index: _Compiled,
    request: Request,
    identity: Identity,
    policy: Policy,
    now: datetime,
    ledger: QuotaLedger,
) -> Decision:
    # Everything that depends only on host and roles is planned once and
    # cached; only the method check and time-dependent grants run per request.
    plan = roleset.plans.get(raw)
    if plan is None:
        plan = index.plan(raw, roleset, policy)
    if isinstance(plan, Decision):  # nothing else can change it
        return plan
    allow = plan.allow
    if plan.site_grants.static_best is not None and allow is not None:  # read-only, no windows or quotas
        return _read_only(allow, request, policy, plan.refusals)
    return _decide_grants(plan, request, identity, policy, now, ledger)


class _Plan(NamedTuple):
    """What a host decides for a set of roles when method or time still matter."""

    allow: Decision | None  # the decision if static read-only grants allow
    site_grants: _SiteGrants
    site: str
    roles: tuple[str, ...]
    host: str | None
    allows: dict[str, Decision]  # role -> the decision when that role's timed grant allows
    refusals: dict[tuple[str | None, str], Decision]  # (role, why) -> a read-only block


class _RoleSet:
    """A set of roles and what it decides for each host and site.

    Clients with the same roles share one, so a company of a thousand users
    in a handful of role sets plans each host a handful of times.
    """

    __slots__ = ("roles", "anonymous", "plans", "sites", "unnamed", "unlisted")

    def __init__(self, roles: tuple[str, ...], anonymous: bool, defaults: _SiteGrants, unlisted_allowed: bool):
        self.roles = roles
        self.anonymous = anonymous  # signed in as nobody, and no role for that
        self.plans: dict[str, Decision | _Plan] = {}  # raw host -> plan
        # site -> plan at the host that first asked, for sites `unnamed` does not cover
        self.sites: dict[str, Decision | _Plan] = {}
        # What a site that none of these roles names decides (each role's `*`),
        # as a Decision with "{site}" for the site, when it needs no clock:
        # most sites of a large catalog, planned without a grants lookup.
        self.unnamed = _unnamed_template(roles, anonymous, defaults)
        # What a host in no site decides, but for the host: `unlisted: allow`
        # needs no message, so every unlisted host copies this one.
        self.unlisted = _unlisted_allowed(roles, None) if unlisted_allowed else None


class _HostInfo(NamedTuple):
    """What a raw host name is, for everyone: its canonical name and site."""

    name: str
    site: str | None
    invalid: Decision | None = None
    naming: frozenset[str] = frozenset()  # the roles that name the site (see _Compiled.naming)


def _host_info(raw: str, index: _Compiled, policy: Policy) -> _HostInfo:
    # Plain names, most of them, by the short way; the rest by normalize_host.
    # Built with _new_tuple: this runs for every host name the proxy has not
    # seen before.
    if raw.isascii():
        # Most names come in lower case already: the same object, hashed once.
        # drop_root removes the one dot normalize_host removes; nothing below
        # removes another, so `a.test..` is no plain name and fails there.
        name = drop_root(raw if raw.islower() else raw.lower())
        domains = index.domains
        found = domains.get(name)
        if found is not None:  # a domain of the policy: valid, as the loader checked
            return _new_tuple(_HostInfo, (name, found[0], None, found[1]))
        dot = name.find(".")
        while dot > 0:
            found = domains.get(name[dot + 1 :])
            if found is not None:
                # Under a domain of the policy: only the labels before it need checking.
                if len(name) <= MAX_NAME_LENGTH and plain_labels(name[:dot]):
                    return _new_tuple(_HostInfo, (name, found[0], None, found[1]))
                break
            dot = name.find(".", dot + 1)
        else:
            plain = plain_name(name)
            if plain is not None:
                return _new_tuple(_HostInfo, (plain, None, None, _NAMED_BY_NONE))
    try:
        host = normalize_host(raw)
    except InvalidHost as exc:
        return _HostInfo(
            raw,
            None,
            Decision(BLOCK, DENIED, RULE_INVALID_HOST, message=f"The request names an invalid host: {exc}."),
        )
    site = site_for(host, policy)
    return _HostInfo(host.name, site, None, index.naming.get(site, _NAMED_BY_NONE) if site else _NAMED_BY_NONE)


_NAMED_BY_NONE: frozenset[str] = frozenset()


def _unlisted_allowed(roles: tuple[str, ...], host: str | None) -> Decision:
    """`unlisted: allow`: the same for every host but the host (see _RoleSet.unlisted)."""
    return Decision(ALLOW, UNLISTED, RULE_UNLISTED, None, None, None, roles, host)


def _unlisted_denied(roles: tuple[str, ...], host: str) -> Decision:
    return Decision(
        BLOCK, DENIED, RULE_UNLISTED, None, None, None, roles, host,
        message=f"{host} is not on the list of allowed sites.",
    )


def _site_plan(roleset: _RoleSet, site: str, host: str, index: _Compiled) -> Decision | _Plan:
    """What `site` decides for `roleset` at `host`; for its other hosts, `_at_host`."""
    roles = roleset.roles
    if roleset.anonymous:  # `unauthenticated: deny`
        return Decision(
            BLOCK,
            UNAUTHENTICATED,
            RULE_UNAUTHENTICATED,
            site=site,
            host=host,
            message=f"{site} is only available after signing in to the proxy.",
        )
    site_grants = index.grants(roles, site)
    if not site_grants.grants:
        return Decision(
            BLOCK,
            DENIED,
            RULE_NO_GRANT,
            site=site,
            roles=roles,
            host=host,
            message=f"No role of yours grants access to {site}.",
        )
    best = site_grants.static_best
    if best is not None and best[1].level is Level.DENY:
        return _denied(best, site, roles, host)
    if best is not None and best[1].level is Level.FULL:
        return _allowed(best, site, roles, host, site_grants)
    allow = _allowed(best, site, roles, host, site_grants) if best is not None else None
    return _Plan(allow, site_grants, site, roles, host, {}, {})


def _unnamed_template(roles: tuple[str, ...], anonymous: bool, defaults: _SiteGrants) -> Decision | None:
    if anonymous:
        return None
    best = defaults.static_best
    if not defaults.grants:
        return Decision(
            BLOCK, DENIED, RULE_NO_GRANT, "{site}", None, None, roles, None,
            message="No role of yours grants access to {site}.",
        )
    if best is not None and best[1].level is Level.DENY:
        return _denied(best, "{site}", roles, None)
    if best is not None and best[1].level is Level.FULL:
        return _allowed(best, "{site}", roles, None, defaults)
    return None  # read-only or timed: planned the long way


def _from_template(template: Decision, site: str, host: str) -> Decision:
    verdict, reason, rule, _, level, role, roles, _, opens_at, counts_quota, message = template
    return _new_tuple(
        Decision,
        (verdict, reason, rule, site, level, role, roles, host, opens_at, counts_quota,
         message.replace("{site}", site) if message else message),
    )  # fmt: skip


def _at_host(plan: Decision | _Plan, host: str) -> Decision | _Plan:
    """A site's plan with the host that decided filled in."""
    if isinstance(plan, Decision):
        return _with_host(plan, host)
    allow = plan.allow
    return _Plan(
        _with_host(allow, host) if allow is not None else None, plan.site_grants, plan.site, plan.roles, host, {}, {}
    )


def _with_host(decision: Decision, host: str) -> Decision:
    # Decision._replace builds a dict and a map; this is a third of its cost.
    verdict, reason, rule, site, level, role, roles, _, opens_at, counts_quota, message = decision
    return _new_tuple(Decision, (verdict, reason, rule, site, level, role, roles, host, opens_at, counts_quota, message))


def _by_grant(
    decision: str,
    reason: str,
    by: tuple[str, Grant],
    site: str,
    roles: tuple[str, ...],
    host: str | None,
    opens_at: datetime | None = None,
    counts_quota: bool = False,
    message: str = "",
) -> Decision:
    """A decision made by one role's grant: it names the role, rule and level."""
    role, grant = by
    # Built as a tuple: a NamedTuple called with keywords costs twice as much,
    # and a decision is built for every new host.
    return _new_tuple(
        Decision, (decision, reason, grant.rule, site, grant.level, role, roles, host, opens_at, counts_quota, message)
    )


def _allowed(best, site, roles, host, site_grants) -> Decision:
    return _by_grant(ALLOW, ALLOWED, best, site, roles, host, counts_quota=site_grants.counts_quota)


def _denied(best, site, roles, host) -> Decision:
    return _by_grant(
        BLOCK, DENIED, best, site, roles, host, message=f"{site} is not available to your role {best[0]}."
    )


def _read_only(
    allow: Decision, request: Request, policy: Policy, refusals: dict[tuple[str | None, str], Decision]
) -> Decision:
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
            message=f"{allow.site} is read-only for you: {refusal}.",
        )
        if len(refusals) < _REFUSALS_KEPT:
            refusals[key] = blocked
    return blocked


_REFUSALS_KEPT = 8  # per host and role set: POST, PUT, PATCH, DELETE, upgrades ...


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
        if grant.windows and not index.window_open(grant, clock):
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
    allow = plan.allows.get(best[0])
    if allow is None:
        allow = plan.allows[best[0]] = _allowed(best, site, roles, host, site_grants)
    if best[1].level is Level.READ_ONLY:
        return _read_only(allow, request, policy, plan.refusals)
    return allow


class _Clock:
    """`now` in the policy's zone.  Window edges fall on whole minutes, so the
    local time of the current second is computed once and shared."""

    __slots__ = ("now", "local", "day", "minute", "second")
    now: datetime
    local: datetime
    day: date
    minute: int
    second: int

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


# Every header the engine reads; an adapter may pass only these.
HEADERS_READ = frozenset(("upgrade", *METHOD_OVERRIDE_HEADERS))


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
    rules = site.read_only_allow
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


def site_for(host: NormalHost, policy: Policy) -> str | None:
    """The site whose longest domain (or network, for an address) covers `host`."""
    if host.ip is not None:
        for network, network_site in policy.network_index:
            if host.ip in network:
                return network_site
        return policy.domain_index.get(host.name)
    index = policy.domain_index
    name = host.name
    while True:
        site: str | None = index.get(name)
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
        self.unlisted_allowed = policy.unlisted is Fallback.ALLOW
        self.access = {name: dict(role.access) for name, role in policy.roles.items()}
        self.by_user: dict[str, set[str]] = {}
        self.by_group: dict[str, set[str]] = {}
        self.everyone: set[str] = set()
        self.by_network: list[tuple[IPNetwork, str]] = []
        for role in policy.roles.values():
            for member in role.members:
                if member.kind is MemberKind.USER and member.value is not None:
                    self.by_user.setdefault(member.value, set()).add(role.name)
                elif member.kind is MemberKind.GROUP and member.value is not None:
                    self.by_group.setdefault(member.value, set()).add(role.name)
                elif member.kind is MemberKind.ALL:
                    self.everyone.add(role.name)
                elif member.kind is MemberKind.NET and member.network is not None:
                    self.by_network.append((member.network, role.name))
        # site -> the roles that name it; for the others each role's `*` applies.
        self.naming: dict[str, frozenset[str]] = {}
        for name, access in self.access.items():
            for site in access:
                self.naming[site] = self.naming.get(site, frozenset()) | {name}
        # domain -> (site, roles naming it): what a new host needs, from one lookup.
        by_site = {site: (site, self.naming.get(site, _NAMED_BY_NONE)) for site in policy.sites}
        self.domains = {domain: by_site[site] for domain, site in policy.domain_index.items()}
        # Every user the policy knows, with the roles its own directory gives:
        # worked out now, so that a user's first request costs no more than later ones.
        self.everyone_roles = self._sorted(self.everyone)
        self.directory_roles: dict[str, tuple[str, ...]] = {
            user: self._roles_of(user, policy.user_groups.get(user, frozenset()))
            for user in {*policy.user_groups, *self.by_user}
        }
        self._users: dict[tuple[str, frozenset[str]], tuple[str, ...]] = {}
        self._networks: dict[IPAddress, tuple[str, ...]] = {}
        self._grants: dict[tuple[tuple[str, ...], str], _SiteGrants] = {}
        self._defaults: dict[tuple[str, ...], _SiteGrants] = {}
        self.hosts: dict[str, _HostInfo] = {}
        self.rolesets: dict[tuple[tuple[str, ...], bool], _RoleSet] = {}
        self.forget()
        self.timezone = policy.timezone
        self.last_clock: tuple[int, datetime, date] | None = None
        self.windows_now: tuple[int | None, dict[int, bool]] = (None, {})
        self._openings: dict[tuple, datetime | None] = {}

    def forget(self) -> None:
        """Drop every plan (when the caches are full, and in benchmarks).

        Role sets are kept, emptied, unless there are too many; the policy's
        own users are known again at once, as after `prepare`.
        """
        if len(self.rolesets) < _CACHE_SIZE:
            for roleset in self.rolesets.values():
                roleset.plans.clear()
                roleset.sites.clear()
        else:
            self.rolesets = {}
            self._defaults = {}
        # (user, groups, address) -> role set
        self.identities: dict[tuple, _RoleSet] = {}
        if not self.by_network:  # else roles depend on the address too
            for user, roles in self.directory_roles.items():  # keys as `decide` makes them
                self.identities[(user, frozenset(), None)] = self._roleset(roles, False)
        self.planned = 0  # plans held by all role sets together

    def _roleset(self, roles: tuple[str, ...], anonymous: bool) -> _RoleSet:
        roleset = self.rolesets.get((roles, anonymous))
        if roleset is None:
            roleset = _RoleSet(roles, anonymous, self._unnamed(roles), self.unlisted_allowed)
            self.rolesets[(roles, anonymous)] = roleset
        return roleset

    def roleset_of(self, identity: Identity, key: tuple, policy: Policy) -> _RoleSet:
        """The role set of `identity`, remembered under `key` (see `decide`)."""
        roles = roles_for(identity, policy)
        roleset = self._roleset(roles, not roles and identity.user is None)
        _bounded_put(self.identities, key, roleset)
        return roleset

    def plan(self, raw: str, roleset: _RoleSet, policy: Policy) -> Decision | _Plan:
        """Plan what `raw` decides for `roleset`, from what is known of the host and site."""
        hosts = self.hosts
        host = hosts.get(raw)
        if host is None:
            host = _host_info(raw, self, policy)
            if len(hosts) >= _CACHE_SIZE:
                hosts.clear()  # as _bounded_put, without the call on this path
            hosts[raw] = host
        if host.invalid is not None:
            plan: Decision | _Plan = host.invalid
        elif host.site is None:
            unlisted = roleset.unlisted  # None when the policy denies unlisted hosts
            plan = _with_host(unlisted, host.name) if unlisted is not None else _unlisted_denied(roleset.roles, host.name)
        else:
            site = host.site
            unnamed = roleset.unnamed
            if unnamed is not None and host.naming.isdisjoint(roleset.roles):
                # Most sites of a large catalog: no per-site state at all, so
                # a role set's first request to a rarely visited site touches
                # nothing but the template.
                plan = _from_template(unnamed, site, host.name)
            else:
                planned = roleset.sites.get(site)
                if planned is None:
                    plan = roleset.sites[site] = _site_plan(roleset, site, host.name, self)
                elif planned.host == host.name:
                    plan = planned
                else:
                    plan = _at_host(planned, host.name)
        if self.planned >= _CACHE_SIZE:
            self.forget()  # a scan of many hosts cannot grow memory without bound
        roleset.plans[raw] = plan
        self.planned += 1
        return plan

    def window_open(self, grant: Grant, clock: _Clock) -> bool:
        """Whether `grant`'s windows are open now; worked out once a minute,
        since window edges fall on whole minutes."""
        minute, known = self.windows_now
        if minute != clock.minute:
            minute, known = self.windows_now = (clock.minute, {})
        found = known.get(id(grant))  # grants live as long as the policy
        if found is None:
            found = known[id(grant)] = in_any_window(grant.windows, clock.local)
        return found

    def opening(self, blocked: list[tuple[str, Grant]], clock: _Clock, policy: Policy) -> datetime | None:
        # The same grants blocked in the same minute open at the same time.
        key = (tuple(id(grant) for _, grant in blocked), clock.minute)
        if key not in self._openings:
            _bounded_put(self._openings, key, _earliest_opening(blocked, clock, policy))
        return self._openings[key]

    def user_roles(self, user: str, groups: frozenset[str], policy: Policy) -> tuple[str, ...]:
        if not groups:
            return self.directory_roles.get(user, self.everyone_roles)
        # Groups from an outside directory (LDAP): combined with the policy's own.
        key = (user, groups)
        roles = self._users.get(key)
        if roles is None:
            roles = self._roles_of(user, policy.user_groups.get(user, frozenset()) | groups)
            _bounded_put(self._users, key, roles)
        return roles

    def _roles_of(self, user: str, groups: frozenset[str]) -> tuple[str, ...]:
        matched = set(self.everyone)
        matched.update(self.by_user.get(user, ()))
        for group in groups:
            matched.update(self.by_group.get(group, ()))
        return self._sorted(matched)

    def _sorted(self, roles: set[str]) -> tuple[str, ...]:
        return tuple(sorted(roles, key=self.order.__getitem__))

    def network_roles(self, ip: IPAddress) -> tuple[str, ...]:
        roles = self._networks.get(ip)
        if roles is None:
            addr = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
            matched = {role for network, role in self.by_network if addr in network}
            roles = tuple(sorted(matched, key=self.order.__getitem__))
            _bounded_put(self._networks, ip, roles)
        return roles

    def grants(self, roles: tuple[str, ...], site: str) -> _SiteGrants:
        naming = self.naming.get(site)
        if naming is None or naming.isdisjoint(roles):
            return self._unnamed(roles)
        key = (roles, site)
        found = self._grants.get(key)
        if found is None:
            found = self._collect(roles, site)
            _bounded_put(self._grants, key, found)
        return found

    def _unnamed(self, roles: tuple[str, ...]) -> _SiteGrants:
        """The grants for a site none of `roles` names: each role's `*`, the same for every such site."""
        found = self._defaults.get(roles)
        if found is None:
            found = self._defaults[roles] = self._collect(roles, "*")
        return found

    def _collect(self, roles: tuple[str, ...], site: str) -> _SiteGrants:
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
        return _SiteGrants(tuple(grants), best if static else None, counts_quota)


def _bounded_put(cache: dict, key, value) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()  # a scan of many clients cannot grow memory without bound
    cache[key] = value


def prepare(policy: Policy) -> None:
    """Build `policy`'s lookup tables now rather than at its first decision.

    The proxy calls this before it installs a policy, so no request waits.
    """
    _compiled(policy)


def _compiled(policy: Policy) -> _Compiled:
    # Kept on the policy object itself: it lives and dies with the policy.
    index = policy.__dict__.get("_compiled")
    if index is None:
        index = _Compiled(policy)
        object.__setattr__(policy, "_compiled", index)
    return index
