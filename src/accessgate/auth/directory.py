"""The LDAP directory as accessgate asks it: find a user, check a password by binding, groups.

    settings = LdapSettings.from_policy(policy.ldap, base_dir=policy_dir)
    directory = Directory(settings)
    directory.authenticate("ALICE", b"secret")   # Verdict(ok, user="alice"): the entry's own name
    directory.groups_of("alice")                 # frozenset({"pr", "marcom"}) as policy group names

Usable from the proxy (through `LdapMethod` and `GroupResolver`) and from
the CLI alike; nothing here imports mitmproxy.  The settings are
`ldapsettings.py`, the group schemes `groupschemes.py`, filter escaping and
DNs `ldapsyntax.py`.

A user is found with every typed byte escaped, and only if exactly one
entry matches; the password is then checked by binding as that entry's DN,
and an empty password is refused before any bind (LDAP reads a simple bind
without a password as anonymous).  The user accessgate decides for is the
value of `user_attribute` as the directory stores it.

Connections: one per operation, with timeouts; LDAPS (`ldaps://` URLs) or
StartTLS (`start_tls: true`), both verifying the server's certificate and
host name against `ca_file` (or the system's CAs).
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass
from typing import ClassVar

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

from accessgate.auth.base import OK, REFUSED, UNAVAILABLE, UNKNOWN_USER, Verdict
from accessgate.auth.credentials import Basic, Negotiate
from accessgate.auth.groupschemes import BASE, IN_CHAIN, GroupEntry, GroupSchemes  # noqa: F401 - IN_CHAIN re-exported
from accessgate.auth.ldapsettings import (  # noqa: F401 - re-exported: the settings' home was this module
    GROUP_SEARCHES,
    KINDS,
    LDAP_SETTINGS_KEYS,
    OUTAGE_RULES,
    LdapSettings,
)
from accessgate.auth.ldapsyntax import escape_filter_value, first_cn, normalize_dn, values_of  # noqa: F401


class DirectoryUnavailable(Exception):
    """The directory could not be asked (down, timeout, TLS failure); the message is safe to log."""


@dataclass(frozen=True, slots=True)
class UserEntry:
    dn: str
    name: str  # the user_attribute's value as the directory stores it


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
        self.schemes = GroupSchemes(s)

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
        values = values_of(entry.get("attributes", {}), attr)
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
        def search(base: str, search_filter: str, attributes: list[str], size_limit: int, scope: str) -> list[dict]:
            return self._search(conn, base, search_filter, attributes, size_limit,
                                ldap3.BASE if scope == BASE else ldap3.SUBTREE)

        return self.schemes.groups_of_dn(user_dn, search)

    def in_chain_filter(self, user_dn: str) -> str:
        return self.schemes.in_chain_filter(user_dn)

    def policy_groups(self, groups: list[GroupEntry]) -> frozenset[str]:
        return self.schemes.policy_groups(groups)


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


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # closing a broken connection must not hide the first error
        pass


def _safe(exc: BaseException) -> str:
    # ldap3's messages name servers and result codes, never a password; keep them short anyway.
    return str(exc)[:200]
