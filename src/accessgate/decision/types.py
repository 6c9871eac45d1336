"""What the engine reads and what it answers: `Request`, `Identity`, `Decision`.

The outcome codes (`ALLOW`, `BLOCK` and the reasons) belong to the policy
language, since a policy's `tests:` name them; they are defined in
`policy.model` and re-exported here with the rule names of outcomes that no
grant decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple

from accessgate.decision.content import Claimed, Content
from accessgate.policy.model import (  # noqa: F401 - re-exported: the codes a Decision carries
    ALLOW,
    ALLOW_REASONS,
    ALLOWED,
    BLOCK,
    BLOCK_REASONS,
    DENIED,
    JUSTIFICATION_REQUIRED,
    OUTSIDE_WINDOW,
    QUOTA_EXHAUSTED,
    READ_ONLY,
    UNAUTHENTICATED,
    UNLISTED,
    Grant,
    IPAddress,
    Level,
)

# Rule names for outcomes that no grant decided.
RULE_UNLISTED = "unlisted"
RULE_UNAUTHENTICATED = "unauthenticated"
RULE_INVALID_HOST = "invalid-host"
RULE_NO_GRANT = "no-grant"

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
# Every header the engine reads; an adapter may pass only these.
HEADERS_READ = frozenset(("upgrade", *METHOD_OVERRIDE_HEADERS))

# The most names a request may give for its host, counted with repeats:
# RFC 9112 allows one Host header, and eight leave room for it, the URL or
# :authority, the SNI and the CONNECT target.  Each name costs a
# normalization; a request that gives more is blocked before any is
# decided, so no request costs more than eight.
MAX_HOST_NAMES = 8


class Request(NamedTuple):
    """What the engine needs to know of a request.

    `hosts` holds every name the request gives for its host (CONNECT
    target, SNI, absolute-form authority, `:authority`, each `Host`
    header), raw as received; more than MAX_HOST_NAMES of them block.
    `headers` are (lower-case name, value); the engine reads only those
    named in `HEADERS_READ`.  `content` is what the request says it does
    beyond that (its headers and small body, or an operation written down):
    only `read_only_allow` rules with an `operation` read it, and None
    (not read) lets none of them through.  A NamedTuple, as Decision is:
    the proxy builds one per request.
    """

    method: str
    hosts: tuple[str, ...]
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    content: Content | Claimed | None = None

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
    as immutable, and cheaper to build, which happens for every new host."""

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


# A NamedTuple's own constructor is Python code, and slower still with
# keywords: the engine builds every Decision as a plain tuple, here.
_new_tuple = tuple.__new__


def new_decision(
    decision: str,
    reason: str,
    rule: str,
    site: str | None = None,
    level: Level | None = None,
    role: str | None = None,
    roles: tuple[str, ...] = (),
    host: str | None = None,
    opens_at: datetime | None = None,
    counts_quota: bool = False,
    message: str = "",
) -> Decision:
    """`Decision(...)`, built the fast way."""
    return _new_tuple(
        Decision, (decision, reason, rule, site, level, role, roles, host, opens_at, counts_quota, message)
    )


def by_grant(
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
    return new_decision(
        decision, reason, grant.rule, site, grant.level, role, roles, host, opens_at, counts_quota, message
    )


# The site of a role set's template decision, which `placed` fills in.
ANY_SITE: Final = "{site}"


def placed(decision: Decision, site: str | None, host: str | None, title: str | None = None) -> Decision:
    """`decision` for `site` at `host`: a role set's template (site ANY_SITE)
    with its site filled in (its message calls it `title`, default `site`),
    or a site's decision moved to another of its hosts."""
    verdict, reason, rule, was, level, role, roles, _, opens_at, counts_quota, message = decision
    if was == ANY_SITE and site is not None and message:  # only a template's message names ANY_SITE
        message = message.replace(ANY_SITE, title if title is not None else site)
    return new_decision(verdict, reason, rule, site, level, role, roles, host, opens_at, counts_quota, message)
