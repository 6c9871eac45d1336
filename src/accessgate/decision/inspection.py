"""Whether a TLS connection must be decrypted to be decided, and why: the pure predicate (issue 18).

Under `accessgate_inspect=needed` the proxy decrypts a connection only when
its decision depends on what is inside it, for this client, now.  In order:

1. a name under `never_inspect` is never decrypted, whatever else applies:
   the connection passes unread, or is refused when its names block it;
2. `all` decrypts everything else;
3. a ClientHello that cannot be read, hides its server's name (Encrypted
   Client Hello) or names none: decrypted, since only the requests inside
   say which site they are for;
4. the connection, decided as a write on every name it has, depends on
   what is inside unless it is an allow of an unlisted host or of full
   access (`content_matters`: a block page to show, a method to read, a
   record of every request the policy asks for);
5. its server: not known yet, or its certificate or address names a site
   whose decision would depend on what is inside, or another site with
   daily minutes: decrypted.  A browser may send that site's requests over
   this connection, and so may anyone fronting a domain;
6. else it passes unread, decided on its names, and decided again while it
   stays open (the proxy's review).

Like `rules`, this does no I/O: given the same names, identity, policy,
time, quota ledger and server it gives the same answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from accessgate.errors import InvalidHost
from accessgate.policy.hosts import drop_root, normalize_host
from accessgate.policy.model import Level, Policy
from accessgate.decision.plan import kept_on
from accessgate.decision.quota import QuotaLedger
from accessgate.decision.rules import decide
from accessgate.decision.types import READ_ONLY, Decision, Identity, Request

NEEDED = "needed"
ALL = "all"
MODES = (NEEDED, ALL)

# Why a connection is decrypted or not: the audit record's `inspection`, a metric label.
NEVER = "never-inspect"  # never_inspect names it: not decrypted, whatever else applies
EVERYTHING = "all"  # accessgate_inspect=all
UNREADABLE = "unreadable-hello"  # a ClientHello nobody can read: decrypted (and refused by TLS)
ECH = "ech"  # Encrypted Client Hello hides the server's real name
NO_SNI = "no-sni"  # the ClientHello names no server: the Host inside decides which site it is
BLOCKED = "blocked"  # a block page to show
METHOD = "read-only"  # the method decides (read-only)
LEVEL = "level"  # a level whose decision depends on the request (any but full)
RECORDS = "records"  # always_inspect: a record of every request
SERVER_UNKNOWN = "server-unknown"  # the server's certificate could not be read
SERVER_GOVERNED = "server-governed"  # its certificate or address names a site that needs decrypting
UNLISTED = "unlisted"  # passed through: not governed
FULL = "full"  # passed through: full access
WHYS = (NEVER, EVERYTHING, UNREADABLE, ECH, NO_SNI, BLOCKED, METHOD, LEVEL, RECORDS, SERVER_UNKNOWN,
        SERVER_GOVERNED, UNLISTED, FULL)  # fmt: skip

TUNNEL_METHOD = "CONNECT"  # a connection nobody reads may carry writes: decided as one
# A certificate with more names than this is not checked name by name; its connection is decrypted.
MAX_CERTIFICATE_NAMES = 1000
EVERY_SITE = "*"


class Hello(NamedTuple):
    """What the proxy knows of a TLS connection before it decrypts anything."""

    names: tuple[str, ...]  # CONNECT target, server address, every SNI name (at most MAX_HOST_NAMES + 1)
    sni: bool = True  # the ClientHello names its server
    ech: bool = False  # an encrypted_client_hello extension (0xfe0d) that may hide another server name
    readable: bool = True  # it could be read at all


class Server(NamedTuple):
    """What the proxy learned of the server by reading its certificate."""

    names: tuple[str, ...]  # the certificate's DNS names and addresses (or its CN without any); `*.x` as written
    address: str | None = None  # the IP address the connection goes to


# The server of a site as the policy sees it: one that serves nothing else.
ITS_OWN = Server(())


class Inspection(NamedTuple):
    decrypt: bool
    why: str  # one of WHYS
    decision: Decision  # the connection decided as a write on every name of its hello


def inspection(
    hello: Hello,
    identity: Identity,
    policy: Policy,
    now: datetime,
    ledger: QuotaLedger | None = None,
    *,
    mode: str = NEEDED,
    server: Server | None = None,
) -> Inspection:
    """Whether to decrypt the connection `hello` describes, and why (see the module's steps).

    `server` None means its certificate is not known yet: an answer that
    would pass the connection through is `SERVER_UNKNOWN` instead, and the
    caller may read the certificate and ask again.
    """
    decision = decide(Request(TUNNEL_METHOD, hello.names, "/"), identity, policy, now, ledger)
    if never_inspected(hello.names, policy) is not None:
        return Inspection(False, NEVER, decision)
    if mode != NEEDED:
        return Inspection(True, EVERYTHING, decision)
    if not hello.readable:
        return Inspection(True, UNREADABLE, decision)
    if hello.ech:
        return Inspection(True, ECH, decision)
    if not hello.sni:
        return Inspection(True, NO_SNI, decision)
    why = content_matters(decision, policy)
    if why is not None:
        return Inspection(True, why, decision)
    if server is None:
        return Inspection(True, SERVER_UNKNOWN, decision)
    if serves_more(server, identity, policy, now, ledger, charged=decision.site):
        return Inspection(True, SERVER_GOVERNED, decision)
    return Inspection(False, UNLISTED if decision.site is None else FULL, decision)


def content_matters(decision: Decision, policy: Policy) -> str | None:
    """Why `decision` (a connection's, decided as a write) depends on what the connection carries;
    None when its names alone decide it.

    The one place that says which grants need the requests themselves: only
    an allow of an unlisted host, or of full access to a site the policy does
    not want every request of, is decided by names.  Anything else (a block,
    whose page must be shown; read-only, or any level but full, whose outcome
    depends on the method, the path or the body; `always_inspect`) is not.
    """
    if not decision.allowed:
        return METHOD if decision.reason == READ_ONLY else BLOCKED
    if decision.site is None:
        return None
    if decision.level is not Level.FULL:
        return LEVEL
    if always_inspected(decision.site, policy):
        return RECORDS
    return None


def serves_more(server: Server, identity: Identity, policy: Policy, now: datetime,
                ledger: QuotaLedger | None = None, *, charged: str | None = None) -> bool:
    """Whether the server's certificate or address names a site whose decision for this client
    depends on what is inside (`content_matters`): then requests for that site may come over
    this connection too.

    So does a site with daily minutes other than `charged` (the site the passed-through
    connection itself is charged to): its minutes are counted only on requests for it, and
    only a decrypted connection tells which requests those are."""
    names = server.names
    if len(names) > MAX_CERTIFICATE_NAMES:
        return True
    words = _words(policy)
    hosts: list[str] = [] if server.address is None else [server.address]
    for name in names:
        if name.startswith("*."):
            base = name[2:]
            hosts.append(base)  # a site at the base or above it covers every name the wildcard does
            hosts.extend(words.children(policy).get(drop_root(base.lower()), ()))
        else:
            hosts.append(name)
    for host in dict.fromkeys(hosts):
        decision = decide(Request(TUNNEL_METHOD, (host,), "/"), identity, policy, now, ledger)
        if content_matters(decision, policy) is not None:
            return True
        if decision.counts_quota and decision.site != charged:
            return True
    return False


def never_inspected(names: tuple[str, ...] | list[str], policy: Policy) -> str | None:
    """The never_inspect entry that covers any of `names`, or None."""
    never = _words(policy).never
    if not never:
        return None
    for raw in names:
        name = _normal(raw)
        while name:
            entry = never.get(name)
            if entry is not None:
                return entry
            dot = name.find(".")
            name = name[dot + 1 :] if dot >= 0 else ""
    return None


def always_inspected(site: str, policy: Policy) -> bool:
    always = policy.always_inspect
    return bool(always) and (site in always or EVERY_SITE in always)


def site_inspection(host: str, identity: Identity, policy: Policy, now: datetime,
                    ledger: QuotaLedger | None = None, mode: str = NEEDED) -> Inspection:
    """What a connection to `host` gets, as the policy sees it: with an ordinary ClientHello and
    a server of its own (what the status page tells each user)."""
    return inspection(Hello((host,)), identity, policy, now, ledger, mode=mode, server=ITS_OWN)


def _normal(raw: str) -> str:
    if raw.isascii() and raw.islower() and ":" not in raw:
        return drop_root(raw)
    try:
        return normalize_host(raw).name
    except InvalidHost:
        return ""  # no host name: the decision blocks it


class _Words:
    """The policy's never_inspect domains, and site domains by parent (for wildcard certificates)."""

    __slots__ = ("never", "_children")

    def __init__(self, policy: Policy) -> None:
        self.never: dict[str, str] = {}
        for entry in policy.never_inspect:
            domains = policy.categories.get(entry[9:], ()) if entry.startswith("category:") else (entry,)
            for domain in domains:
                self.never.setdefault(domain, entry)
        self._children: dict[str, tuple[str, ...]] | None = None

    def children(self, policy: Policy) -> dict[str, tuple[str, ...]]:
        """Each parent domain -> the site domains one label below it (built at the first wildcard)."""
        if self._children is None:
            found: dict[str, list[str]] = {}
            for domain in policy.domain_index:
                dot = domain.find(".")
                if dot > 0:
                    found.setdefault(domain[dot + 1 :], []).append(domain)
            self._children = {parent: tuple(domains) for parent, domains in found.items()}
        return self._children


def _words(policy: Policy) -> _Words:
    return kept_on(policy, "_inspection", _Words)
