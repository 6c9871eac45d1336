"""The settings of `directory.ldap`: what accessgate reads from the policy, with per-kind defaults.

    settings = LdapSettings.from_policy(policy.ldap, base_dir=policy_dir)   # ValueError says what to fix

`kind: ad` and `kind: openldap` fill in the attribute names, filters and
group scheme of each; every key can be set on its own.  The loader
(`policy/validate.py`) checks the same keys' types when a policy is read;
this module reads the bind password file and checks the rest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

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
# The keys accessgate reads from directory.ldap; the loader's LDAP_KEYS are the same (tests/auth checks).
LDAP_SETTINGS_KEYS = ("url", "bind_dn", "bind_password_file", "base_dn", "group_base_dn", "kind",
                      "user_attribute", "user_filter", "group_search", "group_filter", "group_attribute",
                      "group_map", "max_depth", "start_tls", "ca_file", "timeout_seconds",
                      "cache_seconds", "stale_seconds", "on_outage", "first_lookup_seconds")

_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z|[0-9]+(\.[0-9]+)+\Z")
POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # as the loader's _NAME


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
            if not POLICY_NAME.match(target):
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


