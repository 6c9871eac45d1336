"""HAProxy run from the shipped deploy/haproxy/haproxy.cfg, for tests.

    from support.haproxy import running_haproxy

    with running_haproxy(["127.0.0.1:8081", "127.0.0.1:8082"]) as lb:
        ...  # lb.listen = ("127.0.0.1", port): point clients here

The file is used as shipped; test addresses come in through the
environment variables it reads.  HAProxy is checked with `haproxy -c`,
started in the foreground and stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.redis_server import free_port

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


@dataclass
class HAProxy:
    listen: tuple[str, int]
    stats: tuple[str, int]
    process: subprocess.Popen


def haproxy_env(listen: int, stats: int, proxies: list[str]) -> dict[str, str]:
    env = dict(os.environ, ACCESSGATE_LISTEN=f"127.0.0.1:{listen}", ACCESSGATE_STATS=f"127.0.0.1:{stats}")
    for n, address in enumerate(proxies, start=1):
        env[f"ACCESSGATE_PROXY{n}"] = address
    return env


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@contextmanager
def running_haproxy(proxies: list[str]) -> Iterator[HAProxy]:
    """The shipped haproxy.cfg, as is, with test addresses from the environment."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    listen, stats = free_port(), free_port()
    env = haproxy_env(listen, stats, proxies)
    check = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        ["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while not _accepts(listen):
            assert process.poll() is None, process.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "haproxy did not start listening within 10 s"
            time.sleep(0.05)
        yield HAProxy(("127.0.0.1", listen), ("127.0.0.1", stats), process)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
