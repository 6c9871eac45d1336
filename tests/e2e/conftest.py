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
def auth_proxy(policy_file, mitm_confdir, session_origin, htpasswd, tmp_path_factory):
    """Proxy authentication with htpasswd: every request has a user."""
    proxy = start_proxy(
        policy=policy_file,
        confdir=mitm_confdir,
        origin=session_origin,
        workdir=tmp_path_factory.mktemp("auth-proxy"),
        options={"proxyauth": f"@{htpasswd}"},
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def anon_proxy(policy_file, mitm_confdir, session_origin, tmp_path_factory):
    """No proxy authentication: every client is anonymous (`unauthenticated: deny`)."""
    proxy = start_proxy(
        policy=policy_file,
        confdir=mitm_confdir,
        origin=session_origin,
        workdir=tmp_path_factory.mktemp("anon-proxy"),
    )
    yield proxy
    proxy.stop()
