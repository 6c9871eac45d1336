"""Policies and long-lived proxies for the end-to-end tests.

Test sites are *.test names; support/route_to_origin.py sends whatever
accessgate lets through to the local origin, so the origin's record is the
ground truth of what got past the proxy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.policies import policy_text
from support.proxy import start_proxy


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(policy_text())
    return path


@pytest.fixture(scope="module")
def module_proxy(policy_file, mitm_confdir, session_origin, tmp_path_factory):
    """Starts proxies on the module's policy, routed to the origin; stopped when the module is done."""
    started = []

    def start(name: str, **options):
        proxy = start_proxy(
            policy=policy_file,
            confdir=mitm_confdir,
            origin=session_origin,
            workdir=tmp_path_factory.mktemp(name),
            options=options,
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def auth_proxy(module_proxy, htpasswd):
    """Proxy authentication with htpasswd: every request has a user."""
    return module_proxy("auth-proxy", proxyauth=f"@{htpasswd}")


@pytest.fixture(scope="module")
def anon_proxy(module_proxy):
    """No proxy authentication: every client is anonymous (`unauthenticated: deny`)."""
    return module_proxy("anon-proxy")
