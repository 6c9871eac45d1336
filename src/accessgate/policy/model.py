"""The policy as the engine sees it: frozen, validated, ready to decide with.

The loader (`accessgate.policy.loader`) builds these from YAML and is the only place
that checks them; everything here assumes a valid policy.  Lookup tables
that make `decide` fast are built once in `Policy.__post_init__`, so a policy
object is cheap to query and expensive only to create.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import time
from enum import Enum
from types import MappingProxyType
from typing import Mapping
from zoneinfo import ZoneInfo

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# What a decision says, and why: one code per outcome (contract section 2).
# Part of the language, since a policy's `tests:` name them.
ALLOW = "allow"
BLOCK = "block"
DENIED = "denied"
READ_ONLY = "read-only"
OUTSIDE_WINDOW = "outside-window"
QUOTA_EXHAUSTED = "quota-exhausted"
UNAUTHENTICATED = "unauthenticated"
# A `warn` grant: the user may go on after giving a reason (until then, blocked).
JUSTIFICATION_REQUIRED = "justification-required"
ALLOWED = "allowed"
UNLISTED = "unlisted"
BLOCK_REASONS = (DENIED, READ_ONLY, OUTSIDE_WINDOW, QUOTA_EXHAUSTED, UNAUTHENTICATED, JUSTIFICATION_REQUIRED)
ALLOW_REASONS = (ALLOWED, UNLISTED)


def fold_user(name: str) -> str:
    """A login name as accessgate compares, counts and records it: case-folded.

    Directories (Active Directory, most LDAP schemas) match login names
    case-insensitively, so `ALICE` and `alice` sign in as one person and
    must be one person for roles, quotas and the audit log.
    """
    return name.casefold()


class Level(str, Enum):
    """How far a grant opens a site.  Ordered: DENY < READ_ONLY < WARN < FULL.

    WARN is full access once the user has given a reason (for the grant's
    `continue_minutes`); a full grant elsewhere is never warned.
    """

    DENY = "deny"
    READ_ONLY = "read-only"
    WARN = "warn"
    FULL = "full"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {Level.DENY: 0, Level.READ_ONLY: 1, Level.WARN: 2, Level.FULL: 3}

# How long a reason given on a warn page opens the site, in minutes.
CONTINUE_MINUTES_DEFAULT = 30
CONTINUE_MINUTES_MAX = 1440
# The rule of a warn grant's allow once the user gave a reason: "roles.staff.access.tiktok+continued".
CONTINUED_SUFFIX = "+continued"


@dataclass(frozen=True, slots=True)
class Said:
    """Where a request says something: a header, a field of its form body or
    of its JSON body.  `name` is lower-case for a header, as sent otherwise."""

    kind: str  # "header" | "form" | "json"
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


SAID_KINDS = ("header", "form", "json")


@dataclass(frozen=True, slots=True)
class Operation:
    """What a request must say it does for a `read_only_allow` rule to let it through.

    Every place in `named_in` must hold one value, the same in all of them:
    the operation's name.  `graphql`, when given, holds the full text of a
    GraphQL document, which must parse and hold no mutation or subscription;
    the operation it runs (the one named, else its only one) gives the name
    when `named_in` is empty.  The name must be a GraphQL name matching one
    of `names` (globs; empty: any name, which only a `graphql` rule allows).
    """

    names: tuple[str, ...] = ()
    named_in: tuple[Said, ...] = ()
    graphql: Said | None = None

    @property
    def reads_body(self) -> bool:
        return self.graphql is not None or any(s.kind != "header" for s in self.named_in)


@dataclass(frozen=True, slots=True)
class ReadOnlyRule:
    """A write that read-only access still allows (log in, search).

    `method` None matches every method; `path` is a glob (`*` crosses `/`)
    that must match the request's path, without its query string, in every
    way a server may read it (`paths.readings`).  With `operation`, the
    request must also say it does a read (decision/content.py).
    """

    method: str | None
    path: str
    operation: Operation | None = None


@dataclass(frozen=True, slots=True)
class Site:
    name: str  # the key: rules, the audit log and metric labels use it
    domains: tuple[str, ...]  # normalized A-label form, no trailing dot
    networks: tuple[IPNetwork, ...] = ()
    read_only_allow: tuple[ReadOnlyRule, ...] = ()
    # Derived once: the rules decided on method and path alone (at header
    # time, at today's cost), and those that read what the request says.
    path_rules: tuple[ReadOnlyRule, ...] = field(init=False, repr=False, compare=False, default=())
    operation_rules: tuple[ReadOnlyRule, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_rules", tuple(r for r in self.read_only_allow if r.operation is None))
        object.__setattr__(self, "operation_rules", tuple(r for r in self.read_only_allow if r.operation is not None))

    display_name: str = ""  # `name:` as people read it ("LinkedIn"); "" when not given

    @property
    def title(self) -> str:
        """What pages and reports call the site: its display name, else its key."""
        return self.display_name or self.name


@dataclass(frozen=True, slots=True)
class Window:
    """`DAYS HH:MM-HH:MM` in the policy's time zone, half-open [start, end).

    `days` are ISO weekdays of the *starting* day (0 = Monday).  `end` is
    None for `24:00`.  A window whose end is before its start crosses
    midnight and belongs to its starting day.
    """

    days: frozenset[int]
    start: time
    end: time | None
    text: str  # as written, for messages and the status page

    @property
    def crosses_midnight(self) -> bool:
        return self.end is not None and self.end <= self.start


@dataclass(frozen=True, slots=True)
class Grant:
    """One role's access to one site (or to `*`)."""

    level: Level
    windows: tuple[Window, ...] = ()
    daily_minutes: int | None = None
    rule: str = ""  # e.g. "roles.everyone.access.facebook", names it in decisions
    continue_minutes: int | None = None  # level WARN only: how long a reason opens the site
    # Derived once: an Enum hashes in Python, too slow for every decision.
    rank: int = field(init=False, repr=False, compare=False, default=0)
    # No windows, no quota, no warning: decided without a clock or a store.
    is_static: bool = field(init=False, repr=False, compare=False, default=True)
    # The rule of an allow after the user gave a reason (level WARN).
    continued_rule: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", _LEVEL_RANK[self.level])
        object.__setattr__(
            self, "is_static", not self.windows and self.daily_minutes is None and self.level is not Level.WARN
        )
        if self.level is Level.WARN:
            object.__setattr__(self, "continued_rule", f"{self.rule}{CONTINUED_SUFFIX}")
            if self.continue_minutes is None:
                object.__setattr__(self, "continue_minutes", CONTINUE_MINUTES_DEFAULT)



class MemberKind(str, Enum):
    USER = "user"
    GROUP = "group"
    NET = "net"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Member:
    kind: MemberKind
    value: str | None = None  # user or group name; None for `all`
    network: IPNetwork | None = None  # for `net:`


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    members: tuple[Member, ...]
    access: Mapping[str, Grant]  # site name or "*" -> grant


class Fallback(str, Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """One case of the policy's `tests:` list."""

    url: str
    expect: str  # "allow" | "block"
    user: str | None = None
    method: str = "GET"
    at: str | None = None  # ISO time; without offset, in the policy's zone
    reason: str | None = None
    client_ip: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    quota_used: int | None = None  # minutes already used today on the tested site
    source: str = ""  # "file:line" for failure messages
    body: str | None = None  # the request body, as UTF-8 text (read by rules with an `operation`)
    operation: str | None = None  # or the operation it says it runs, as the audit log names it


@dataclass(frozen=True)
class Policy:
    """A whole, valid policy.  Built by the loader; never mutated."""

    timezone: ZoneInfo
    sites: Mapping[str, Site]
    roles: Mapping[str, Role]
    groups: Mapping[str, frozenset[str]]  # local directory: group -> users
    unauthenticated: str  # "deny" or a role name
    unlisted: Fallback
    tests: tuple[PolicyTest, ...] = ()
    digest: str = ""  # sha256 hex of the source files, in load order
    sources: tuple[str, ...] = ()  # files the policy was read from
    ldap: Mapping[str, object] | None = None  # directory.ldap settings, if any
    # "file:line:col: warning: ..." lines: valid, but worth a second look (`check` prints them).
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Which TLS connections are decrypted (docs/inspection.md): named lists of
    # domains, the domains and categories never decrypted ("category:NAME"
    # or a domain, as written), and the sites always decrypted ("*": all).
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    never_inspect: tuple[str, ...] = ()
    always_inspect: tuple[str, ...] = ()

    # Derived lookup tables, built once.
    domain_index: Mapping[str, str] = field(init=False, repr=False, compare=False)
    network_index: tuple[tuple[IPNetwork, str], ...] = field(
        init=False, repr=False, compare=False
    )
    user_groups: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domains: dict[str, str] = {}
        networks: list[tuple[IPNetwork, str]] = []
        for site in self.sites.values():
            for domain in site.domains:
                domains[domain] = site.name
            for net in site.networks:
                networks.append((net, site.name))
        # Longest prefix first, so the first containing network is the best.
        networks.sort(key=lambda pair: pair[0].prefixlen, reverse=True)
        user_groups: dict[str, set[str]] = {}
        for group, users in self.groups.items():
            for user in users:
                user_groups.setdefault(user, set()).add(group)
        object.__setattr__(self, "domain_index", MappingProxyType(domains))
        object.__setattr__(self, "network_index", tuple(networks))
        object.__setattr__(
            self,
            "user_groups",
            MappingProxyType({u: frozenset(g) for u, g in user_groups.items()}),
        )

    @property
    def short_digest(self) -> str:
        return self.digest[:12]

    def site_title(self, site: str | None) -> str | None:
        """The display name of `site` (its key when it has none); None for no site."""
        if site is None:
            return None
        found = self.sites.get(site)
        return found.title if found is not None else site
