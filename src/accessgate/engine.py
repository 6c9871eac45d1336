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
from .model import Grant, IPAddress, Level, MemberKind, Policy, Role
from .quota import NoQuotaUsed, QuotaLedger
from .windows import in_any_window, next_window_start

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
    """Decide `request` from `identity` under `policy` at `now` (aware datetime)."""
    raise NotImplementedError
