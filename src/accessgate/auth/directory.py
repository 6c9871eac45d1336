"""The LDAP directory: find a user, check a password by binding, resolve groups.

    settings = LdapSettings.from_policy(policy.ldap, base_dir=policy_dir)
    directory = Directory(settings)
    directory.authenticate("ALICE", b"secret")   # Verdict(ok, user="alice"): the entry's own name
    directory.groups_of("alice")                 # frozenset({"pr", "marcom"}) as policy group names

Usable from the proxy (through `LdapMethod` and `GroupResolver`) and from
the CLI alike; nothing here imports mitmproxy.

Every value put into a search filter is escaped byte by byte (RFC 4515):
only ASCII letters, digits and `-._@` stay as they are, so no user name can
add a wildcard, close a parenthesis or smuggle a NUL.  A user is found only
if exactly one entry matches; the password is then checked by binding as
that entry's DN, and an empty password is refused before any bind (LDAP
reads a simple bind without a password as anonymous).  The user accessgate
decides for is the value of `user_attribute` as the directory stores it.

Groups: Active Directory's in-chain matching rule (nested groups in one
search), a bounded breadth-first walk of `member` links (OpenLDAP
groupOfNames, nested), or the user's `memberOf` (and the groups' own,
bounded).  A directory group becomes a policy group through `group_map`
(by DN or by CN), or without a map by its CN when that is a valid policy
name.

Connections: one per operation, with timeouts; LDAPS (`ldaps://` URLs) or
StartTLS (`start_tls: true`), both verifying the server's certificate and
host name against `ca_file` (or the system's CAs).
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

from accessgate.auth.base import OK, REFUSED, UNAVAILABLE, UNKNOWN_USER, Verdict
from accessgate.auth.credentials import Basic, Negotiate

IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN (Active Directory)
GROUP_SEARCHES = ("in_chain", "walk", "member_of")
OUTAGE_RULES = ("closed", "last")
KINDS = {
    # Defaults per kind of directory; every one can be set on its own.
    "ad": {"user_attribute": "sAMAccountName",
           "user_filter": "(&(objectCategory=person)(objectClass=user))",
           "group_search": "in_chain", "group_filter": "(objectClass=group)", "group_attribute": "member"},
    "openldap": {"user_attribute": "uid", "user_filter": "(objectClass=*)",
                 "group_search": "walk", "group_filter": "(objectClass=groupOfNames)", "group_attribute": "member"},
}
# The keys accessgate reads from directory.ldap (the loader's LDAP_KEYS grows to these).
LDAP_SETTINGS_KEYS = ("url", "bind_dn", "bind_password_file", "base_dn", "group_base_dn", "kind",
                      "user_attribute", "user_filter", "group_search", "group_filter", "group_attribute",
                      "group_map", "max_depth", "start_tls", "ca_file", "timeout_seconds",
                      "cache_seconds", "stale_seconds", "on_outage", "first_lookup_seconds")

_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z|[0-9]+(\.[0-9]+)+\Z")
_POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # as the loader's _NAME
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._@")


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of every byte but ASCII letters, digits and -._@ (as \\xx)."""
    return "".join(chr(b) if b in _SAFE else f"\\{b:02x}" for b in value.encode("utf-8"))


def normalize_dn(dn: str) -> str:
    """A DN for comparing: attribute names and values lower-cased, no spaces around separators."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPException:
        return dn.strip().lower()
    return ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _ in parts)


def first_cn(dn: str) -> str | None:
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPException:
        return None
    if parts and parts[0][0].lower() == "cn":
        return parts[0][1]
    return None


class DirectoryUnavailable(Exception):
    """The directory could not be asked (down, timeout, TLS failure); the message is safe to log."""


@dataclass(frozen=True, slots=True)
class UserEntry:
    dn: str
    name: str  # the user_attribute's value as the directory stores it


@dataclass(frozen=True, slots=True)
class GroupEntry:
    dn: str
    cn: str | None


@dataclass(frozen=True)
class LdapSettings:
    url: str
    base_dn: str
    bind_dn: str = ""
    bind_password: str = field(default="", repr=False)
    group_base_dn: str = ""
    user_attribute: str = "uid"
    user_filter: str = "(objectClass=*)"
    group_search: str = "walk"
    group_filter: str = "(objectClass=groupOfNames)"
    group_attribute: str = "member"
    group_map: Mapping[str, str] = field(default_factory=dict)
    max_depth: int = 8
    max_groups: int = 1000
    start_tls: bool = False
    ca_file: str | None = None
    timeout: float = 5.0
    cache_seconds: float = 300.0
    stale_seconds: float = 3600.0
    on_outage: str = "closed"
    first_lookup_seconds: float = 2.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"directory.ldap url {self.url!r} is not an LDAP URL; "
                             "write it like ldaps://dc1.corp.example:636 or ldap://ldap.example:389")
        if parts.scheme == "ldaps" and self.start_tls:
            raise ValueError("directory.ldap: start_tls is for ldap:// URLs; an ldaps:// URL is TLS already")
        for key in ("user_attribute", "group_attribute"):
            if not _ATTRIBUTE.match(getattr(self, key)):
                raise ValueError(f"directory.ldap {key} {getattr(self, key)!r} is not an attribute name")
        for key in ("user_filter", "group_filter"):
            value = getattr(self, key)
            if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
                raise ValueError(f"directory.ldap {key} {value!r} is not a filter; write it in parentheses, "
                                 "like (objectClass=groupOfNames)")
        if self.group_search not in GROUP_SEARCHES:
            raise ValueError(f"directory.ldap group_search {self.group_search!r}: use one of "
                             f"{', '.join(GROUP_SEARCHES)}")
        if self.on_outage not in OUTAGE_RULES:
            raise ValueError(f"directory.ldap on_outage {self.on_outage!r}: use 'closed' (no directory groups "
                             "once stale_seconds have passed) or 'last' (keep the last groups)")
        for key in ("timeout", "cache_seconds", "stale_seconds", "first_lookup_seconds"):
            if getattr(self, key) < 0:
                raise ValueError(f"directory.ldap {key} must be 0 or more")
        if not 1 <= self.max_depth <= 64:
            raise ValueError("directory.ldap max_depth must be between 1 and 64")
        for target in self.group_map.values():
            if not _POLICY_NAME.match(target):
                raise ValueError(f"directory.ldap group_map maps to {target!r}, which is not a policy group name "
                                 "(letters, digits, '-', '_' and '.')")
        object.__setattr__(self, "group_map", MappingProxyType(dict(self.group_map)))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (636 if parts.scheme == "ldaps" else 389)

    @property
    def ldaps(self) -> bool:
        return urlsplit(self.url).scheme == "ldaps"

    @classmethod
    def from_policy(cls, values: Mapping[str, object], base_dir: str | os.PathLike[str] | None = None) -> LdapSettings:
        """Settings from the policy's directory.ldap mapping; ValueError says what to fix."""
        unknown = sorted(set(values) - set(LDAP_SETTINGS_KEYS))
        if unknown:
            raise ValueError(f"directory.ldap: unknown key {unknown[0]!r}; the keys are {', '.join(LDAP_SETTINGS_KEYS)}")
        for required in ("url", "base_dn"):
            if not values.get(required):
                raise ValueError(f"directory.ldap needs '{required}'")
        kind = str(values.get("kind", "openldap"))
        if kind not in KINDS:
            raise ValueError(f"directory.ldap kind {kind!r}: use 'ad' (Active Directory) or 'openldap'")
        merged: dict[str, object] = dict(KINDS[kind])
        merged.update({k: v for k, v in values.items() if k != "kind"})
        password = ""
        password_file = merged.pop("bind_password_file", None)
        if password_file:
            path = Path(str(password_file))
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            try:
                password = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"directory.ldap bind_password_file {str(path)!r} cannot be read "
                                 f"({exc.strerror}); make it readable by the proxy's user only") from None
        if merged.get("bind_dn") and not password:
            raise ValueError("directory.ldap has a bind_dn but no password; set bind_password_file")
        renames = {"timeout_seconds": "timeout"}
        kwargs: dict[str, object] = {renames.get(k, k): v for k, v in merged.items()}
        for key in ("timeout", "cache_seconds", "stale_seconds", "first_lookup_seconds"):
            if key in kwargs:
                kwargs[key] = _number(kwargs[key], key)
        if "max_depth" in kwargs:
            kwargs["max_depth"] = int(_number(kwargs["max_depth"], "max_depth"))
        if "start_tls" in kwargs:
            kwargs["start_tls"] = _flag(kwargs["start_tls"], "start_tls")
        if "group_map" in kwargs and not isinstance(kwargs["group_map"], Mapping):
            raise ValueError("directory.ldap group_map must be a mapping of directory group (CN or DN) "
                             "to policy group name")
        if "ca_file" in kwargs and kwargs["ca_file"] and base_dir is not None:
            ca = Path(str(kwargs["ca_file"]))
            kwargs["ca_file"] = str(ca if ca.is_absolute() else Path(base_dir) / ca)
        return cls(bind_password=password, **{k: (str(v) if isinstance(v, (str, Path)) else v)
                                                for k, v in kwargs.items()})


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"directory.ldap {key} must be a number of seconds")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"directory.ldap {key} must be a number, not {value!r}") from None


def _flag(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "on", "1"):
        return True
    if str(value).lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"directory.ldap {key} must be true or false")


class _VerifiedTls(ldap3.Tls):
    """ldap3's TLS with the standard library's checks: chain, host name (or IP), TLS 1.2+."""

    def __init__(self, ca_file: str | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)
        self._ca = ca_file

    def wrap_socket(self, connection, do_handshake=False):
        context = ssl.create_default_context(cafile=self._ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        connection.socket = context.wrap_socket(connection.socket, server_side=False,
                                                do_handshake_on_connect=do_handshake,
                                                server_hostname=connection.server.host)


class Directory:
    """An LDAP directory as accessgate asks it; every call opens and closes its own connection."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        s = settings
        self._tls = _VerifiedTls(s.ca_file) if (s.ldaps or s.start_tls) else None
        self._group_map = {(normalize_dn(k) if "=" in k else k.casefold()): v for k, v in s.group_map.items()}

    def __repr__(self) -> str:
        return f"Directory({self.settings.url!r}, base_dn={self.settings.base_dn!r})"

    # ---- connections ------------------------------------------------------------------

    def _connect(self, user: str | None, password: bytes | str | None) -> ldap3.Connection:
        s = self.settings
        # A new Server each time: ldap3's Server remembers a failed address for
        # 5 s and a DNS answer for 300 s, which would outlast a restart.
        server = ldap3.Server(s.host, port=s.port, use_ssl=s.ldaps, tls=self._tls, get_info=ldap3.NONE,
                              connect_timeout=s.timeout)
        conn = ldap3.Connection(server, user=user or None, password=password or None,
                                authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
                                # ldap3 packs this into SO_RCVTIMEO as whole seconds.
                                receive_timeout=max(1, math.ceil(s.timeout)), auto_referrals=False, read_only=True,
                                raise_exceptions=False, return_empty_attributes=True)
        try:
            conn.open()
            if s.start_tls and not conn.start_tls():
                raise DirectoryUnavailable(f"StartTLS with {s.host}:{s.port} failed: {conn.result.get('description')}")
        except DirectoryUnavailable:
            _close(conn)
            raise
        except (LDAPException, OSError, ssl.SSLError) as exc:
            _close(conn)
            raise DirectoryUnavailable(f"cannot reach {s.host}:{s.port}: {type(exc).__name__}: {_safe(exc)}") from None
        return conn

    def _service(self) -> ldap3.Connection:
        """A connection bound as the service account (or anonymous without a bind_dn)."""
        s = self.settings
        conn = self._connect(s.bind_dn, s.bind_password)
        try:
            ok = conn.bind()
        except (LDAPException, OSError, ssl.SSLError) as exc:
            _close(conn)
            raise DirectoryUnavailable(f"bind as the service account failed: {type(exc).__name__}: {_safe(exc)}") from None
        if not ok:
            description = conn.result.get("description") if conn.result else "no answer"
            _close(conn)
            raise DirectoryUnavailable(f"bind as {s.bind_dn or 'anonymous'} failed ({description}); "
                                       "check bind_dn and bind_password_file")
        return conn

    def _search(self, conn: ldap3.Connection, base: str, search_filter: str, attributes: list[str],
                size_limit: int = 0, scope=ldap3.SUBTREE) -> list[dict]:
        try:
            conn.search(base, search_filter, search_scope=scope, attributes=attributes,
                        size_limit=size_limit, time_limit=max(1, int(self.settings.timeout)))
        except (LDAPException, OSError, ssl.SSLError) as exc:
            raise DirectoryUnavailable(f"search failed: {type(exc).__name__}: {_safe(exc)}") from None
        result = conn.result or {}
        code = result.get("result", 0)
        # 0 success, 4 size limit exceeded (we asked for 2 to see a duplicate), 32 no such object.
        if code not in (0, 4, 32):
            raise DirectoryUnavailable(f"search failed: {result.get('description')}")
        return [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]

    # ---- users ----------------------------------------------------------------------------

    def _user_filter(self, name: str) -> str:
        s = self.settings
        return f"(&{s.user_filter}({s.user_attribute}={escape_filter_value(name)}))"

    def find_user(self, name: str, conn: ldap3.Connection | None = None) -> UserEntry | None:
        """The one entry named `name`, or None (no entry, or several: never guess between them)."""
        own = conn is None
        conn = conn or self._service()
        try:
            entries = self._search(conn, self.settings.base_dn, self._user_filter(name),
                                   [self.settings.user_attribute], size_limit=2)
        finally:
            if own:
                _close(conn)
        if len(entries) != 1:
            return None
        entry = entries[0]
        canonical = self._canonical(entry)
        if canonical is None:
            return None
        return UserEntry(entry["dn"], canonical)

    def _canonical(self, entry: dict) -> str | None:
        attr = self.settings.user_attribute
        values = _values(entry.get("attributes", {}), attr)
        if len(values) == 1:
            return values[0]
        if values:
            # Several values: the one in the entry's RDN is its name; aliases are not.
            try:
                rdn_attr, rdn_value, _ = parse_dn(entry["dn"], escape=False, strip=True)[0]
            except (LDAPException, IndexError):
                return None
            if rdn_attr.lower() == attr.lower():
                for value in values:
                    if value.lower() == rdn_value.lower():
                        return value
        return None

    def authenticate(self, name: str, password: bytes) -> Verdict:
        """Find `name`, then bind as that entry with `password`."""
        if not password:
            return Verdict(REFUSED, reason="empty-password")
        try:
            user = self.find_user(name)
        except DirectoryUnavailable:
            return Verdict(UNAVAILABLE, reason="directory-unavailable")
        if user is None:
            return Verdict(UNKNOWN_USER, reason="unknown-user")
        try:
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            # LDAP passwords are UTF-8 (RFC 4513); these bytes match none.
            return Verdict(REFUSED, reason="bad-password")
        try:
            conn = self._connect(user.dn, secret)
        except DirectoryUnavailable:
            return Verdict(UNAVAILABLE, reason="directory-unavailable")
        try:
            ok = conn.bind()
            code = (conn.result or {}).get("result")
        except (LDAPException, OSError, ssl.SSLError):
            return Verdict(UNAVAILABLE, reason="directory-unavailable")
        finally:
            _close(conn)
        if ok:
            return Verdict(OK, user=user.name)
        if code == 49:  # invalidCredentials (also a locked or expired account in AD)
            return Verdict(REFUSED, reason="bad-password")
        if code in (50, 53):  # insufficientAccessRights, unwillingToPerform (disabled accounts)
            return Verdict(REFUSED, reason="refused-by-directory")
        return Verdict(UNAVAILABLE, reason="directory-unavailable")

    # ---- groups ------------------------------------------------------------------------------

    def groups_of(self, name: str) -> frozenset[str] | None:
        """The policy groups of user `name`; None if the directory has no such (single) user."""
        conn = self._service()
        try:
            user = self.find_user(name, conn)
            if user is None:
                return None
            return self.policy_groups(self.directory_groups(user.dn, conn))
        finally:
            _close(conn)

    def directory_groups(self, user_dn: str, conn: ldap3.Connection) -> list[GroupEntry]:
        mode = self.settings.group_search
        if mode == "in_chain":
            return self._in_chain(user_dn, conn)
        if mode == "member_of":
            return self._member_of(user_dn, conn)
        return self._walk(user_dn, conn)

    def _group_base(self) -> str:
        return self.settings.group_base_dn or self.settings.base_dn

    def in_chain_filter(self, user_dn: str) -> str:
        """Active Directory: every group `user_dn` is in, nested or not, in one search."""
        s = self.settings
        return f"(&{s.group_filter}({s.group_attribute}:{IN_CHAIN}:={escape_filter_value(user_dn)}))"

    def _in_chain(self, user_dn: str, conn: ldap3.Connection) -> list[GroupEntry]:
        s = self.settings
        entries = self._search(conn, self._group_base(), self.in_chain_filter(user_dn), ["cn"],
                               size_limit=s.max_groups)
        return [GroupEntry(e["dn"], _first(e, "cn")) for e in entries]

    def _walk(self, user_dn: str, conn: ldap3.Connection) -> list[GroupEntry]:
        """Breadth first up the member links: depth and count bounded, cycles harmless."""
        s = self.settings
        seen: dict[str, GroupEntry] = {}
        frontier = [user_dn]
        for _ in range(s.max_depth):
            found: list[GroupEntry] = []
            for start in range(0, len(frontier), 50):
                batch = frontier[start:start + 50]
                alternatives = "".join(f"({s.group_attribute}={escape_filter_value(dn)})" for dn in batch)
                search_filter = f"(&{s.group_filter}(|{alternatives}))"
                for e in self._search(conn, self._group_base(), search_filter, ["cn"], size_limit=s.max_groups):
                    key = normalize_dn(e["dn"])
                    if key not in seen:
                        seen[key] = GroupEntry(e["dn"], _first(e, "cn"))
                        found.append(seen[key])
                        if len(seen) >= s.max_groups:
                            return list(seen.values())
            if not found:
                break
            frontier = [g.dn for g in found]
        return list(seen.values())

    def _member_of(self, user_dn: str, conn: ldap3.Connection) -> list[GroupEntry]:
        s = self.settings
        seen: dict[str, GroupEntry] = {}
        frontier = [user_dn]
        for depth in range(s.max_depth + 1):
            parents: list[str] = []
            for dn in frontier:
                entries = self._search(conn, dn, "(objectClass=*)", ["memberOf"], scope=ldap3.BASE)
                for e in entries:
                    parents.extend(_values(e.get("attributes", {}), "memberOf"))
            found = []
            for dn in parents:
                key = normalize_dn(dn)
                if key not in seen:
                    seen[key] = GroupEntry(dn, first_cn(dn))
                    found.append(dn)
                    if len(seen) >= s.max_groups:
                        return list(seen.values())
            if not found or depth == s.max_depth:
                break
            frontier = found
        return list(seen.values())

    def policy_groups(self, groups: list[GroupEntry]) -> frozenset[str]:
        """Directory groups as policy group names: through group_map, else by a valid CN."""
        names: set[str] = set()
        for group in groups:
            if self._group_map:
                mapped = self._group_map.get(normalize_dn(group.dn))
                if mapped is None and group.cn is not None:
                    mapped = self._group_map.get(group.cn.casefold())
                if mapped is not None:
                    names.add(mapped)
            elif group.cn is not None and _POLICY_NAME.match(group.cn):
                names.add(group.cn)
        return frozenset(names)


class LdapMethod:
    """`ldap`: Basic credentials checked by binding as the user's directory entry."""

    name = "ldap"
    scheme: ClassVar[str] = "basic"
    generation = 0

    def __init__(self, directory: Directory, realm: str = "accessgate") -> None:
        self.directory = directory
        self.realm = realm

    def __repr__(self) -> str:
        return f"LdapMethod({self.directory!r})"

    def challenge(self) -> str:
        return f'Basic realm="{self.realm}", charset="UTF-8"'

    def check(self, credentials: Basic | Negotiate) -> Verdict:
        if not isinstance(credentials, Basic):
            return Verdict(UNKNOWN_USER, reason="not-basic")
        return self.directory.authenticate(credentials.user, credentials.password)

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass


def _values(attributes: Mapping[str, object], name: str) -> list[str]:
    for key, value in attributes.items():
        if key.lower() == name.lower():
            if isinstance(value, (list, tuple)):
                return [str(v) for v in value]
            return [str(value)] if value not in (None, "") else []
    return []


def _first(entry: dict, name: str) -> str | None:
    values = _values(entry.get("attributes", {}), name)
    return values[0] if values else None


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # closing a broken connection must not hide the first error
        pass


def _safe(exc: BaseException) -> str:
    # ldap3's messages name servers and result codes, never a password; keep them short anyway.
    return str(exc)[:200]
