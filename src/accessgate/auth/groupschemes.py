"""A user's groups by the directory's scheme, and their names in the policy.

    schemes = GroupSchemes(settings)
    found = schemes.groups_of_dn("uid=alice,ou=people,dc=example,dc=org", search)   # [GroupEntry(dn, cn), ...]
    # search(base, filter, attributes, size_limit, scope): one LDAP search on the caller's connection
    schemes.policy_groups(found)                  # frozenset({"pr", "marcom"})

Three schemes (`group_search`):

- `in_chain`: Active Directory's LDAP_MATCHING_RULE_IN_CHAIN, every group
  the user is in, nested or not, in one search;
- `walk`: breadth first up the `member` links (OpenLDAP groupOfNames,
  nested), depth and count bounded, cycles harmless;
- `member_of`: the user's `memberOf`, then the groups' own, bounded.

A directory group becomes a policy group through `group_map` (by DN or by
CN), or without a map by its CN when that is a valid policy name.  Every
DN put into a filter is escaped (`ldapsyntax.escape_filter_value`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from accessgate.auth.ldapsettings import POLICY_NAME, LdapSettings
from accessgate.auth.ldapsyntax import escape_filter_value, first_cn, first_value, normalize_dn, values_of

IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN (Active Directory)
BASE = "BASE"
SUBTREE = "SUBTREE"
_BATCH = 50  # member DNs per walk search

# search(base, filter, attributes, size_limit, scope) -> entries (ldap3's response dicts)
Search = Callable[[str, str, list[str], int, str], list[dict]]


@dataclass(frozen=True, slots=True)
class GroupEntry:
    dn: str
    cn: str | None


class GroupSchemes:
    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self._group_map = {(normalize_dn(k) if "=" in k else k.casefold()): v
                           for k, v in settings.group_map.items()}

    def groups_of_dn(self, user_dn: str, search: Search) -> list[GroupEntry]:
        mode = self.settings.group_search
        if mode == "in_chain":
            return self._in_chain(user_dn, search)
        if mode == "member_of":
            return self._member_of(user_dn, search)
        return self._walk(user_dn, search)

    def _group_base(self) -> str:
        return self.settings.group_base_dn or self.settings.base_dn

    def in_chain_filter(self, user_dn: str) -> str:
        """Active Directory: every group `user_dn` is in, nested or not, in one search."""
        s = self.settings
        return f"(&{s.group_filter}({s.group_attribute}:{IN_CHAIN}:={escape_filter_value(user_dn)}))"

    def _in_chain(self, user_dn: str, search: Search) -> list[GroupEntry]:
        entries = search(self._group_base(), self.in_chain_filter(user_dn), ["cn"],
                               self.settings.max_groups, SUBTREE)
        return [GroupEntry(e["dn"], first_value(e, "cn")) for e in entries]

    def _walk(self, user_dn: str, search: Search) -> list[GroupEntry]:
        s = self.settings
        seen: dict[str, GroupEntry] = {}
        frontier = [user_dn]
        for _ in range(s.max_depth):
            found: list[GroupEntry] = []
            for start in range(0, len(frontier), _BATCH):
                batch = frontier[start:start + _BATCH]
                alternatives = "".join(f"({s.group_attribute}={escape_filter_value(dn)})" for dn in batch)
                search_filter = f"(&{s.group_filter}(|{alternatives}))"
                for e in search(self._group_base(), search_filter, ["cn"], s.max_groups, SUBTREE):
                    key = normalize_dn(e["dn"])
                    if key not in seen:
                        seen[key] = GroupEntry(e["dn"], first_value(e, "cn"))
                        found.append(seen[key])
                        if len(seen) >= s.max_groups:
                            return list(seen.values())
            if not found:
                break
            frontier = [g.dn for g in found]
        return list(seen.values())

    def _member_of(self, user_dn: str, search: Search) -> list[GroupEntry]:
        s = self.settings
        seen: dict[str, GroupEntry] = {}
        frontier = [user_dn]
        for depth in range(s.max_depth + 1):
            parents: list[str] = []
            for dn in frontier:
                for e in search(dn, "(objectClass=*)", ["memberOf"], 0, BASE):
                    parents.extend(values_of(e.get("attributes", {}), "memberOf"))
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
            elif group.cn is not None and POLICY_NAME.match(group.cn):
                names.add(group.cn)
        return frozenset(names)
