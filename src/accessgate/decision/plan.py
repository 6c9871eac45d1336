"""The engine's tables and caches for one policy, and the plans kept in them.

`index_of(policy)` builds a `PolicyIndex` once per policy (kept on the
policy object, so a reload starts afresh): who has which roles, which
domain belongs to which site, each role set's grants per site.  What a host
decides for a role set as far as it depends on neither method nor time is
worked out once and kept as a plan: a `Decision` when nothing else can
change it, else a `Plan` that `rules` finishes per request.  Clients with
the same roles share one `RoleSet` and its plans, so a company of a
thousand users in a handful of role sets plans each host a handful of
times.  Every cache is bounded: a scan of endless hosts or clients cannot
grow memory without bound.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Callable, NamedTuple, TypeVar

from accessgate.policy.model import Fallback, Grant, IPAddress, IPNetwork, Level, MemberKind, Policy
from accessgate.policy.windows import in_any_window
from accessgate.decision.types import (
    ALLOW,
    ALLOWED,
    ANY_SITE,
    BLOCK,
    DENIED,
    RULE_NO_GRANT,
    RULE_UNAUTHENTICATED,
    RULE_UNLISTED,
    UNAUTHENTICATED,
    UNLISTED,
    Decision,
    Identity,
    by_grant,
    new_decision,
    placed,
)
from accessgate.decision.sites import NAMED_BY_NONE, HostInfo, host_info

T = TypeVar("T")

_CACHE_SIZE = 100_000  # per cache; cleared when full, so memory stays bounded


class SiteGrants(NamedTuple):
    grants: tuple[tuple[str, Grant], ...]  # (role, grant) for the site, in the policy's role order
    # The winning grant when no grant has windows or quotas: the common case
    # needs no clock and no ledger.
    static_best: tuple[str, Grant] | None
    counts_quota: bool


class Plan(NamedTuple):
    """What a host decides for a set of roles when method or time still matter."""

    allow: Decision | None  # the decision if static read-only grants allow
    site_grants: SiteGrants
    site: str
    roles: tuple[str, ...]
    host: str | None
    allows: dict[str, Decision]  # role -> the decision when that role's timed grant allows
    refusals: dict[tuple[str | None, str], Decision]  # (role, why) -> a read-only block


class RoleSet:
    """A set of roles and what it decides for each host and site."""

    __slots__ = ("roles", "anonymous", "plans", "sites", "unnamed", "unlisted")

    def __init__(self, roles: tuple[str, ...], anonymous: bool, defaults: SiteGrants, unlisted_allowed: bool):
        self.roles = roles
        self.anonymous = anonymous  # signed in as nobody, and no role for that
        self.plans: dict[str, Decision | Plan] = {}  # raw host -> plan
        # site -> plan at the host that first asked, for sites `unnamed` does not cover
        self.sites: dict[str, Decision | Plan] = {}
        # What a site that none of these roles names decides (each role's `*`),
        # as a Decision with ANY_SITE for the site, when it needs no clock:
        # most sites of a large catalog, planned without a grants lookup.
        self.unnamed = _unnamed_template(roles, anonymous, defaults)
        # What a host in no site decides, but for the host: `unlisted: allow`
        # needs no message, so every unlisted host copies this one.
        self.unlisted = new_decision(ALLOW, UNLISTED, RULE_UNLISTED, roles=roles) if unlisted_allowed else None


def allowed_by(best: tuple[str, Grant], site: str, roles: tuple[str, ...], host: str | None,
               site_grants: SiteGrants) -> Decision:
    return by_grant(ALLOW, ALLOWED, best, site, roles, host, counts_quota=site_grants.counts_quota)


def denied_by(best: tuple[str, Grant], site: str, roles: tuple[str, ...], host: str | None, title: str) -> Decision:
    return by_grant(BLOCK, DENIED, best, site, roles, host, message=f"{title} is not available to your role {best[0]}.")


def _site_plan(roleset: RoleSet, site: str, host: str, index: PolicyIndex) -> Decision | Plan:
    """What `site` decides for `roleset` at `host`; for its other hosts, `_at_host`."""
    roles = roleset.roles
    title = index.titles.get(site, site)
    if roleset.anonymous:  # `unauthenticated: deny`
        return new_decision(
            BLOCK, UNAUTHENTICATED, RULE_UNAUTHENTICATED, site=site, host=host,
            message=f"{title} is only available after signing in to the proxy.",
        )  # fmt: skip
    site_grants = index.grants(roles, site)
    decided = _without_clock(site_grants, site, roles, host, title)
    if decided is not None:
        return decided
    best = site_grants.static_best
    allow = allowed_by(best, site, roles, host, site_grants) if best is not None else None
    return Plan(allow, site_grants, site, roles, host, {}, {})


def _unnamed_template(roles: tuple[str, ...], anonymous: bool, defaults: SiteGrants) -> Decision | None:
    """`_site_plan` for every site no role of `roles` names, with ANY_SITE for the site; None if it needs a clock."""
    return None if anonymous else _without_clock(defaults, ANY_SITE, roles, None, ANY_SITE)


def _without_clock(
    site_grants: SiteGrants, site: str, roles: tuple[str, ...], host: str | None, title: str
) -> Decision | None:
    """The decision when no grant, or a static deny or full grant, makes it; None for read-only or timed grants.

    `title` is what its message calls the site (its display name).
    """
    if not site_grants.grants:
        return new_decision(
            BLOCK, DENIED, RULE_NO_GRANT, site=site, roles=roles, host=host,
            message=f"No role of yours grants access to {title}.",
        )  # fmt: skip
    best = site_grants.static_best
    if best is not None and best[1].level is Level.DENY:
        return denied_by(best, site, roles, host, title)
    if best is not None and best[1].level is Level.FULL:
        return allowed_by(best, site, roles, host, site_grants)
    return None


def _at_host(plan: Decision | Plan, host: str) -> Decision | Plan:
    """A site's plan with the host that decided filled in."""
    if isinstance(plan, Decision):
        return placed(plan, plan.site, host)
    allow = plan.allow
    return Plan(placed(allow, allow.site, host) if allow is not None else None,
                plan.site_grants, plan.site, plan.roles, host, {}, {})


class PolicyIndex:
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
        by_site = {site: (site, self.naming.get(site, NAMED_BY_NONE)) for site in policy.sites}
        self.domains = {domain: by_site[site] for domain, site in policy.domain_index.items()}
        # site -> what messages call it: its display name, else its key.
        self.titles: dict[str, str] = {name: site.title for name, site in policy.sites.items()}
        # Every user the policy knows, with the roles its own directory gives:
        # worked out now, so that a user's first request costs no more than later ones.
        self.everyone_roles = self._sorted(self.everyone)
        self.directory_roles: dict[str, tuple[str, ...]] = {
            user: self._roles_of(user, policy.user_groups.get(user, frozenset()))
            for user in {*policy.user_groups, *self.by_user}
        }
        self._users: dict[tuple[str, frozenset[str]], tuple[str, ...]] = {}
        self._networks: dict[IPAddress, tuple[str, ...]] = {}
        self._grants: dict[tuple[tuple[str, ...], str], SiteGrants] = {}
        self._defaults: dict[tuple[str, ...], SiteGrants] = {}
        self.hosts: dict[str, HostInfo] = {}
        self.rolesets: dict[tuple[tuple[str, ...], bool], RoleSet] = {}
        self.forget()
        self.timezone = policy.timezone
        self.last_clock: tuple[int, datetime, date] | None = None
        self.windows_now: tuple[int | None, dict[int, bool]] = (None, {})
        # (blocked grants, minute) -> when the first of them opens again
        self.openings: dict[tuple, datetime | None] = {}

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
        self.identities: dict[tuple, RoleSet] = {}
        if not self.by_network:  # else roles depend on the address too
            for user, roles in self.directory_roles.items():  # keys as `decide` makes them
                self.identities[(user, frozenset(), None)] = self._roleset(roles, False)
        self.planned = 0  # plans held by all role sets together

    def _roleset(self, roles: tuple[str, ...], anonymous: bool) -> RoleSet:
        roleset = self.rolesets.get((roles, anonymous))
        if roleset is None:
            roleset = RoleSet(roles, anonymous, self._unnamed(roles), self.unlisted_allowed)
            self.rolesets[(roles, anonymous)] = roleset
        return roleset

    def roleset_of(self, identity: Identity, key: tuple, policy: Policy) -> RoleSet:
        """The role set of `identity`, remembered under `key` (see `decide`)."""
        roles = roles_for(identity, policy)
        roleset = self._roleset(roles, not roles and identity.user is None)
        remember(self.identities, key, roleset)
        return roleset

    def plan(self, raw: str, roleset: RoleSet, policy: Policy) -> Decision | Plan:
        """Plan what `raw` decides for `roleset`, from what is known of the host and site."""
        hosts = self.hosts
        host = hosts.get(raw)
        if host is None:
            host = host_info(raw, self.domains, self.naming, policy)
            if len(hosts) >= _CACHE_SIZE:
                hosts.clear()  # as `remember`, without the call on this path
            hosts[raw] = host
        if host.invalid is not None:
            plan: Decision | Plan = host.invalid
        elif host.site is None:
            unlisted = roleset.unlisted  # None when the policy denies unlisted hosts
            if unlisted is not None:
                plan = placed(unlisted, None, host.name)
            else:
                plan = new_decision(BLOCK, DENIED, RULE_UNLISTED, roles=roleset.roles, host=host.name,
                                    message=f"{host.name} is not on the list of allowed sites.")
        else:
            site = host.site
            unnamed = roleset.unnamed
            if unnamed is not None and host.naming.isdisjoint(roleset.roles):
                # Most sites of a large catalog: no per-site state at all, so
                # a role set's first request to a rarely visited site touches
                # nothing but the template.
                plan = placed(unnamed, site, host.name, self.titles.get(site, site))
            else:
                planned = roleset.sites.get(site)
                if planned is None:
                    plan = roleset.sites[site] = _site_plan(roleset, site, host.name, self)
                elif planned.host == host.name:
                    plan = planned
                else:
                    plan = _at_host(planned, host.name)
        if self.planned >= _CACHE_SIZE:
            self.forget()
        roleset.plans[raw] = plan
        self.planned += 1
        return plan

    def window_open(self, grant: Grant, minute: int, local: datetime) -> bool:
        """Whether `grant`'s windows are open at `local` time, in epoch `minute`;
        worked out once a minute, since window edges fall on whole minutes."""
        known_minute, known = self.windows_now
        if known_minute != minute:
            known = {}
            self.windows_now = (minute, known)
        found = known.get(id(grant))  # grants live as long as the policy
        if found is None:
            found = known[id(grant)] = in_any_window(grant.windows, local)
        return found

    def user_roles(self, user: str, groups: frozenset[str], policy: Policy) -> tuple[str, ...]:
        if not groups:
            return self.directory_roles.get(user, self.everyone_roles)
        # Groups from an outside directory (LDAP): combined with the policy's own.
        key = (user, groups)
        roles = self._users.get(key)
        if roles is None:
            roles = self._roles_of(user, policy.user_groups.get(user, frozenset()) | groups)
            remember(self._users, key, roles)
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
            remember(self._networks, ip, roles)
        return roles

    def grants(self, roles: tuple[str, ...], site: str) -> SiteGrants:
        naming = self.naming.get(site)
        if naming is None or naming.isdisjoint(roles):
            return self._unnamed(roles)
        key = (roles, site)
        found = self._grants.get(key)
        if found is None:
            found = self._collect(roles, site)
            remember(self._grants, key, found)
        return found

    def _unnamed(self, roles: tuple[str, ...]) -> SiteGrants:
        """The grants for a site none of `roles` names: each role's `*`, the same for every such site."""
        found = self._defaults.get(roles)
        if found is None:
            found = self._defaults[roles] = self._collect(roles, "*")
        return found

    def _collect(self, roles: tuple[str, ...], site: str) -> SiteGrants:
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
        return SiteGrants(tuple(grants), best if static else None, counts_quota)


def remember(cache: dict, key, value) -> None:
    """`cache[key] = value`, clearing a full cache first: a scan of many clients cannot grow memory without bound."""
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


def roles_for(identity: Identity, policy: Policy) -> tuple[str, ...]:
    """Contract step 2: every role the client has, in the policy's order.

    Members that match give roles; an anonymous client has its `net:` roles
    and the role named by `unauthenticated` too (none when it is `deny`).
    """
    index = index_of(policy)
    roles = index.user_roles(identity.user, identity.groups, policy) if identity.user is not None else ()
    if index.by_network and identity.client_ip is not None:
        net_roles = index.network_roles(identity.client_ip)
        if net_roles:
            roles = tuple(sorted(set(roles) | set(net_roles), key=index.order.__getitem__))
    if identity.user is None and policy.unauthenticated != "deny":
        anonymous = policy.unauthenticated
        roles = tuple(sorted({*roles, anonymous}, key=index.order.__getitem__)) if roles else (anonymous,)
    return roles


def grants_for(roles: tuple[str, ...], site: str, policy: Policy) -> tuple[tuple[str, Grant], ...]:
    """Contract step 3: (role, grant) for `site` from each role: its entry for the site, else `*`."""
    return index_of(policy).grants(roles, site).grants


def prepare(policy: Policy) -> None:
    """Build `policy`'s lookup tables now rather than at its first decision.

    The proxy calls this before it installs a policy, so no request waits.
    """
    index_of(policy)


def index_of(policy: Policy) -> PolicyIndex:
    return kept_on(policy, "_compiled", PolicyIndex)


def kept_on(policy: Policy, name: str, build: Callable[[Policy], T]) -> T:
    """`build(policy)`, made once and kept on the policy object itself as `name`:
    it lives and dies with the policy."""
    found = policy.__dict__.get(name)
    if found is None:
        found = build(policy)
        object.__setattr__(policy, name, found)
    return found
