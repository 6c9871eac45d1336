"""Proxy auto-config (PAC) files that send governed sites through accessgate.

A PAC file is JavaScript a browser runs for every URL to choose a proxy.
The one written here returns `PROXY host:port` for every domain (and
subdomain) of every site the policy governs, for the status page host, and
for IPv4 literals inside a site's `networks`; everything else goes
`DIRECT`.  With `all_traffic` everything but plain intranet names and
loopback goes through the proxy, which a policy with `unlisted: deny` needs:
otherwise unlisted hosts would simply bypass it.

There is deliberately no `; DIRECT` fallback after the proxy: when the proxy
is down a governed site must fail, not open.  A PAC file is a convenience
for clients, not enforcement: the firewall must still stop direct egress
(see docs/clients.md).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Iterable

from accessgate.policy import model

# The status page is served by the proxy itself, so its host must reach it.
STATUS_HOST = "accessgate.status"

_PROXY_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$")


@dataclass(frozen=True, slots=True)
class PacConfig:
    proxy: str  # HOST:PORT clients reach the proxy at
    domains: tuple[str, ...] = ()  # governed domains, A-label, lower case
    networks: tuple[ipaddress.IPv4Network, ...] = ()  # governed IPv4 networks
    all_traffic: bool = False


def check_proxy(proxy: str) -> str:
    """Return `proxy` if it is HOST:PORT with a usable port, else raise ValueError."""
    if not _PROXY_RE.match(proxy):
        raise ValueError(
            f"proxy address {proxy!r} is not HOST:PORT; "
            "give the name or address clients reach the proxy at, e.g. proxy.example.com:8080"
        )
    port = int(proxy.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise ValueError(f"proxy port {port} is out of range; use a port from 1 to 65535")
    return proxy


def from_policy(policy: model.Policy, proxy: str, all_traffic: bool = False) -> PacConfig:
    """The PAC configuration for `policy`: its sites' domains and IPv4 networks."""
    domains = sorted({d for site in policy.sites.values() for d in site.domains})
    networks = sorted(
        {n for site in policy.sites.values() for n in site.networks if n.version == 4},
        key=lambda n: (int(n.network_address), n.prefixlen),
    )
    return PacConfig(
        proxy=check_proxy(proxy),
        domains=tuple(domains),
        networks=tuple(networks),
        all_traffic=all_traffic,
    )


def render(config: PacConfig) -> str:
    """The PAC file's JavaScript for `config`."""
    proxy = json.dumps(f"PROXY {check_proxy(config.proxy)}")
    if config.all_traffic:
        return _ALL_TEMPLATE.replace("@PROXY@", proxy)
    governed = _js_object(sorted({*config.domains, STATUS_HOST}))
    nets = ",\n  ".join(
        json.dumps([str(n.network_address), str(n.netmask)]) for n in config.networks
    )
    return (
        _GOVERNED_TEMPLATE.replace("@PROXY@", proxy)
        .replace("@DOMAINS@", governed)
        .replace("@NETWORKS@", f"[\n  {nets}\n]" if nets else "[]")
    )


def _js_object(keys: Iterable[str]) -> str:
    # An object used as a set: lookup per label suffix stays O(labels) even
    # with a catalog of thousands of domains, where a chain of dnsDomainIs()
    # calls would run for every one of them on every URL.
    body = ",\n  ".join(f"{json.dumps(k)}: 1" for k in keys)
    return "{\n  " + body + "\n}"


_GOVERNED_TEMPLATE = """\
// Proxy auto-config written by `accessgate pac`.  Do not edit: regenerate it
// from the policy.  Governed sites (and all their subdomains) go through
// accessgate; everything else goes direct.  No DIRECT fallback for governed
// sites: if the proxy is down they fail rather than bypass the policy.
var ACCESSGATE_PROXY = @PROXY@;
var ACCESSGATE_DOMAINS = @DOMAINS@;
var ACCESSGATE_NETWORKS = @NETWORKS@;

function FindProxyForURL(url, host) {
  host = host.toLowerCase();
  if (host.charAt(host.length - 1) == ".") {
    host = host.substring(0, host.length - 1);
  }
  // host itself, then each parent domain: a.b.facebook.com, b.facebook.com, facebook.com, com
  var name = host;
  while (true) {
    if (Object.prototype.hasOwnProperty.call(ACCESSGATE_DOMAINS, name)) {
      return ACCESSGATE_PROXY;
    }
    var dot = name.indexOf(".");
    if (dot < 0) {
      break;
    }
    name = name.substring(dot + 1);
  }
  // isInNet() would resolve a name through DNS: only test IPv4 literals.
  if (/^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$/.test(host)) {
    for (var i = 0; i < ACCESSGATE_NETWORKS.length; i++) {
      if (isInNet(host, ACCESSGATE_NETWORKS[i][0], ACCESSGATE_NETWORKS[i][1])) {
        return ACCESSGATE_PROXY;
      }
    }
  }
  return "DIRECT";
}
"""

_ALL_TEMPLATE = """\
// Proxy auto-config written by `accessgate pac --all`.  Do not edit:
// regenerate it.  Every host goes through accessgate except plain intranet
// names and loopback.  No DIRECT fallback: if the proxy is down, browsing
// fails rather than bypassing the policy.
var ACCESSGATE_PROXY = @PROXY@;

function FindProxyForURL(url, host) {
  host = host.toLowerCase();
  if (isPlainHostName(host) || host == "localhost" || host == "localhost." ||
      /^127\\.[0-9]+\\.[0-9]+\\.[0-9]+$/.test(host) || host == "::1" || host == "[::1]") {
    return "DIRECT";
  }
  return ACCESSGATE_PROXY;
}
"""
