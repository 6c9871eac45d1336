"""Write a policy back out as one self-contained YAML document.

`dump_policy(policy)` resolves includes into a single file that
`loader.parse_policy` reads back to a policy with the same sites, roles,
grants, directory and tests: the effective policy, as one piece, for review
or for shipping to a proxy that should not depend on a catalog's layout.
Domains come out normalized (A-labels) and windows as they were written.
"""

from __future__ import annotations

import yaml

from accessgate.policy.model import Level, Grant, Member, MemberKind, Policy, PolicyTest, ReadOnlyRule, Site


def dump_policy(policy: Policy) -> str:
    """The policy as a YAML document with no includes."""
    data: dict[str, object] = {"version": 1, "timezone": policy.timezone.key}
    data["sites"] = {name: _site(site) for name, site in policy.sites.items()}
    directory: dict[str, object] = {}
    if policy.groups:
        directory["groups"] = {g: sorted(users) for g, users in policy.groups.items()}
    if policy.ldap is not None:
        directory["ldap"] = dict(policy.ldap)
    if directory:
        data["directory"] = directory
    data["roles"] = {
        name: {
            "members": [_member(m) for m in role.members],
            "access": {site: _grant(g) for site, g in role.access.items()},
        }
        for name, role in policy.roles.items()
    }
    data["unauthenticated"] = policy.unauthenticated
    data["unlisted"] = policy.unlisted.value
    if policy.categories:
        data["categories"] = {name: list(domains) for name, domains in policy.categories.items()}
    if policy.never_inspect:
        data["never_inspect"] = list(policy.never_inspect)
    if policy.always_inspect:
        data["always_inspect"] = list(policy.always_inspect)
    if policy.tests:
        data["tests"] = [_test(t) for t in policy.tests]
    head = "# accessgate policy, one file"
    if policy.sources:
        head += f", made from {', '.join(policy.sources)} (digest {policy.short_digest})"
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return f"{head}\n{body}"


class _Dumper(yaml.SafeDumper):
    """Block style for structure, flow style for short lists of text."""


def _flow_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(item, str) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _flow_list)


def _site(site: Site) -> dict[str, object]:
    out: dict[str, object] = {}
    if site.display_name:
        out["name"] = site.display_name
    if site.domains:
        out["domains"] = list(site.domains)
    if site.networks:
        out["networks"] = [str(n) for n in site.networks]
    if site.read_only_allow:
        out["read_only_allow"] = [_rule(r) for r in site.read_only_allow]
    return out


def _rule(rule: ReadOnlyRule) -> dict[str, object]:
    out: dict[str, object] = {"method": rule.method} if rule.method else {}
    out["path"] = rule.path
    operation = rule.operation
    if operation is not None:
        said: dict[str, object] = {}
        if operation.names:
            said["name"] = list(operation.names)
        if operation.named_in:
            said["named_in"] = [str(s) for s in operation.named_in]
        if operation.graphql is not None:
            said["graphql"] = str(operation.graphql)
        out["operation"] = said
    return out


def _member(member: Member) -> str:
    if member.kind is MemberKind.ALL:
        return "all"
    if member.kind is MemberKind.NET:
        return f"net:{member.network}"
    return f"{member.kind.value}:{member.value}"


def _grant(grant: Grant) -> object:
    if not grant.windows and grant.daily_minutes is None and grant.level is not Level.WARN:
        return grant.level.value
    out: dict[str, object] = {"level": grant.level.value}
    if grant.windows:
        out["windows"] = [w.text for w in grant.windows]
    if grant.daily_minutes is not None:
        out["daily_minutes"] = grant.daily_minutes
    if grant.level is Level.WARN:
        out["continue_minutes"] = grant.continue_minutes
    return out


def _test(test: PolicyTest) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in ("name", "user", "url", "method", "at", "client_ip", "quota_used", "expect", "reason"):
        value = getattr(test, key)
        if value is not None and not (key == "method" and value == "GET"):
            out[key] = value
    if test.headers:
        out["headers"] = [f"{name}: {value}" for name, value in test.headers]
    for key in ("body", "operation"):
        if getattr(test, key) is not None:
            out[key] = getattr(test, key)
    return out
