"""`accessgate pac`: the generated PAC file, evaluated for real by node.

Each table row is a host a browser asks about and what the PAC file must
answer.  The file is run in node with the standard PAC helper functions
(tests/ops/pac_harness.js), the way a browser's PAC engine runs it.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from accessgate.policy import model, pac
from support.policies import everyone_policy

HERE = Path(__file__).parent
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: cannot evaluate PAC files")

PROXY = "proxy.corp.example:3128"
VIA = f"PROXY {PROXY}"


def _policy(unlisted: str = "allow") -> model.Policy:
    sites = {
        "facebook": model.Site("facebook", ("facebook.com", "fbcdn.net", "xn--bcher-kva.example")),
        "linkedin": model.Site("linkedin", ("linkedin.com",)),
        "internal-social": model.Site(
            "internal-social",
            ("social.corp.example",),
            networks=(ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8::/32")),
        ),
    }
    return model.Policy(
        timezone=ZoneInfo("UTC"),
        sites=sites,
        roles={},
        groups={},
        unauthenticated="deny",
        unlisted=model.Fallback(unlisted),
    )


def evaluate(pac_text: str, hosts: list[str], tmp_path: Path) -> dict[str, str]:
    pac_file = tmp_path / "proxy.pac"
    pac_file.write_text(pac_text)
    done = subprocess.run(
        [NODE, str(HERE / "pac_harness.js"), str(pac_file), json.dumps(hosts)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


GOVERNED_CASES = [
    ("facebook.com", VIA, "a site's domain itself"),
    ("www.facebook.com", VIA, "a subdomain"),
    ("a.b.c.fbcdn.net", VIA, "a deep subdomain of another domain of the site"),
    ("WWW.FaceBook.COM", VIA, "case does not matter"),
    ("www.facebook.com.", VIA, "a trailing dot does not matter"),
    ("xn--bcher-kva.example", VIA, "an IDN domain in A-label form"),
    ("linkedin.com", VIA, "every site counts"),
    ("accessgate.status", VIA, "the status page is served by the proxy"),
    ("notfacebook.com", "DIRECT", "a suffix that is not a label boundary is another domain"),
    ("facebook.com.evil.example", "DIRECT", "a governed name as a prefix is another domain"),
    ("facebook", "DIRECT", "a plain host name is not the domain"),
    ("com", "DIRECT", "a parent of a governed domain is not governed"),
    ("example.org", "DIRECT", "unlisted hosts go direct when unlisted is allow"),
    ("intranet", "DIRECT", "plain intranet names go direct"),
    ("198.51.100.7", VIA, "an IPv4 literal in a site's networks"),
    ("198.51.101.7", "DIRECT", "an IPv4 literal outside every site's networks"),
    ("127.0.0.1", "DIRECT", "loopback goes direct"),
    ("constructor", "DIRECT", "JavaScript object property names are not domains"),
    ("__proto__", "DIRECT", "nor is the prototype"),
]


@pytest.mark.parametrize(
    "host, expected", [c[:2] for c in GOVERNED_CASES], ids=[c[2] for c in GOVERNED_CASES]
)
def test_governed_sites_go_through_the_proxy(host, expected, governed_answers):
    assert governed_answers[host] == expected


@pytest.fixture(scope="module")
def governed_answers(tmp_path_factory) -> dict[str, str]:
    text = pac.render(pac.from_policy(_policy(), PROXY))
    return evaluate(text, [c[0] for c in GOVERNED_CASES], tmp_path_factory.mktemp("pac"))


ALL_CASES = [
    ("www.facebook.com", VIA, "governed sites go through the proxy"),
    ("example.org", VIA, "so do unlisted hosts"),
    ("198.51.101.7", VIA, "and IP literals"),
    ("intranet", "DIRECT", "plain intranet names stay direct"),
    ("localhost", "DIRECT", "localhost stays direct"),
    ("127.0.0.1", "DIRECT", "IPv4 loopback stays direct"),
    ("127.3.4.5", "DIRECT", "all of 127/8 is loopback"),
    ("::1", "DIRECT", "IPv6 loopback stays direct"),
]


@pytest.mark.parametrize("host, expected", [c[:2] for c in ALL_CASES], ids=[c[2] for c in ALL_CASES])
def test_all_traffic_goes_through_the_proxy(host, expected, all_answers):
    assert all_answers[host] == expected


@pytest.fixture(scope="module")
def all_answers(tmp_path_factory) -> dict[str, str]:
    text = pac.render(pac.from_policy(_policy(), PROXY, all_traffic=True))
    return evaluate(text, [c[0] for c in ALL_CASES], tmp_path_factory.mktemp("pac"))


def test_a_large_catalog_stays_valid_javascript(tmp_path):
    domains = tuple(f"site{i}.example" for i in range(20_000))
    text = pac.render(pac.PacConfig(proxy=PROXY, domains=domains))
    answers = evaluate(text, ["www.site19999.example", "site20000.example"], tmp_path)
    assert answers == {"www.site19999.example": VIA, "site20000.example": "DIRECT"}


def test_no_direct_fallback_for_governed_sites():
    # A PAC answer "PROXY x; DIRECT" would let a governed site bypass the
    # policy whenever the proxy is unreachable.
    for all_traffic in (False, True):
        text = pac.render(pac.from_policy(_policy(), PROXY, all_traffic=all_traffic))
        assert "; DIRECT" not in text


@pytest.mark.parametrize(
    "proxy, ok",
    [
        ("proxy.corp.example:3128", True),
        ("10.0.0.1:8080", True),
        ("[2001:db8::1]:8080", True),
        ("proxy.corp.example", False),
        ("proxy.corp.example:0", False),
        ("proxy.corp.example:70000", False),
        ('evil"; return "DIRECT', False),
    ],
    ids=[
        "a name and port",
        "an IPv4 address and port",
        "a bracketed IPv6 address and port",
        "a port is required",
        "port 0 is not a port",
        "ports end at 65535",
        "nothing that could break out of the JavaScript string",
    ],
)
def test_proxy_address_is_host_and_port(proxy, ok):
    if ok:
        assert pac.check_proxy(proxy) == proxy
    else:
        with pytest.raises(ValueError, match="HOST:PORT|out of range"):
            pac.check_proxy(proxy)


# The command line, once the policy loader exists.
def policy_yaml(unlisted: str) -> str:
    return everyone_policy({"facebook": "read-only"}, None, domains="{site}.com", unauthenticated="deny",
                           unlisted=unlisted)


def _cli(tmp_path: Path, unlisted: str, *extra: str) -> subprocess.CompletedProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(unlisted))
    return subprocess.run(
        [sys.executable, "-m", "accessgate", "pac", "--policy", str(policy), "--proxy", PROXY, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_writes_a_pac_for_the_policy(tmp_path):
    done = _cli(tmp_path, "allow")
    assert done.returncode == 0, done.stderr
    answers = evaluate(done.stdout, ["m.facebook.com", "example.org"], tmp_path)
    assert answers == {"m.facebook.com": VIA, "example.org": "DIRECT"}


def test_cli_sends_everything_when_unlisted_hosts_are_denied(tmp_path):
    done = _cli(tmp_path, "deny")
    assert done.returncode == 0, done.stderr
    assert "unlisted: deny" in done.stderr
    assert evaluate(done.stdout, ["example.org"], tmp_path) == {"example.org": VIA}


def test_cli_writes_to_a_file(tmp_path):
    out = tmp_path / "out.pac"
    done = _cli(tmp_path, "allow", "--all", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert evaluate(out.read_text(), ["example.org"], tmp_path) == {"example.org": VIA}


def test_cli_rejects_a_bad_proxy_address(tmp_path):
    done = _cli(tmp_path, "allow", "--proxy", "nope")
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr


def test_cli_names_an_unreadable_policy(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "accessgate", "pac", "--policy", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "missing.yaml" in done.stderr
