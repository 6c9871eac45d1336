"""LDAP's own syntax as accessgate needs it: filter values escaped, DNs compared, attributes read.

    escape_filter_value("alice)(uid=*")   # 'alice\\29\\28uid=\\2a'
    normalize_dn("CN=PR, OU=Groups,DC=corp")   # 'cn=pr,ou=groups,dc=corp'

Every value put into a search filter goes through `escape_filter_value`
(RFC 4515, byte by byte): only ASCII letters, digits and `-._@` stay as
they are, so no user name can add a wildcard, close a parenthesis or
smuggle a NUL.
"""

from __future__ import annotations

from collections.abc import Mapping

from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

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



def values_of(attributes: Mapping[str, object], name: str) -> list[str]:
    for key, value in attributes.items():
        if key.lower() == name.lower():
            if isinstance(value, (list, tuple)):
                return [str(v) for v in value]
            return [str(value)] if value not in (None, "") else []
    return []


def first_value(entry: dict, name: str) -> str | None:
    values = values_of(entry.get("attributes", {}), name)
    return values[0] if values else None


