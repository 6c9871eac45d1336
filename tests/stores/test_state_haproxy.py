"""deploy/haproxy/haproxy.cfg, run as shipped: valid, sticky by client address, fails over.

The backends here are two real redis-servers, each answering with its own
name: the config only forwards TCP, so any TCP server shows where a
connection went.  (The end-to-end test with accessgate proxies is in
test_state_e2e.py.)
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest

from support.haproxy import HAPROXY_CFG, haproxy_env, running_haproxy
from support.redis_server import running_redis

SOURCES = [f"127.0.0.{n}" for n in range(1, 41)]


@pytest.fixture
def two_backends(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with running_redis(tmp_path / "a") as a, running_redis(tmp_path / "b") as b:
        a.client().set("who", "proxy1")
        b.client().set("who", "proxy2")
        yield a, b


def who_answers(listen: tuple[str, int], source: str) -> str | None:
    try:
        with socket.create_connection(listen, timeout=2, source_address=(source, 0)) as s:
            s.sendall(b"GET who\r\n")
            reply = s.recv(64)
    except OSError:
        return None
    return reply.split(b"\r\n")[1].decode() if reply.startswith(b"$") else None


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
