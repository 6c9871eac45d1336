"""A real redis-server (Debian package) for tests: loopback, free port, no persistence.

    from support.redis_server import redis_server   # the pytest fixture

    def test_x(redis_server):
        store = open_store(redis_server.url(timeout=0.05))
        redis_server.kill(); ...; redis_server.start()   # same port again

The server is started by the test, never as a system service, and stopped
by its PID.  `pause()` (SIGSTOP) makes it accept connections but never
answer, which is how a hung server looks to a client: the hard case for
timeouts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from support.processes import ServerProcess, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer(ServerProcess):
    dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def url(self, db: int = 0, **params: object) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"redis://127.0.0.1:{self.port}/{db}{query}"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or start again, on the same port) and wait until it answers PING."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "yes",
                "--logfile", str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._await_ready(self.ping, f"redis-server on port {self.port}", timeout)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=2)


def store_spec(request: pytest.FixtureRequest, sqlite_file: Path) -> str:
    """The state spec for a fixture parametrized over "memory", "sqlite" (at `sqlite_file`)
    and "redis" (the redis_server fixture's)."""
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:{sqlite_file}"
    return request.getfixturevalue("redis_server").url(timeout=1)


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer(directory).running() as server:
        yield server


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
