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
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.processes import accepts, await_ready, free_port, stop_process

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


@dataclass
class HAProxy:
    listen: tuple[str, int]
    stats: tuple[str, int]
    process: subprocess.Popen


def haproxy_env(listen: int, stats: int, proxies: list[str], balance: str | None = None) -> dict[str, str]:
    """The environment the shipped haproxy.cfg reads; `balance` overrides its `source` balancing."""
    env = dict(os.environ, ACCESSGATE_LISTEN=f"127.0.0.1:{listen}", ACCESSGATE_STATS=f"127.0.0.1:{stats}")
    for n, address in enumerate(proxies, start=1):
        env[f"ACCESSGATE_PROXY{n}"] = address
    if balance is not None:
        env["ACCESSGATE_BALANCE"] = balance
    return env


@contextmanager
def running_haproxy(proxies: list[str], balance: str | None = None) -> Iterator[HAProxy]:
    """The shipped haproxy.cfg, as is, with test addresses from the environment.

    `balance="roundrobin"` spreads a single client's connections (a load
    generator has one address; the shipped `source` would pin them to one proxy).
    """
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    listen, stats = free_port(), free_port()
    env = haproxy_env(listen, stats, proxies, balance)
    check = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        ["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        await_ready(process, lambda: accepts(listen, timeout=0.2), "haproxy", timeout=10,
                    output=lambda: process.stderr.read().decode(errors="replace") if process.poll() is not None else "")
        yield HAProxy(("127.0.0.1", listen), ("127.0.0.1", stats), process)
    finally:
        stop_process(process)
