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


def everyone_policy(access: dict[str, str], timezone: str = "UTC", **settings: str) -> str:
    """A policy whose one role, everyone, has `access` ({site: its grant in YAML});
    each site's domain is SITE.test.  `settings` are top-level keys, e.g. unlisted="allow"."""
    sites = "".join(f"  {site}: {{domains: [{site}.test]}}\n" for site in access)
    grants = "".join(f"      {site}: {grant}\n" for site, grant in access.items())
    rest = "".join(f"{key}: {value}\n" for key, value in settings.items())
    return f"version: 1\ntimezone: {timezone}\nsites:\n{sites}roles:\n  everyone:\n    members: [all]\n    access:\n{grants}{rest}"
