"""Proxies for the bypass table: one mitmdump per configuration, started when first needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.proxy import start_proxy

POLICY = Path(__file__).with_name("policy.yaml")

# Extra mitmproxy options per proxy kind in cases.py.
KINDS = {
    "plain": {},
    "passthrough": {"ignore_hosts": [r"^bank\.test"]},
    "streaming": {"stream_large_bodies": "1k"},
}


@pytest.fixture(scope="module")
def proxies(mitm_confdir, session_origin, htpasswd, tmp_path_factory):
    started = {}

    def get(kind: str):
        if kind not in started:
            started[kind] = start_proxy(
                policy=POLICY,
                confdir=mitm_confdir,
                origin=session_origin,
                workdir=tmp_path_factory.mktemp(f"adversarial-{kind}"),
                options={"proxyauth": f"@{htpasswd}", **KINDS[kind]},
            )
        return started[kind]

    yield get
    for proxy in started.values():
        proxy.stop()
