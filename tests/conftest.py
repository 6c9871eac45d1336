"""Fixtures shared by every test directory: real servers on 127.0.0.1, stopped by PID.

    def test_x(proxy_factory, origin, htpasswd):
        proxy = proxy_factory(policy=path, options={"proxyauth": f"@{htpasswd}"})

`origin` is one session-wide recording origin, emptied before each test;
`proxy_factory` starts mitmdump + accessgate routed to it and stops every
proxy it started when the test ends.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.clients import write_htpasswd
from support.origin import Origin
from support.proxy import EXPECT_COMPILED, make_confdir, start_proxy

TEST_USERS = ["alice", "bob", "carol", "zoe", "quinn"]


def pytest_sessionstart(session):
    # tests/decision/test_compiled.py runs suites on the compiled build; a
    # PYTHONPATH that missed it would pass them on pure Python instead.
    if os.environ.get(EXPECT_COMPILED) == "1":
        from accessgate.decision import plan, rules, sites, types
        from accessgate.policy import hosts

        for module in (plan, rules, sites, types, hosts):  # setup.py's COMPILED
            if module.__file__.endswith(".py"):
                raise pytest.UsageError(f"{EXPECT_COMPILED}=1, but {module.__name__} is {module.__file__}")


@pytest.fixture(scope="session")
def mitm_confdir(tmp_path_factory) -> Path:
    """A mitmproxy confdir whose CA is made once per session."""
    return make_confdir(tmp_path_factory.mktemp("mitm"))


@pytest.fixture(scope="session")
def session_origin():
    with Origin() as origin:
        yield origin


@pytest.fixture
def origin(session_origin) -> Origin:
    session_origin.clear()
    return session_origin


@pytest.fixture(scope="session")
def htpasswd(tmp_path_factory) -> Path:
    """htpasswd with TEST_USERS, all with support.clients.PASSWORD."""
    return write_htpasswd(tmp_path_factory.mktemp("auth") / "htpasswd", TEST_USERS)


@pytest.fixture
def proxy_factory(mitm_confdir, session_origin, tmp_path):
    started = []

    def start(**kwargs):
        kwargs.setdefault("confdir", mitm_confdir)
        kwargs.setdefault("origin", session_origin)
        kwargs.setdefault("workdir", tmp_path / f"proxy{len(started)}")
        proxy = start_proxy(**kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
