"""Daily quotas through the real proxy, with the state kept in SQLite."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from accessgate.stores import open_store
from support.clients import curl
from support.policies import everyone_policy

pytestmark = pytest.mark.e2e

POLICY = everyone_policy({"youtube": "{level: full, daily_minutes: 1}"}, unauthenticated="deny", unlisted="allow")


def _today_and_minute(offset: int = 0):
    now = datetime.now(timezone.utc)
    return now.date(), int(now.timestamp() // 60) + offset


def test_used_up_quota_blocks_and_spent_minutes_are_stored(tmp_path, proxy_factory, origin, htpasswd):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    spec = f"sqlite:{tmp_path / 'state.sqlite'}"
    day, minute = _today_and_minute()
    store = open_store(spec)
    store.mark("user:zoe", "youtube", day, minute - 5)  # zoe spent her minute earlier today
    store.close()

    proxy = proxy_factory(policy=policy, state=spec, options={"proxyauth": f"@{htpasswd}"})
    blocked = curl(proxy, "http://youtube.test/", user="zoe")
    while datetime.now(timezone.utc).second >= 50:  # carol's two requests share one minute
        time.sleep(0.5)
    first = curl(proxy, "http://youtube.test/1", user="carol")
    again = curl(proxy, "http://youtube.test/2", user="carol")  # the same minute is paid for
    metrics = proxy.metrics()
    assert proxy.stop() == 0

    assert (blocked.status, blocked.reason) == (403, "quota-exhausted")
    assert (first.status, again.status) == (200, 200)
    assert [s.path for s in origin.requests] == ["/1", "/2"]
    assert 'accessgate_quota_exhausted_total{role="everyone",site="youtube"} 1.0' in metrics
    assert 'accessgate_quota_minutes_total{role="everyone",site="youtube"} 1.0' in metrics
    store = open_store(spec)  # what the next proxy start will see
    try:
        day, minute = _today_and_minute()
        assert store.usage("user:carol", "youtube", day, minute).used == 1
    finally:
        store.close()
