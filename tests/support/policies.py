"""Test policies for proxies: a small company with every kind of grant.

`policy_text()` is fresh on every call because its time window is computed
from the clock: a window three hours away is never open during a test run.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def closed_window(now: datetime | None = None) -> str:
    """A one-minute daily window three hours away: never open while the tests run."""
    start = (now or datetime.now(timezone.utc)) + timedelta(hours=3)
    end = start + timedelta(minutes=1)
    return f"mon-sun {start:%H:%M}-{end:%H:%M}"


# The test sites: tests that need other roles write `SITES + """roles: ..."""`.
SITES = """\
version: 1
timezone: UTC
sites:
  facebook:
    domains: [facebook.test]
  linkedin:
    domains: [linkedin.test]
    read_only_allow:
      - {method: POST, path: "/search/*"}
  youtube:
    domains: [youtube.test]
  xsite:
    domains: [x.test]
"""

# Daily quotas: facebook.test allows 3 minutes a day to everyone; linkedin.test
# is full for group pr, which lists "Alice" as a directory may spell her, and
# read-only for everyone else.
QUOTA_POLICY = SITES + """\
directory:
  groups:
    pr: [Alice]
roles:
  pr:
    members: ["group:pr"]
    access:
      linkedin: full
  everyone:
    members: [all]
    access:
      linkedin: read-only
      facebook: {level: full, daily_minutes: 3}
unauthenticated: deny
unlisted: allow
"""

_ROLES = """\
directory:
  groups:
    pr: [alice]
roles:
  pr:
    members: ["group:pr"]
    access:
      "*": full
  everyone:
    members: [all]
    access:
      linkedin: read-only
      youtube:
        level: full
        windows: ["{window}"]
      "*": deny
unauthenticated: {unauthenticated}
unlisted: allow
"""

VISITORS = """\
  visitors:
    members: ["user:nobody-signs-in-as-this"]
    access:
      linkedin: read-only
"""


def policy_text(unauthenticated: str = "deny") -> str:
    text = SITES + _ROLES.format(window=closed_window(), unauthenticated=unauthenticated)
    if unauthenticated == "visitors":
        text = text.replace("unauthenticated:", VISITORS + "unauthenticated:", 1)
    return text


def _key(site: str) -> str:
    return '"*"' if site == "*" else site


def everyone_policy(access: dict[str, str], timezone: str | None = "UTC", *, domains: str = "{site}.test",
                    role: str = "everyone", members: str = "[all]", ungranted: tuple[str, ...] = (),
                    **settings: str) -> str:
    """A policy whose one role (`role` with `members` in YAML; everyone, all, unless told) has `access`
    ({site: its grant in YAML}, "*" for every other site); each site's domain is `domains`
    with the site's name in it, SITE.test unless told; `ungranted` sites are listed with no grant
    of their own (what "*" says holds for them).  No timezone line when `timezone`
    is None.  `settings` are top-level keys, e.g. unlisted="allow"."""
    listed = [site for site in [*access, *ungranted] if site != "*"]
    sites = "".join(f"  {site}: {{domains: [{domains.format(site=site)}]}}\n" for site in listed)
    grants = "".join(f"      {_key(site)}: {grant}\n" for site, grant in access.items())
    rest = "".join(f"{key}: {value}\n" for key, value in settings.items())
    zone = f"timezone: {timezone}\n" if timezone is not None else ""
    return f"version: 1\n{zone}sites:\n{sites}roles:\n  {role}:\n    members: {members}\n    access:\n{grants}{rest}"
