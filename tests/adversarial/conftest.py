"""Proxies for the bypass table: one mitmdump per configuration, started when first needed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from accessgate.stores import open_store
from support.proxy import start_proxy

POLICY = Path(__file__).with_name("policy.yaml")
INSPECT_POLICY = Path(__file__).with_name("policy-inspect.yaml")

# Extra mitmproxy options per proxy kind in cases.py.
KINDS = {
    "plain": {},
    "passthrough": {"ignore_hosts": [r"^bank\.test"]},
    "streaming": {"stream_large_bodies": "1k"},
    # Where TLS tunnels may pass through unread: policy-inspect.yaml.
    "inspect": {},
    "inspect-refuse-ech": {"accessgate_refuse_ech": True},
    "balanced": {"accessgate_trusted_proxies": ["127.0.0.9/32"]},  # a balancer; the client is not it
}
POLICIES = {"inspect": INSPECT_POLICY, "inspect-refuse-ech": INSPECT_POLICY}


def quota_used_up(path: Path) -> str:
    """A state store in which zoe's one daily minute on video is spent, today and tomorrow (UTC)."""
    spec = f"sqlite:{path}"
    store = open_store(spec)
    try:
        today = datetime.now(timezone.utc).date()
        for day in (today, today + timedelta(days=1)):
            store.mark("user:zoe", "video", day, 0)  # a minute long gone: never the current one
    finally:
        store.close()
    return spec


@pytest.fixture(scope="module")
def proxies(mitm_confdir, session_origin, htpasswd, tmp_path_factory):
    started = {}

    def get(kind: str, mode: str = "needed"):
        if (kind, mode) not in started:
            workdir = tmp_path_factory.mktemp(f"adversarial-{kind}-{mode}")
            started[(kind, mode)] = start_proxy(
                policy=POLICIES.get(kind, POLICY),
                confdir=mitm_confdir,
                origin=session_origin,
                workdir=workdir,
                state=quota_used_up(workdir / "state.sqlite"),
                # A tunnel relayed unread goes to the origin as well (whose
                # certificate is its own): whatever it carries is then on the
                # origin's record.
                options={"proxyauth": f"@{htpasswd}", "route_raw_to_origin": True, "ssl_insecure": True,
                         "accessgate_inspect": mode, **KINDS[kind]},
            )
        return started[(kind, mode)]

    yield get
    for proxy in started.values():
        proxy.stop()
