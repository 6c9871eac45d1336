"""Reading the policy's words about decryption: `categories`, `never_inspect`, `always_inspect`.

- `categories`: named lists of domains that are no governed site, such as
  the catalog's `banking` and `health` (policy/sites/private.yaml);
- `never_inspect`: domains, or `category:NAME`, whose TLS connections are
  never decrypted, whatever else applies;
- `always_inspect`: sites (or `"*"`, every site) whose connections are
  always decrypted, for a record of every request.

Checked against the roles: read-only needs every request decrypted, to
tell reading from writing, so a site that a role grants read-only by name
cannot be never inspected (an error), and one that a role reads only
through its `"*"` is refused rather than decrypted (a warning); a site
cannot be both always and never inspected.  docs/inspection.md says what
the words mean; docs/policy-errors.md lists the messages.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import yaml

from accessgate.errors import InvalidHost
from accessgate.policy import model
from accessgate.policy.hosts import normalize_host
from accessgate.policy.limits import quoted
from accessgate.policy.nodes import Checker, Entry, where

CATEGORY = "category:"
EVERY_SITE = "*"


def parents(domain: str):
    """`domain` and every domain above it: a.b.c, b.c, c."""
    while True:
        yield domain
        dot = domain.find(".")
        if dot < 0:
            return
        domain = domain[dot + 1 :]


class InspectionWords:
    """Reads the three sections; `check` runs once the sites and roles are known."""

    def __init__(self, checker: Checker, domain_of: Callable[[yaml.Node, str], str | None]) -> None:
        self.ck = checker
        self._domain_of = domain_of  # the sites' own domain check, with its messages
        self.category_names: dict[str, yaml.Node] = {}
        # never_inspect, as read: (the entry as written, its node, the domains it names)
        self.never: list[tuple[str, yaml.Node, tuple[str, ...]]] = []
        self.always: list[tuple[str, yaml.Node]] = []

    # ---- reading -------------------------------------------------------------

    def categories(self, sections: list[Entry]) -> dict[str, tuple[str, ...]]:
        ck = self.ck
        found: dict[str, tuple[str, ...]] = {}
        for section in sections:
            for entry in ck.entries(section.value, "'categories'"):
                name = ck.name(entry.key, "category name")
                if name is None or not ck.define(self.category_names, name, entry.key, "category",
                                                 "merge the lists"):
                    continue
                owner = f"category '{name}'"
                domains: dict[str, yaml.Node] = {}
                for node in ck.seq(entry.value, owner):
                    domain = self._domain(node, owner)
                    if domain is None:
                        continue
                    if domain in domains:
                        ck.problem(node, f"domain {quoted(domain)} is listed twice in {owner} "
                                         f"(first at {where(domains[domain])}); keep one")
                        continue
                    domains[domain] = node
                found[name] = tuple(domains)
        return found

    def never_inspect(self, sections: list[Entry], categories: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
        ck = self.ck
        written: list[str] = []
        for node, text in self._entries(sections, "never_inspect"):
            if text.startswith(CATEGORY):
                name = text[len(CATEGORY):].strip()
                if name not in self.category_names:
                    if not ck.incomplete:
                        ck.problem(node, f"unknown category {quoted(name)} in never_inspect; "
                                         f"{ck.suggest(name, self.category_names, 'categories are')}"
                                         " (the catalog's are in policy/sites/private.yaml)")
                    continue
                entry, domains = f"{CATEGORY}{name}", categories.get(name, ())
            else:
                domain = self._domain(node, "never_inspect")
                if domain is None:
                    continue
                entry, domains = domain, (domain,)
            if entry in written:
                ck.problem(node, f"{quoted(entry)} is listed twice in never_inspect; keep one")
                continue
            written.append(entry)
            self.never.append((entry, node, domains))
        return tuple(written)

    def always_inspect(self, sections: list[Entry], site_names: Mapping[str, yaml.Node]) -> tuple[str, ...]:
        ck = self.ck
        written: list[str] = []
        for node, name in self._entries(sections, "always_inspect"):
            if name != EVERY_SITE and name not in site_names:
                if not ck.incomplete:
                    ck.problem(node, f"unknown site {quoted(name)} in always_inspect ('*' is every site); "
                                     f"{ck.suggest(name, site_names, 'sites are')}")
                continue
            if name in written:
                ck.problem(node, f"{quoted(name)} is listed twice in always_inspect; keep one")
                continue
            written.append(name)
            self.always.append((name, node))
        return tuple(written)

    def _entries(self, sections: list[Entry], key: str) -> Iterator[tuple[yaml.Node, str]]:
        """Each entry of the `key` lists that is text, with its node (the others are reported)."""
        for section in sections:
            for node in self.ck.seq(section.value, f"'{key}'"):
                text = self.ck.text(node, f"an entry of {key}")
                if text is not None:
                    yield node, text

    def _domain(self, node: yaml.Node, owner: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str):
            try:
                is_ip = normalize_host(node.value).ip is not None
            except InvalidHost:
                is_ip = False  # the domain check says why
            if is_ip:
                self.ck.problem(node, f"{quoted(node.value)} in {owner} is an IP address; {owner} names domains "
                                      "(a connection to an address is decided as the site whose networks hold it)")
                return None
        return self._domain_of(node, owner)

    # ---- checking against sites and roles ---------------------------------------

    def check(self, sites: Mapping[str, model.Site], roles: Mapping[str, model.Role],
              grant_nodes: Mapping[tuple[str, str], yaml.Node]) -> None:
        """A never-inspected site must not need decrypting: no read-only grant by name, not always inspected."""
        if not self.never:
            return
        never: dict[str, tuple[str, yaml.Node]] = {}  # domain -> (entry, node) that names it
        for entry, node, domains in self.never:
            for domain in domains:
                never.setdefault(domain, (entry, node))
        by_domain = {domain: name for name, site in sites.items() for domain in site.domains}
        covered: dict[str, tuple[str, str, yaml.Node]] = {}  # site -> (its domain, entry, node)
        for domain, site in by_domain.items():  # a site's domain under a never-inspected one
            for parent in parents(domain):
                if parent in never and site not in covered:
                    covered[site] = (domain, *never[parent])
                    break
        for domain, (entry, node) in never.items():  # a never-inspected domain under a site's
            for parent in parents(domain):
                site = by_domain.get(parent)
                if site is not None and site not in covered:
                    covered[site] = (parent, entry, node)
                    break
        always = {name: node for name, node in self.always}
        for site, (domain, entry, node) in sorted(covered.items(), key=lambda item: where(item[1][2])):
            shown = f"never_inspect {quoted(entry)} covers site '{site}' (domain {quoted(domain)})"
            if site in always:
                self.ck.problem(node, f"{shown}, which always_inspect names ({where(always[site])}); a site "
                                      "cannot be both decrypted for a record of every request and never "
                                      "decrypted: take it out of one of them")
            for role in roles.values():
                grant = role.access.get(site)
                by_star = grant is None
                if by_star:
                    grant = role.access.get("*")
                if grant is None or grant.level is not model.Level.READ_ONLY:
                    continue
                if by_star:
                    self.ck.warn(node, f"{shown}, which role '{role.name}' reads only through its '*' "
                                       f"({where(grant_nodes[(role.name, '*')])}): read-only needs each request "
                                       "decrypted, so such connections are refused, not decrypted; grant "
                                       f"'{site}' full or deny in role '{role.name}', or take it out of never_inspect")
                else:
                    self.ck.problem(node, f"{shown}, which role '{role.name}' grants read-only "
                                          f"({where(grant_nodes[(role.name, site)])}): read-only needs each "
                                          "request decrypted to tell reading from writing; grant it full or deny "
                                          "there, or take it out of never_inspect")
