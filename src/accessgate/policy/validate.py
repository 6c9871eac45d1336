"""Checking a policy's sections and building the `model.Policy` from them.

`Validator.policy(sources)` checks every section of every file read
(version, timezone, sites, directory, roles with their grants,
unauthenticated, unlisted, and the `tests:` through `testcases`) and
returns the policy, or None when the checker counted a problem.  A name
defined twice, in one file or across files, is an error; a reference to an
unknown site, role or group gets a "did you mean".  See
docs/policy-errors.md for every message.
"""

from __future__ import annotations

import dataclasses

import ipaddress
import re
from types import MappingProxyType
from zoneinfo import ZoneInfo

import yaml

from accessgate.errors import InvalidHost
from accessgate.policy import model, suggest
from accessgate.policy.hosts import normalize_host
from accessgate.policy.inspection import InspectionWords
from accessgate.policy.limits import quoted
from accessgate.policy.nodes import INT, TOKEN, Checker, Entry, describe, int_of, text_of, where
from accessgate.policy.sources import MAIN_KEYS, Source, digest_of
from accessgate.policy.testcases import tests_of
from accessgate.policy.windows import parse_window

SITE_KEYS = ("domains", "networks", "read_only_allow", "name")
RULE_KEYS = ("method", "path", "operation")
OPERATION_KEYS = ("name", "named_in", "graphql")
SWITCHES = ("on", "off")  # read_only_operations: SITE: on|off
DIRECTORY_KEYS = ("groups", "ldap")
# directory.ldap: the keys accessgate.auth's LdapSettings reads (tests/auth checks they agree).
LDAP_KEYS = ("url", "bind_dn", "bind_password_file", "base_dn", "group_base_dn", "kind",
             "user_attribute", "user_filter", "group_search", "group_filter", "group_attribute",
             "group_map", "max_depth", "start_tls", "ca_file", "timeout_seconds",
             "cache_seconds", "stale_seconds", "on_outage", "first_lookup_seconds")
LDAP_CHOICES = {"kind": ("ad", "openldap"), "group_search": ("in_chain", "walk", "member_of"),
                "on_outage": ("closed", "last")}
# Whole numbers: (lowest, highest or None).
LDAP_NUMBERS = {"cache_seconds": (0, None), "stale_seconds": (0, None), "timeout_seconds": (1, 600),
                "first_lookup_seconds": (0, 60), "max_depth": (1, 64)}
_LDAP_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z|[0-9]+(\.[0-9]+)+\Z")
_BOOL = "tag:yaml.org,2002:bool"
ROLE_KEYS = ("members", "access")
GRANT_KEYS = ("level", "windows", "daily_minutes", "continue_minutes")
LEVELS = tuple(level.value for level in model.Level)
MEMBER_FORMS = "'user:NAME', 'group:NAME', 'net:CIDR' or 'all'"
# Reserved: metric label values for "no site"/"no role", and `deny`, which
# `unauthenticated: deny` would make ambiguous as a role name.
RESERVED_SITE_NAMES = ("none", "unlisted")
RESERVED_ROLE_NAMES = ("none", "deny")
DISPLAY_NAME_CHARS = 64  # a site's `name:`: a heading on the block page, a column in reports
# Characters of a URL's scheme, port, path or userinfo: no place in a domain.
_NOT_A_BARE_HOST = re.compile(r"[:/?#@]")


class Validator:
    def __init__(self, checker: Checker) -> None:
        self.ck = checker
        # Where each name is defined, even where its definition had problems, so
        # that a reference to it is not reported as unknown as well.
        self.site_names: dict[str, yaml.Node] = {}
        self.group_names: dict[str, yaml.Node] = {}
        self.role_names: dict[str, yaml.Node] = {}
        self.grant_nodes: dict[tuple[str, str], yaml.Node] = {}  # (role, site or "*") -> its access key
        self.display_names: dict[str, tuple[yaml.Node, str]] = {}  # case-folded -> where, and its site

    def policy(self, sources: list[Source]) -> model.Policy | None:
        ck = self.ck
        main = sources[0] if sources else None
        sections: dict[str, list[Entry]] = {k: [] for k in MAIN_KEYS}
        for source in sources:
            for entry in source.entries:
                sections[entry.name].append(entry)
        if main is not None and main.root is not None and not any(e.name == "version" for e in main.entries):
            ck.problem(main.root, "the policy has no 'version'; add 'version: 1' as its first line")
        for entry in sections["version"]:
            if not (entry.value.tag == INT and int_of(entry.value) == 1):
                ck.problem(entry.value, f"version {describe(entry.value)} is not supported; "
                                        "this accessgate reads 'version: 1'")

        timezone = self._timezone(sections["timezone"])
        sites = self._sites(sections["sites"])
        sites = self._operations_switched(sites, sections["read_only_operations"])
        groups, ldap = self._directory(sections["directory"])
        roles = self._roles(sections["roles"], ldap is not None)
        unauthenticated = self._unauthenticated(sections["unauthenticated"])
        unlisted = self._main_choice(sections["unlisted"], "'unlisted'", ("allow", "deny"), "allow")
        tests = tests_of(ck, sections["tests"])
        words = InspectionWords(ck, self._domain)
        categories = words.categories(sections["categories"])
        never_inspect = words.never_inspect(sections["never_inspect"], categories)
        always_inspect = words.always_inspect(sections["always_inspect"], self.site_names)
        words.check(sites, roles, self.grant_nodes)
        if ck.count or main is None:
            return None
        self._warn_single_person_roles(roles, groups)
        return model.Policy(
            timezone=timezone,
            sites=MappingProxyType(sites),
            roles=MappingProxyType(roles),
            groups=MappingProxyType(groups),
            unauthenticated=unauthenticated or "deny",
            unlisted=model.Fallback(unlisted),
            tests=tuple(tests),
            digest=digest_of(sources),
            sources=tuple(s.path for s in sources),
            ldap=MappingProxyType(ldap) if ldap is not None else None,
            warnings=tuple(text for _, text in sorted(ck.warnings)),
            categories=MappingProxyType(categories),
            never_inspect=never_inspect,
            always_inspect=always_inspect,
        )

    def _warn_single_person_roles(self, roles: dict[str, model.Role], groups: dict[str, frozenset[str]]) -> None:
        """A role that only one person can have makes its metrics that person's timeline."""
        for name, role in roles.items():
            people: set[str] = set()
            for member in role.members:
                if member.kind is model.MemberKind.USER and member.value is not None:
                    people.add(member.value)
                elif member.kind is model.MemberKind.GROUP and member.value in groups:
                    people.update(groups[member.value])
                else:  # all, a network, a directory server's group: not a known few
                    people.update(("", "-"))
            if len(people) == 1:
                (person,) = people
                self.ck.warn(self.role_names[name],
                             f"role {quoted(name)} has one member ({quoted(person)}), so its metrics "
                             "(accessgate_requests_total{role=...}) show what one person does, minute by "
                             "minute; give the grant to a role with more members (docs/policy-language.md, Roles)")

    def _timezone(self, entries: list[Entry]) -> ZoneInfo:
        for entry in entries:
            name = self.ck.text(entry.value, "timezone")
            if name is None:
                continue
            zone = _zone(name)
            if zone is not None:
                return zone
            hint = self.ck.suggest(name, suggest.zone_names(), "")
            if not hint.startswith("did you mean"):
                hint = "use an IANA name like 'Europe/Berlin' or 'UTC' (the list: `timedatectl list-timezones`)"
            self.ck.problem(entry.value, f"unknown timezone {quoted(name)}; {hint}")
        return ZoneInfo("UTC")

    def _main_choice(self, entries: list[Entry], key: str, options: tuple[str, ...], default: str) -> str:
        for entry in entries:
            value = self.ck.choice(entry.value, key, options)
            if value is not None:
                return value
        return default

    def _unauthenticated(self, entries: list[Entry]) -> str:
        for entry in entries:
            value = self.ck.text(entry.value, "'unauthenticated'")
            if value is None or value == "deny":
                return value or "deny"
            if value not in self.role_names:
                if not self.ck.incomplete:
                    options = ["deny", *sorted(self.role_names)]
                    self.ck.problem(entry.value, f"'unauthenticated' is {quoted(value)}, which is neither 'deny' "
                                                 f"nor a role; {self.ck.suggest(value, options, 'it is one of')}")
                return "deny"
            return value
        return "deny"

    # ---- sites -------------------------------------------------------------

    def _sites(self, sections: list[Entry]) -> dict[str, model.Site]:
        sites: dict[str, model.Site] = {}
        owners: dict[object, tuple[yaml.Node, str]] = {}  # domain or network -> where, and its site
        for section in sections:
            for entry in self.ck.entries(section.value, "'sites'"):
                name = self.ck.name(entry.key, "site name", RESERVED_SITE_NAMES)
                if name is None or not self.ck.define(self.site_names, name, entry.key, "site", "merge them into one"):
                    continue
                site = self._site(name, entry, owners)
                if site is not None:
                    sites[name] = site
        return sites

    def _site(self, name: str, entry: Entry, owners: dict[object, tuple[yaml.Node, str]]) -> model.Site | None:
        ck = self.ck
        owner = f"site '{name}'"
        before = ck.raised
        fields = ck.fields(entry.value, owner, SITE_KEYS)
        keys_ok = ck.raised == before  # else a misspelt 'domains' would be reported twice
        site_domains: list[str] = []
        for node in ck.seq(fields["domains"].value, f"'domains' of {owner}") if "domains" in fields else ():
            domain = self._domain(node, owner)
            if domain is not None and self._owned(owners, domain, node, name, "domain"):
                site_domains.append(domain)
        site_networks: list[model.IPNetwork] = []
        for node in ck.seq(fields["networks"].value, f"'networks' of {owner}") if "networks" in fields else ():
            net = ck.network(node, f"in {owner}")
            if net is not None and self._owned(owners, net, node, name, "network"):
                site_networks.append(net)
        if "domains" not in fields and "networks" not in fields and keys_ok:
            ck.problem(entry.key, f"{owner} has neither 'domains' nor 'networks'; list the domains it covers")
        rules = []
        if "read_only_allow" in fields:
            for node in ck.seq(fields["read_only_allow"].value, f"'read_only_allow' of {owner}"):
                rule = self._read_only_rule(node, owner)
                if rule is not None:
                    rules.append(rule)
        display = self._display_name(fields["name"].value, name) if "name" in fields else ""
        if ck.raised > before:
            return None
        return model.Site(name, tuple(site_domains), tuple(site_networks), tuple(rules), display or "")

    def _display_name(self, node: yaml.Node, site: str) -> str | None:
        """A site's `name:` as people read it: plain text, one site's only."""
        ck = self.ck
        raw = ck.text(node, f"the name of site '{site}'")
        if raw is None:
            return None
        text = raw.strip()
        if not text or len(raw) > DISPLAY_NAME_CHARS or not text.isprintable():
            ck.problem(node, f"the name of site '{site}' is {quoted(raw)}; write the name people know it by, "
                             f"like 'LinkedIn': 1 to {DISPLAY_NAME_CHARS} printable characters")
            return None
        first = self.display_names.get(text.casefold())
        if first is not None:
            ck.problem(node, f"the name {quoted(text)} of site '{site}' is also the name of site '{first[1]}' "
                             f"({where(first[0])}); give each site a name of its own")
            return None
        self.display_names[text.casefold()] = (node, site)
        return text

    def _owned(self, owners: dict[object, tuple[yaml.Node, str]], item: object, node: yaml.Node, site: str,
               what: str) -> bool:
        """Record that `item` (a domain or network) belongs to `site`; False, and a problem, if it has a site."""
        other = owners.get(item)
        if other is None:
            owners[item] = (node, site)
            return True
        first, owner = other
        shown = quoted(str(item)) if what == "domain" else f"'{item}'"
        if owner == site and what == "domain":
            self.ck.problem(node, f"domain {shown} is listed twice in site '{site}'; keep one")
        else:
            self.ck.problem(node, f"{what} {shown} is in site '{owner}' ({where(first)}) "
                                  f"and in site '{site}' ({where(node)}); a {what} belongs to one site")
        return False

    def _domain(self, node: yaml.Node, owner: str) -> str | None:
        ck = self.ck
        raw = ck.text(node, f"a domain of {owner}")
        if raw is None:
            return None
        if raw.startswith("*.") or raw.startswith("."):
            ck.problem(node, f"domain {quoted(raw)} in {owner}: a domain already covers all its subdomains; "
                             f"write {quoted(raw.lstrip('*.'))}")
            return None
        ip = None
        if ":" in raw:  # an IPv6 address, or a scheme or port that has no place here
            try:
                ip = ipaddress.ip_address(raw.strip().strip("[]"))
            except ValueError:
                pass
        if ip is None and _NOT_A_BARE_HOST.search(raw):
            ck.problem(node, f"domain {quoted(raw)} in {owner} is not a bare host name; leave out the "
                             "scheme, port and path (for example 'facebook.com')")
            return None
        if ip is None:
            try:
                host = normalize_host(raw)
            except InvalidHost as exc:
                ck.problem(node, f"domain {quoted(raw)} in {owner} is not a valid host name: "
                                 f"{str(exc).replace(repr(raw), quoted(raw))}")
                return None
            if host.ip is None:
                return host.name
            ip = host.ip  # every IPv4 spelling, like 0x7f.1, is caught here
        ck.problem(node, f"{quoted(raw)} in the domains of {owner} is an IP address; list it under "
                         f"'networks' as '{ip}/{ip.max_prefixlen}'")
        return None

    def _read_only_rule(self, node: yaml.Node, owner: str) -> model.ReadOnlyRule | None:
        ck = self.ck
        fields = ck.fields(node, f"a read_only_allow rule of {owner}", RULE_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        method = None
        if "method" in fields:
            method = ck.method(fields["method"].value, f"of a read_only_allow rule of {owner}")
            if method is None:
                return None
        if "path" not in fields:
            ck.problem(node, f"a read_only_allow rule of {owner} has no 'path'; add one like path: \"/login/*\"")
            return None
        path = ck.text(fields["path"].value, f"the path of a read_only_allow rule of {owner}")
        if path is None:
            return None
        if not path.startswith("/"):
            ck.problem(fields["path"].value, f"path {quoted(path)} of a read_only_allow rule of {owner} must "
                                             f"start with '/'; did you mean {quoted('/' + path)}?")
            return None
        operation = None
        if "operation" in fields:
            operation = self._operation(fields["operation"].value, f"the operation of a read_only_allow rule of {owner}")
            if operation is None:
                return None
        return model.ReadOnlyRule(method, path, operation)

    def _operation(self, node: yaml.Node, owner: str) -> model.Operation | None:
        """`operation: {name, named_in, graphql}`: what a request must say it does (docs/policy-language.md)."""
        ck = self.ck
        before = ck.raised
        fields = ck.fields(node, owner, OPERATION_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        names: list[str] = []
        if "name" in fields:
            value = fields["name"].value
            items = ck.seq(value, f"'name' of {owner}") if isinstance(value, yaml.SequenceNode) else [value]
            for item in items:
                glob = ck.text(item, f"a name of {owner}")
                if glob is not None and not glob.strip():
                    ck.problem(item, f"a name of {owner} is empty; write a glob like '*Query'")
                elif glob is not None:
                    names.append(glob)
            if isinstance(value, yaml.SequenceNode) and not items:
                ck.problem(value, f"'name' of {owner} is empty, so no operation would match; "
                                  "list a glob like '*Query'")
        named_in: list[model.Said] = []
        if "named_in" in fields:
            for item in ck.seq(fields["named_in"].value, f"'named_in' of {owner}"):
                said = self._said(item, owner, "named_in")
                if said is not None and said in named_in:
                    ck.problem(item, f"{quoted(str(said))} is listed twice in 'named_in' of {owner}; keep one")
                elif said is not None:
                    named_in.append(said)
        graphql = None
        if "graphql" in fields:
            graphql = self._said(fields["graphql"].value, owner, "graphql")
            if graphql is not None and graphql.kind == "header":
                ck.problem(fields["graphql"].value, f"'graphql' of {owner} is {quoted(str(graphql))}; the GraphQL "
                                                    "document is read from the body: write 'json FIELD' or 'form FIELD'")
        if ck.raised > before:
            return None
        if "graphql" not in fields and not named_in:
            ck.problem(node, f"{owner} says nowhere where the request names its operation; add 'named_in' "
                             "(like [header X-FB-Friendly-Name, form fb_api_req_friendly_name]) or 'graphql'")
            return None
        if "graphql" not in fields and not names:
            ck.problem(node, f"{owner} has no 'name', so any name would pass; add the names that read, "
                             "like name: '*Query'")
            return None
        return model.Operation(tuple(names), tuple(named_in), graphql)

    def _said(self, node: yaml.Node, owner: str, key: str) -> model.Said | None:
        """'header NAME', 'form FIELD' or 'json FIELD'."""
        ck = self.ck
        text = ck.text(node, f"an entry of '{key}' of {owner}")
        if text is None:
            return None
        kind, _, name = text.strip().partition(" ")
        name = name.strip()
        if kind not in model.SAID_KINDS or not name:
            ck.problem(node, f"{quoted(text)} in '{key}' of {owner} names no place in a request; write "
                             "'header NAME', 'form FIELD' or 'json FIELD'")
            return None
        if kind == "header":
            if not TOKEN.match(name):
                ck.problem(node, f"{quoted(name)} in '{key}' of {owner} is not a header name; write it like "
                                 "'header X-FB-Friendly-Name'")
                return None
            name = name.lower()
        return model.Said(kind, name)

    def _operations_switched(self, sites: dict[str, model.Site], entries: list[Entry]) -> dict[str, model.Site]:
        """`read_only_operations: {SITE: off}`: that site's operation rules are dropped, so
        read-only blocks the endpoints they covered again."""
        ck = self.ck
        for entry in entries:
            for item in ck.entries(entry.value, "'read_only_operations'"):
                name = item.name
                switch = ck.choice(item.value, f"'read_only_operations' of {quoted(name)}", SWITCHES)
                if name not in self.site_names:
                    if not ck.incomplete:
                        ck.problem(item.key, f"unknown site {quoted(name)} in 'read_only_operations'; "
                                             f"{ck.suggest(name, self.site_names, 'sites are')}")
                    continue
                site = sites.get(name)
                if site is None or switch is None:
                    continue
                if not site.operation_rules:
                    ck.warn(item.key, f"site {quoted(name)} has no read_only_allow rule with an 'operation', "
                                      f"so 'read_only_operations: {switch}' changes nothing for it")
                elif switch == "off":
                    sites[name] = dataclasses.replace(site, read_only_allow=site.path_rules)
        return sites

    # ---- directory -----------------------------------------------------------

    def _directory(self, sections: list[Entry]) -> tuple[dict[str, frozenset[str]], dict[str, object] | None]:
        ck = self.ck
        groups: dict[str, frozenset[str]] = {}
        ldap: dict[str, object] | None = None
        ldap_nodes: dict[str, yaml.Node] = {}
        for section in sections:
            for entry in ck.entries(section.value, "'directory'", DIRECTORY_KEYS):
                if entry.name == "ldap":
                    if ck.define(ldap_nodes, "directory.ldap", entry.key, "setting", "keep one"):
                        ldap = self._ldap(entry.value)
                    continue
                for group in ck.entries(entry.value, "'directory.groups'"):
                    name = ck.name(group.key, "group name")
                    if name is None or not ck.define(self.group_names, name, group.key, "group", "merge the lists"):
                        continue
                    users = [ck.text(n, f"a user of group '{name}'") for n in ck.seq(group.value, f"group '{name}'")]
                    groups[name] = frozenset(model.fold_user(u) for u in users if u is not None)
        return groups, ldap

    def _ldap(self, node: yaml.Node) -> dict[str, object]:
        ck = self.ck
        settings: dict[str, object] = {}
        for entry in ck.entries(node, "'directory.ldap'", LDAP_KEYS):
            name, value_node = entry.name, entry.value
            what = f"'{name}' of directory.ldap"
            value: object
            if name in LDAP_NUMBERS:
                low, high = LDAP_NUMBERS[name]
                bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
                unit = " of seconds," if name.endswith("_seconds") else ""
                value = ck.whole_number(value_node, f"{what} must be a whole number{unit} {bounds}", low, high)
            elif name in LDAP_CHOICES:
                value = ck.choice(value_node, what, LDAP_CHOICES[name])
            elif name == "start_tls":
                value = None
                if value_node.tag == _BOOL:
                    value = value_node.value.lower() in ("true", "yes", "on", "y")
                else:
                    ck.problem(value_node, f"{what} must be true or false, not {describe(value_node)}")
            elif name == "group_map":
                value = self._group_map(value_node)
            else:
                value = ck.text(value_node, what)
                if value is not None and not self._ldap_text(name, str(value), value_node):
                    value = None
            if value is not None:
                settings[name] = value
        if not isinstance(node, yaml.MappingNode):
            return settings
        for required in ("url", "base_dn"):
            if required not in settings and not any(text_of(k) == required for k, _ in node.value):
                ck.problem(node, f"directory.ldap needs '{required}' "
                                 "(e.g. url: ldaps://dc1.corp.example:636, base_dn: DC=corp,DC=example)")
        if settings.get("start_tls") and str(settings.get("url", "")).lower().startswith("ldaps://"):
            ck.problem(node, "directory.ldap: start_tls is for ldap:// URLs; an ldaps:// URL is TLS already")
        if settings.get("bind_dn") and "bind_password_file" not in settings:
            ck.problem(node, "directory.ldap has a bind_dn but no bind_password_file; "
                             "name the file that holds the service account's password")
        return settings

    def _ldap_text(self, name: str, value: str, node: yaml.Node) -> bool:
        """Whether a text setting of directory.ldap can work; reports why not."""
        ck = self.ck
        if name == "url" and not re.match(r"ldaps?://[^/?#]+/?\Z", value, re.IGNORECASE):
            ck.problem(node, f"'url' of directory.ldap {quoted(value)} is not an LDAP server URL; "
                             "write it like ldaps://dc1.corp.example:636 or ldap://ldap.example.org")
            return False
        if name in ("user_attribute", "group_attribute") and not _LDAP_ATTRIBUTE.match(value):
            ck.problem(node, f"'{name}' of directory.ldap {quoted(value)} is not an attribute name, "
                             "like sAMAccountName, uid or member")
            return False
        if name in ("user_filter", "group_filter"):
            if "{" in value:
                ck.problem(node, f"'{name}' of directory.ldap {quoted(value)} has a placeholder; it is ANDed "
                                 "to accessgate's own search (the name is matched through user_attribute, "
                                 "escaped), so write a plain filter like (objectClass=person)")
                return False
            if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
                ck.problem(node, f"'{name}' of directory.ldap {quoted(value)} is not a filter; write it in "
                                 "parentheses, like (objectClass=groupOfNames)")
                return False
        return True

    def _group_map(self, node: yaml.Node) -> dict[str, str] | None:
        """Directory group (DN or CN) -> policy group name."""
        found: dict[str, str] = {}
        for entry in self.ck.entries(node, "'group_map' of directory.ldap"):
            source = self.ck.text(entry.key, "a directory group in group_map")
            target = self.ck.name(entry.value, f"the policy group that directory group {quoted(entry.name)} maps to")
            if source is not None and target is not None:
                found[source] = target
        return found

    # ---- roles ----------------------------------------------------------------

    def _roles(self, sections: list[Entry], has_ldap: bool) -> dict[str, model.Role]:
        roles: dict[str, model.Role] = {}
        for section in sections:
            for entry in self.ck.entries(section.value, "'roles'"):
                name = self.ck.name(entry.key, "role name", RESERVED_ROLE_NAMES)
                if name is None or not self.ck.define(self.role_names, name, entry.key, "role", "merge them into one"):
                    continue
                role = self._role(name, entry.value, has_ldap)
                if role is not None:
                    roles[name] = role
        return roles

    def _role(self, name: str, node: yaml.Node, has_ldap: bool) -> model.Role | None:
        ck = self.ck
        owner = f"role '{name}'"
        before = ck.raised
        fields = ck.fields(node, owner, ROLE_KEYS)
        members = []
        if "members" in fields:
            for item in ck.seq(fields["members"].value, f"'members' of {owner}"):
                member = self._member(item, owner, has_ldap)
                if member is not None:
                    members.append(member)
        access: dict[str, model.Grant] = {}
        if "access" in fields:
            for entry in ck.entries(fields["access"].value, f"'access' of {owner}"):
                site = entry.name
                if site != "*" and site not in self.site_names:
                    if not ck.incomplete:
                        ck.problem(entry.key, f"unknown site {quoted(site)} in the access of {owner}; "
                                              f"{ck.suggest(site, self.site_names, 'sites are')}")
                    continue
                grant = self._grant(entry.value, f"access of {owner} to '{site}'", f"roles.{name}.access.{site}")
                self.grant_nodes[(name, site)] = entry.key
                if grant is not None:
                    access[site] = grant
        if ck.raised > before:
            return None
        return model.Role(name, tuple(members), MappingProxyType(access))

    def _member(self, node: yaml.Node, owner: str, has_ldap: bool) -> model.Member | None:
        ck = self.ck
        if isinstance(node, yaml.MappingNode) and len(node.value) == 1:
            key, value = node.value[0]
            if isinstance(key, yaml.ScalarNode) and key.value in ("user", "group", "net"):
                ck.problem(node, f"member {quoted(f'{key.value}: {text_of(value)}')} of {owner} was read "
                                 f"as a mapping because of the space after ':'; write "
                                 f"{quoted(f'{key.value}:{text_of(value)}')} or put it in quotes")
                return None
        text = ck.text(node, f"a member of {owner}")
        if text is None:
            return None
        if text == "all":
            return model.Member(model.MemberKind.ALL)
        kind, sep, rest = text.partition(":")
        rest = rest.strip()
        if not sep or kind not in ("user", "group", "net"):
            close = suggest.member_kind(kind)
            hint = f"did you mean {quoted(close + sep + rest)}?" if close and close != "all" else (
                "did you mean 'all'?" if close else f"members are {MEMBER_FORMS}")
            ck.problem(node, f"member {quoted(text)} of {owner} is not understood; {hint}")
            return None
        if not rest:
            ck.problem(node, f"member {quoted(text)} of {owner} names nothing after '{kind}:'; "
                             f"write it like '{kind}:{'10.0.0.0/8' if kind == 'net' else 'NAME'}'")
            return None
        if kind == "user":
            return model.Member(model.MemberKind.USER, value=model.fold_user(rest))
        if kind == "net":
            net = ck.network(node, f"in member {quoted(text)} of {owner}", rest)
            return model.Member(model.MemberKind.NET, network=net) if net else None
        if not has_ldap and rest not in self.group_names and not ck.incomplete:
            ck.problem(node, f"unknown group {quoted(rest)} in {owner}; "
                             f"{ck.suggest(rest, self.group_names, 'groups in directory.groups are')}"
                             " (or configure directory.ldap)")
            return None
        return model.Member(model.MemberKind.GROUP, value=rest)

    def _grant(self, node: yaml.Node, owner: str, rule: str) -> model.Grant | None:
        ck = self.ck
        if isinstance(node, yaml.ScalarNode):
            value = ck.text(node, owner)
            if value is None:
                return None
            if value not in LEVELS:
                ck.problem(node, f"{owner}: {quoted(value)} is not valid; write full, read-only, warn or deny, or a "
                                 "mapping with 'level', 'windows' and 'daily_minutes'" + suggest.maybe(value, LEVELS))
                return None
            return model.Grant(model.Level(value), rule=rule)
        fields = ck.fields(node, owner, GRANT_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        before = ck.raised
        level = None
        if "level" not in fields:
            ck.problem(node, f"{owner} has no 'level'; add 'level: full' or 'level: read-only'")
        else:
            level = ck.choice(fields["level"].value, f"the level of {owner}", LEVELS)
        windows = []
        if "windows" in fields:
            items = ck.seq(fields["windows"].value, f"'windows' of {owner}")
            if isinstance(fields["windows"].value, yaml.SequenceNode) and not items:
                ck.problem(fields["windows"].value, f"'windows' of {owner} is empty, so it would never open; "
                                                    "list a window like 'mon-fri 12:00-13:00' or leave it out")
            for item in items:
                text = ck.text(item, f"a window of {owner}")
                if text is None:
                    continue
                try:
                    windows.append(parse_window(text))
                except ValueError as exc:
                    ck.problem(item, f"{exc} (in {owner})")
        minutes = None
        if "daily_minutes" in fields:
            minutes = ck.whole_number(fields["daily_minutes"].value,
                                      f"'daily_minutes' of {owner} must be a whole number from 1 to 1440", 1, 1440)
        if level == "deny" and ("windows" in fields or "daily_minutes" in fields):
            ck.problem(fields["level"].value, f"{owner}: windows and daily_minutes limit access, so they "
                                              "mean nothing with level 'deny'; write just 'deny'")
        continue_minutes = self._continue_minutes(fields, owner, level)
        if ck.raised > before or level is None:
            return None
        return model.Grant(model.Level(level), tuple(windows), minutes, rule, continue_minutes)

    def _continue_minutes(self, fields: dict[str, Entry], owner: str, level: str | None) -> int | None:
        """`continue_minutes` of a warn grant: how long a reason given on the warn page opens the site."""
        if "continue_minutes" not in fields:
            return None
        node = fields["continue_minutes"].value
        if level is not None and level != "warn":
            self.ck.problem(node, f"{owner}: 'continue_minutes' is how long a reason given on the warn page "
                                  f"opens the site, so it needs 'level: warn', not {quoted(level)}")
            return None
        return self.ck.whole_number(node, f"'continue_minutes' of {owner} must be a whole number from 1 to "
                                          f"{model.CONTINUE_MINUTES_MAX}", 1, model.CONTINUE_MINUTES_MAX)


def _zone(name: str) -> ZoneInfo | None:
    """The zone called `name`, or None for anything that is not one.

    ZoneInfo reads a file named by `name` under the tz database: a folder
    (`Europe`), a file that is not a zone (`zone.tab`), a name too long for
    the file system or with a NUL byte each fail differently; all are "no zone".
    """
    if not name or len(name) > 255 or name != name.strip() or name.startswith(("/", ".")):
        return None
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError, OSError (IsADirectoryError ...)
        return None
