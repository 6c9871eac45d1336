"""Who is asking: turn what mitmproxy knows about a client into `engine.Identity`.

The user is the one accessgate's sign-in (`signin.py`) put into
`flow.metadata[SIGNED_IN]`, with the directory's groups; else the one
mitmproxy's own `proxyauth` addon authenticated: it puts `(user, password)`
into `flow.metadata["proxyauth"]`, and for requests inside a CONNECT tunnel
it copies the CONNECT's credentials there.  Either way a second
Proxy-Authorization sent inside a tunnel never changes who the user is.
Groups from the policy's local directory are the engine's business; this
module supplies the name, the directory's groups and the client's address.

The name is case-folded here, once (`model.fold_user`): a directory that
signs in `ALICE` with alice's password means alice, and roles, quotas and
the audit record must all say so.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any, NamedTuple

from accessgate.decision import Identity
from accessgate.policy.model import IPAddress, fold_user


SIGNED_IN = "accessgate_signin"  # flow.metadata key: a SignedIn
_NO_GROUPS: frozenset[str] = frozenset()


class SignedIn(NamedTuple):
    """Who accessgate's sign-in decided a flow is for."""

    user: str               # canonical and case-folded
    method: str             # 'negotiate', 'ldap', 'htpasswd' or 'proxyauth'
    groups: frozenset[str]  # the directory's (empty without directory.ldap)


def client_ip(peername: Any) -> IPAddress | None:
    """The client's address from a socket peername; IPv4-mapped IPv6 is IPv4.

    A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; policies
    write `net:10.0.0.0/8`, so the mapped form must not hide the address.
    """
    if not peername:
        return None
    host = peername[0] if isinstance(peername, (tuple, list)) else peername
    return _address(str(host))


@lru_cache(maxsize=4096)
def _address(host: str) -> IPAddress | None:
    # One object per address rather than per connection: parsing is slow,
    # and the proxy remembers what it derives from an address object.
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def user_from_proxyauth(value: Any) -> str | None:
    """The user name from mitmproxy's `proxyauth` metadata, case-folded; never the password."""
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], str) and value[0]:
        return fold_user(value[0])
    return None


def identity_of(proxyauth: Any, peername: Any) -> Identity:
    return Identity(user=user_from_proxyauth(proxyauth), client_ip=client_ip(peername))


def identity_for_flow(flow) -> Identity:
    """The identity behind an HTTP flow (a request, or a CONNECT)."""
    return identity_of(flow.metadata.get("proxyauth"), flow.client_conn.peername)


def identity_for_connection(client, authenticated: Any = None, signed: SignedIn | None = None) -> Identity:
    """The identity behind a client connection, outside any HTTP flow.

    `signed` is who accessgate's sign-in signed in on it; `authenticated` is
    the proxyauth addon's map of connections that authenticated with a
    CONNECT.  Without either everyone is anonymous.
    """
    if signed is not None:
        return Identity(user=signed.user, groups=signed.groups, client_ip=client_ip(client.peername))
    creds = authenticated.get(client) if authenticated is not None else None
    return identity_of(creds, client.peername)


_USERS_PER_CONNECTION = 16  # identities kept per client connection


class IdentityCache:
    """`identity_for_flow(flow)`, kept per client connection and user until the connection ends.

    A connection usually carries one user (proxyauth copies a CONNECT's
    credentials into the tunnel), but a parent proxy or a test client may
    send several users' requests over one; each keeps its identity.  The
    client's address is parsed once per connection.  Plain dicts by
    connection id: a WeakKeyDictionary builds a weak reference per lookup.
    """

    def __init__(self) -> None:
        self.by_connection: dict[str, dict[str | None, Identity]] = {}  # connection -> user -> identity

    def of_flow(self, flow) -> Identity:
        client = flow.client_conn
        metadata = flow.metadata
        signed = metadata.get(SIGNED_IN) if metadata else None
        if signed is not None:
            user, groups = signed.user, signed.groups
        else:
            user, groups = user_from_proxyauth(metadata.get("proxyauth")), _NO_GROUPS
        users = self.by_connection.get(client.id)
        if users is None:
            users = self.by_connection[client.id] = {}
        identity = users.get(user)
        # The resolver hands out the same frozenset until a user's groups change.
        if identity is None or (identity.groups is not groups and identity.groups != groups):
            if users:
                ip = next(iter(users.values())).client_ip
                if len(users) >= _USERS_PER_CONNECTION:
                    users.clear()
            else:
                ip = client_ip(client.peername)
            identity = users[user] = Identity(user=user, groups=groups, client_ip=ip)
        return identity

    def forget(self, client_id: str) -> None:
        """The connection ended."""
        self.by_connection.pop(client_id, None)
