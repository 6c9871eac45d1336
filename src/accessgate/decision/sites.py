"""Contract step 1, host -> site: which site of the policy a host name belongs to.

A domain covers itself and every subdomain, and the longest match wins; an
IP address matches a site's networks.  Plain lower-case names, most of
them, are looked up directly; every other spelling is normalized first
(`policy.hosts`), and a name that cannot be a host name is blocked.
"""

from __future__ import annotations

from typing import NamedTuple

from accessgate.errors import InvalidHost
from accessgate.policy.hosts import MAX_NAME_LENGTH, NormalHost, drop_root, normalize_host, plain_labels, plain_name
from accessgate.policy.model import Policy
from accessgate.decision.types import BLOCK, DENIED, RULE_INVALID_HOST, Decision, new_decision


class HostInfo(NamedTuple):
    """What a raw host name is, for everyone: its canonical name and site."""

    name: str
    site: str | None
    invalid: Decision | None = None
    naming: frozenset[str] = frozenset()  # the roles that name the site (see plan.PolicyIndex.naming)


NAMED_BY_NONE: frozenset[str] = frozenset()
_new_tuple = tuple.__new__  # HostInfo is built for every host name not seen before


def host_info(
    raw: str, domains: dict[str, tuple[str, frozenset[str]]], naming: dict[str, frozenset[str]], policy: Policy
) -> HostInfo:
    """What `raw` is: plain names the short way, the rest by normalize_host.

    `domains` maps each domain of the policy to (its site, the roles naming
    the site), `naming` each site to the roles naming it (see plan.PolicyIndex).
    """
    if raw.isascii():
        # Most names come in lower case already: the same object, hashed once.
        # drop_root removes the one dot normalize_host removes; nothing below
        # removes another, so `a.test..` is no plain name and fails there.
        name = drop_root(raw if raw.islower() else raw.lower())
        found = domains.get(name)
        if found is not None:  # a domain of the policy: valid, as the loader checked
            return _new_tuple(HostInfo, (name, found[0], None, found[1]))
        dot = name.find(".")
        while dot > 0:
            found = domains.get(name[dot + 1 :])
            if found is not None:
                # Under a domain of the policy: only the labels before it need checking.
                if len(name) <= MAX_NAME_LENGTH and plain_labels(name[:dot]):
                    return _new_tuple(HostInfo, (name, found[0], None, found[1]))
                break
            dot = name.find(".", dot + 1)
        else:
            plain = plain_name(name)
            if plain is not None:
                return _new_tuple(HostInfo, (plain, None, None, NAMED_BY_NONE))
    try:
        host = normalize_host(raw)
    except InvalidHost as exc:
        invalid = new_decision(BLOCK, DENIED, RULE_INVALID_HOST, message=f"The request names an invalid host: {exc}.")
        return HostInfo(raw, None, invalid)
    site = site_for(host, policy)
    return HostInfo(host.name, site, None, naming.get(site, NAMED_BY_NONE) if site else NAMED_BY_NONE)


def site_for(host: NormalHost, policy: Policy) -> str | None:
    """The site whose longest domain (or network, for an address) covers `host`."""
    if host.ip is not None:
        for network, network_site in policy.network_index:
            if host.ip in network:
                return network_site
        return policy.domain_index.get(host.name)
    index = policy.domain_index
    name = host.name
    while True:
        site: str | None = index.get(name)
        if site is not None:
            return site
        dot = name.find(".")
        if dot < 0:
            return None
        name = name[dot + 1 :]


