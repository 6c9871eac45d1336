"""The `accessgate_auth` option: which sign-in methods, in which order.

    parse_auth_option("negotiate,ldap,htpasswd:/etc/accessgate/htpasswd")
    # -> (MethodSpec("negotiate"), MethodSpec("ldap"), MethodSpec("htpasswd", "/etc/accessgate/htpasswd"))

Items are separated by commas: `negotiate` or `negotiate:KEYTAB`, `ldap`
(the server is the policy's `directory.ldap`), `htpasswd:PATH`.  An empty
value means no sign-in (everyone is anonymous or matched by network).
Anything else is a ValueError whose message says what to write; the proxy
adapter turns it into mitmproxy's OptionsError.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

KINDS = ("negotiate", "ldap", "htpasswd")
_EXAMPLE = "e.g. 'negotiate,ldap' or 'htpasswd:/etc/accessgate/htpasswd'"


class MethodSpec(NamedTuple):
    kind: str            # one of KINDS
    argument: str = ""   # htpasswd: the file; negotiate: a keytab ('' = KRB5_KTNAME or the default)


def parse_auth_option(value: str) -> tuple[MethodSpec, ...]:
    text = value.strip()
    if not text:
        return ()
    specs: list[MethodSpec] = []
    for number, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        if not item:
            raise ValueError(f"accessgate_auth {value!r}: item {number} is empty; "
                             f"separate methods by single commas, {_EXAMPLE}")
        kind, colon, argument = item.partition(":")
        kind = kind.strip().lower()
        argument = argument.strip()
        if kind not in KINDS:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; use {', '.join(KINDS)}"
            raise ValueError(f"accessgate_auth: unknown sign-in method {item!r}{hint} ({_EXAMPLE})")
        if kind == "htpasswd" and not argument:
            raise ValueError("accessgate_auth: 'htpasswd' needs the file, as 'htpasswd:/etc/accessgate/htpasswd'")
        if kind == "ldap" and colon:
            raise ValueError("accessgate_auth: 'ldap' takes no argument; the server and search settings "
                             "are the policy's directory.ldap")
        if kind == "negotiate" and colon and not argument:
            raise ValueError("accessgate_auth: 'negotiate:' needs a keytab after the colon, "
                             "or write plain 'negotiate' to use KRB5_KTNAME")
        if any(s.kind == kind for s in specs):
            raise ValueError(f"accessgate_auth: '{kind}' is named twice; name each method once")
        specs.append(MethodSpec(kind, argument))
    return tuple(specs)
