"""What every server the tests and benchmarks start needs: a port, a core, a wait, a stop.

    port = free_port()
    process = subprocess.Popen(pin([...], core))
    await_ready(process, lambda: accepts(port), "nginx")
    stop_process(process)                     # by its PID: SIGTERM, then SIGKILL

Everything here acts on one process that the caller started, by its PID.
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
from pathlib import Path
from typing import Callable, Self


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, for servers that do not report a port 0 they bound.

    The race (someone else binds it before the server does) is harmless on a test machine.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def await_ready(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    what: str,
    timeout: float = 15.0,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Return once `ready()` holds; RuntimeError (with `output()`) if the process exits or time runs out.

    On a timeout the process is stopped, so that a failed start leaves nothing running.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{output()[-3000:]}")
        if ready():
            return
        time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f} s:\n{output()[-3000:]}")


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
    """Stop one process we started, by its PID: `sig`, then SIGKILL after `timeout`; its exit status."""
    if process is None:
        return None
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)  # a paused (SIGSTOP) process would not act on `sig`
        os.kill(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


# -- cores, for benchmarks ---------------------------------------------------------


def cores() -> tuple[int, int]:
    """(server core, load core): the measured server gets one core, the load the other."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[-1]


def pin(args: list[str], core: int | None) -> list[str]:
    """`args` run on `core` only (taskset), or as they are when `core` is None."""
    if core is None or not shutil.which("taskset"):
        return args
    return ["taskset", "-c", str(core), *args]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of `pid` so far; with `children`, plus its live child processes'."""
    total = _own_cpu(pid)
    if children:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            try:
                total += _own_cpu(int(child))
            except OSError:
                pass  # it ended in between
    return total


def _own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """Start-wait, stop, kill, pause and resume for a server object that keeps its `process`.

    For dataclasses with a `process: subprocess.Popen | None` field and a
    `log_path` (support.redis_server, support.slapd).  `pause()` (SIGSTOP)
    makes the server accept connections in the kernel but never answer,
    which is how a hung server looks to a client.
    """

    process: subprocess.Popen | None
    log_path: Path
    stop_timeout: float = 10.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @contextmanager
    def running(self) -> Iterator[Self]:
        """Started for the `with` block, stopped after it (also when it fails)."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def _await_ready(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        assert self.process is not None
        try:
            await_ready(self.process, ready, what, timeout, self.log_text)
        except RuntimeError:
            self.process = None
            raise

    def stop(self) -> None:
        stop_process(self.process, timeout=self.stop_timeout)
        self.process = None

    def kill(self) -> None:
        """Die at once (SIGKILL), as on a crash."""
        stop_process(self.process, signal.SIGKILL)
        self.process = None

    def pause(self) -> None:
        """Hang: connections are accepted by the kernel but never answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
