"""Who is asking: sign-in methods, and the groups a directory gives a user.

The proxy adapter (and the CLI) use this package; it imports nothing from
mitmproxy.  In short:

    specs = parse_auth_option("negotiate,ldap,htpasswd:/etc/accessgate/htpasswd")  # ValueError
    directory = Directory(LdapSettings.from_policy(policy.ldap, base_dir))         # if policy.ldap
    auth = Authenticator(build_methods(specs, directory=directory))
    result = await auth.check_async(proxy_authorization_header, client_address)
    result.ok, result.user, result.reply      # else 407 with auth.challenges
    groups = GroupResolver(directory.groups_of, ttl=..., stale=..., on_outage=...)
    (await groups.groups_async(result.user)).groups   # -> engine.Identity(groups=...)
    auth.samples() + groups.samples()                # for the metrics adapter

Details: `authenticator.py` (cache, limits, pool), `htpasswd.py`,
`directory.py` (LDAP), `negotiate.py` (Kerberos), `groups.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from accessgate.auth.authenticator import (
    ACCEPTED,
    ANONYMOUS,
    BUSY,
    LIMITED,
    MALFORMED,
    UNSUPPORTED,
    Authenticator,
    Checking,
    SignIn,
)
from accessgate.auth.base import Method, Verdict
from accessgate.auth.counters import Counters, Sample
from accessgate.auth.credentials import Basic, Malformed, Negotiate, parse
from accessgate.auth.directory import (
    Directory,
    DirectoryUnavailable,
    LdapMethod,
    LdapSettings,
    escape_filter_value,
)
from accessgate.auth.groups import DirectoryGroups, GroupResolver, GroupSource, sources_of
from accessgate.auth.htpasswd import HtpasswdMethod
from accessgate.auth.limits import FailureLimiter
from accessgate.auth.options import MethodSpec, parse_auth_option

__all__ = [
    "ACCEPTED", "ANONYMOUS", "BUSY", "LIMITED", "MALFORMED", "UNSUPPORTED",
    "Authenticator", "Basic", "Checking", "Counters", "Directory", "DirectoryGroups", "DirectoryUnavailable",
    "FailureLimiter", "GroupResolver", "GroupSource", "HtpasswdMethod", "LdapMethod", "LdapSettings",
    "Malformed", "Method", "MethodSpec", "Negotiate", "Sample", "SignIn", "Verdict",
    "build_methods", "escape_filter_value", "parse", "parse_auth_option", "sources_of",
]


def build_methods(specs: Sequence[MethodSpec], *, directory: Directory | None = None,
                  realm: str = "accessgate", negotiate_realms: Sequence[str] = (),
                  strip_realm: bool = True) -> list[Method]:
    """The methods `parse_auth_option` named, in order; ValueError says what is missing."""
    methods: list[Method] = []
    for spec in specs:
        if spec.kind == "htpasswd":
            methods.append(HtpasswdMethod(spec.argument, realm=realm))
        elif spec.kind == "ldap":
            if directory is None:
                raise ValueError("accessgate_auth names 'ldap', but the policy has no directory.ldap; "
                                 "add directory.ldap (url, base_dn, bind_dn, bind_password_file) to the policy")
            methods.append(LdapMethod(directory, realm=realm))
        elif spec.kind == "negotiate":
            from accessgate.auth.negotiate import NegotiateMethod

            methods.append(NegotiateMethod(spec.argument or None, realms=negotiate_realms,
                                           strip_realm=strip_realm))
        else:  # parse_auth_option admits no other kind
            raise ValueError(f"unknown sign-in method {spec.kind!r}")
    return methods
