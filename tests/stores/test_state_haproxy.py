"""deploy/haproxy/haproxy.cfg, run as shipped: valid, sticky by client address, fails over, names the client.

The backends here are two small TCP servers (support.whoami) that read the
PROXY v2 header HAProxy sends and answer with their own name and the client
address it named: the config only forwards TCP after that header, so they
show where a connection went and for whom.  (The end-to-end tests with
accessgate proxies are test_state_e2e.py and
tests/ops/test_haproxy_client_address.py.)
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest

from support.haproxy import HAPROXY_CFG, haproxy_env, running_haproxy
from support.whoami import WhoAmI

SOURCES = [f"127.0.0.{n}" for n in range(1, 41)]


@pytest.fixture
def two_backends():
    with WhoAmI("proxy1") as a, WhoAmI("proxy2") as b:
        yield a, b


def answer(listen: tuple[str, int], source: str) -> tuple[str, str] | None:
    """(backend name, client address it was told) for a connection from `source`; None if refused."""
    try:
        with socket.create_connection(listen, timeout=2, source_address=(source, 0)) as s:
            s.sendall(b"who\n")
            reply = s.recv(64).decode()
    except OSError:
        return None
    name, _, client = reply.strip().partition(" ")
    return (name, client) if client else None


def who_answers(listen: tuple[str, int], source: str) -> str | None:
    got = answer(listen, source)
    return got[0] if got else None


@pytest.mark.parametrize(
    "variables",
    [{}, {"ACCESSGATE_LISTEN": "[::1]:3129"}],
    ids=["defaults", "ipv6-listen-address"],
)
def test_the_shipped_config_is_valid(variables):
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CFG)],
        env=dict(haproxy_env(1, 2, []), **variables) if variables else None,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_client_address_always_reaches_the_same_proxy_and_both_are_used(two_backends):
    a, b = two_backends
    with running_haproxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as lb:
        first = {src: who_answers(lb.listen, src) for src in SOURCES}
        again = {src: who_answers(lb.listen, src) for src in reversed(SOURCES)}
    assert first == again
    assert set(first.values()) == {"proxy1", "proxy2"}


def test_a_proxy_that_goes_down_loses_only_its_own_clients(two_backends):
    a, b = two_backends
    with running_haproxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as lb:
        before = {src: who_answers(lb.listen, src) for src in SOURCES}
        a.stop()
        time.sleep(2.5)  # two failed checks, 1 s apart
        after = {src: who_answers(lb.listen, src) for src in SOURCES}
        # Even before the checks notice, `retries` + `redispatch` send it elsewhere.
    assert set(after.values()) == {"proxy2"}
    assert {s for s in SOURCES if before[s] == "proxy2"} <= {s for s in SOURCES if after[s] == "proxy2"}


def test_haproxy_exports_prometheus_metrics(two_backends):
    a, b = two_backends
    with running_haproxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as lb:
        who_answers(lb.listen, "127.0.0.1")
        url = f"http://{lb.stats[0]}:{lb.stats[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    assert 'haproxy_backend_active_servers{proxy="accessgate_proxies"} 2' in text


def test_each_proxy_is_told_the_clients_own_address(two_backends):
    a, b = two_backends
    with running_haproxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as lb:
        told = {src: answer(lb.listen, src) for src in SOURCES[:8]}
    assert {src: got[1] for src, got in told.items() if got} == {src: src for src in SOURCES[:8]}


def test_health_checks_send_a_local_header(two_backends):
    a, b = two_backends
    with running_haproxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]):
        time.sleep(2.5)
    assert a.checks >= 1 and b.checks >= 1
