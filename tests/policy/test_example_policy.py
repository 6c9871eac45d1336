"""The policies the project ships: valid, tested, and the catalog kept tidy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from accessgate.decision import policytests as policytest
from accessgate.cli import main
from accessgate.decision import ALLOW_REASONS, BLOCK_REASONS, site_for
from accessgate.policy.hosts import normalize_host
from accessgate.policy.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
POLICY_DIR = ROOT / "policy"
EXAMPLE = POLICY_DIR / "example.yaml"
CATALOG = POLICY_DIR / "sites" / "social.yaml"
POLICY_FILES = sorted(POLICY_DIR.rglob("*.yaml"))


MAIN_POLICIES = [p for p in POLICY_FILES if p.parent == POLICY_DIR]


@pytest.mark.parametrize("path", MAIN_POLICIES, ids=[p.name for p in MAIN_POLICIES])
def test_every_shipped_policys_own_tests_pass(capsys, path):
    status = main(["test", str(path)])
    out = capsys.readouterr().out
    assert status == 0, out
    passed = int(re.fullmatch(r"(\d+) passed, 0 failed\n", out).group(1))
    assert passed >= (15 if path == EXAMPLE else 1)


@pytest.mark.parametrize("path", POLICY_FILES, ids=[str(p.relative_to(POLICY_DIR)) for p in POLICY_FILES])
def test_every_shipped_policy_file_passes_check(capsys, path):
    status = main(["check", str(path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.startswith(f"OK: {path} (")


def test_the_example_policys_tests_reach_every_grant_and_every_reason():
    policy = load_policy(EXAMPLE)
    results = policytest.run_tests(policy)
    rules = {r.decision.rule for r in results}
    grants = {g.rule for role in policy.roles.values() for g in role.access.values()}
    assert grants - rules == set(), "grants no test case reaches"
    reasons = {r.decision.reason for r in results}
    assert reasons == set(BLOCK_REASONS + ALLOW_REASONS)


# ---- the catalog ----------------------------------------------------------


def catalog_sites() -> dict[str, dict]:
    return yaml.safe_load(CATALOG.read_text())["sites"]


def test_no_domain_is_in_two_sites():
    owner: dict[str, str] = {}
    twice = []
    for site, spec in catalog_sites().items():
        for domain in spec["domains"]:
            if domain in owner:
                twice.append(f"{domain} in {owner[domain]} and {site}")
            owner[domain] = site
    assert twice == []


def test_every_domain_is_written_the_way_the_engine_matches_it():
    odd = [
        domain
        for spec in catalog_sites().values()
        for domain in spec["domains"]
        if normalize_host(domain).name != domain
    ]
    assert odd == []


def read_only_rules_without_a_comment(text: str) -> list[str]:
    """Lines of `read_only_allow` items with no comment above or beside them."""
    missing = []
    lines = text.splitlines()
    inside: int | None = None  # indentation of the open `read_only_allow:` key
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("read_only_allow:"):
            inside = indent
            continue
        if inside is None or not stripped or stripped.startswith("#"):
            continue
        if indent <= inside and not stripped.startswith("- "):
            inside = None
            continue
        if stripped.startswith("- "):
            above = lines[number - 2].strip()
            if not above.startswith("#") and "#" not in stripped:
                missing.append(f"{CATALOG.name}:{number}: {stripped}")
    return missing


def test_every_read_only_rule_says_why():
    assert read_only_rules_without_a_comment(CATALOG.read_text()) == []


def test_the_comment_check_itself_catches_a_bare_rule():
    text = "sites:\n  a:\n    read_only_allow:\n      # why\n      - {path: /x}\n      - {path: /y}\n"
    assert read_only_rules_without_a_comment(text) == [f"{CATALOG.name}:6: - {{path: /y}}"]


# Hosts a browser really contacts for each site, and hosts that must stay
# outside every site because other services share their parent domain.
@pytest.mark.parametrize(
    "host, site",
    [
        pytest.param("scontent-fra5-1.xx.fbcdn.net", "facebook", id="facebook-photos-cdn"),
        pytest.param("connect.facebook.net", "facebook", id="facebook-sdk-embedded-elsewhere"),
        pytest.param("www.messenger.com", "facebook", id="messenger-is-facebook"),
        pytest.param("static.cdninstagram.com", "instagram", id="instagram-cdn"),
        pytest.param("www.threads.net", "threads", id="threads"),
        pytest.param("web.whatsapp.com", "whatsapp", id="whatsapp-web"),
        pytest.param("mmg.whatsapp.net", "whatsapp", id="whatsapp-media"),
        pytest.param("media.licdn.com", "linkedin", id="linkedin-media"),
        pytest.param("lnkd.in", "linkedin", id="linkedin-short-links"),
        pytest.param("pbs.twimg.com", "x", id="x-media"),
        pytest.param("t.co", "x", id="x-short-links"),
        pytest.param("api.twitter.com", "x", id="twitter-is-x"),
        pytest.param("v16-webapp.tiktok.com", "tiktok", id="tiktok"),
        pytest.param("i.ytimg.com", "youtube", id="youtube-thumbnails"),
        pytest.param("rr3---sn-4g5e6nz7.googlevideo.com", "youtube", id="youtube-video-streams"),
        pytest.param("consent.youtube.com", "youtube", id="youtube-consent"),
        pytest.param("yt3.ggpht.com", "youtube", id="youtube-avatars"),
        pytest.param("i.pinimg.com", "pinterest", id="pinterest-media"),
        pytest.param("i.redd.it", "reddit", id="reddit-media"),
        pytest.param("cf-st.sc-cdn.net", "snapchat", id="snapchat-media"),
        pytest.param("cdn.bsky.app", "bluesky", id="bluesky-cdn"),
        pytest.param("morel.us-east.host.bsky.network", "bluesky", id="bluesky-account-host"),
        pytest.param("files.mastodon.social", "mastodon", id="mastodon-media"),
        pytest.param("64.media.tumblr.com", "tumblr", id="tumblr-media"),
        pytest.param("cdn.discordapp.com", "discord", id="discord-cdn"),
        pytest.param("web.telegram.org", "telegram", id="telegram-web"),
        pytest.param("sun9-1.userapi.com", "vk", id="vk-media"),
        pytest.param("accounts.google.com", None, id="google-sign-in-stays-unlisted"),
        pytest.param("lh3.ggpht.com", None, id="other-google-images-stay-unlisted"),
        pytest.param("www.googleapis.com", None, id="other-google-apis-stay-unlisted"),
        pytest.param("meta.com", None, id="metas-company-site-is-no-social-site"),
    ],
)
def test_the_catalog_covers_the_hosts_a_site_uses(host, site):
    policy = load_policy(CATALOG)
    assert site_for(normalize_host(host), policy) == site
