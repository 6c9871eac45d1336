"""Start a real `mitmdump` with the accessgate addon, on 127.0.0.1 port 0.

    proxy = start_proxy(policy=path, origin=origin, confdir=confdir)
    curl(proxy, "http://facebook.test/", user="alice")
    proxy.stop()                      # SIGINT, by PID; returns the exit status
    proxy.audit_records()             # the audit log, parsed

Every test proxy loads `support/route_to_origin.py` after accessgate, so that
whatever accessgate lets through goes to the local origin and nowhere else,
and runs with `connection_strategy=lazy`, so that a CONNECT alone opens no
upstream connection.  The mitmproxy CA lives in `confdir` (make one per
session with `make_confdir`; mitmdump creates the CA there on first start).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.processes import accepts, free_port, pin, stop_process

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addons" / "accessgate.py"
ROUTE = Path(__file__).resolve().parent / "route_to_origin.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"

_LISTENING = re.compile(r"proxy listening at \*?\[?([0-9a-fA-F.:]+)\]?:(\d+)")


class ProxyFailed(RuntimeError):
    """mitmdump exited or never became ready; the message carries its output."""


@dataclass
class Proxy:
    process: subprocess.Popen
    port: int
    confdir: Path
    workdir: Path
    audit_path: Path | None
    metrics_port: int | None
    stdout_path: Path
    stderr_path: Path
    policy: Path | None = None
    _stopped: int | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def oplog(self) -> list[dict]:
        """The operational log: accessgate's JSON lines on stderr."""
        records = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    def audit_records(self, event: str | None = "access") -> list[dict]:
        if self.audit_path is None or not self.audit_path.exists():
            return []
        records = [json.loads(l) for l in self.audit_path.read_text().splitlines() if l.strip()]
        return [r for r in records if event is None or r.get("event") == event]

    def wait_audit(self, predicate, timeout: float = 5.0, event: str | None = "access") -> list[dict]:
        """Audit records once `predicate(records)` holds (the log flushes every second)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.audit_records(event)
            if predicate(records) or time.monotonic() > deadline:
                return records
            time.sleep(0.1)

    def metrics(self) -> str:
        assert self.metrics_port is not None, "start the proxy with metrics=True"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Stop mitmdump by its PID; returns its exit status."""
        if self._stopped is None:
            self._stopped = stop_process(self.process, sig, timeout)
        return self._stopped


def make_confdir(base: Path | None = None) -> Path:
    """A mitmproxy confdir with a CA made once (mitmdump creates it on first use)."""
    confdir = Path(tempfile.mkdtemp(prefix="mitm-conf-", dir=base))
    # Importing mitmproxy's cert store creates the CA files exactly as mitmdump would.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from mitmproxy.certs import CertStore; "
            "CertStore.from_store(sys.argv[1], 'mitmproxy', 2048)",
            str(confdir),
        ],
        check=True,
        timeout=60,
    )
    assert (confdir / "mitmproxy-ca-cert.pem").exists()
    return confdir


def launch(args: list[str], *, cwd: Path, env: dict | None = None) -> tuple[subprocess.Popen, Path, Path]:
    """Start a process with its output in files (a full pipe would block it)."""
    stdout_path = cwd / f"out-{time.monotonic_ns()}.txt"
    stderr_path = stdout_path.with_name(stdout_path.name.replace("out-", "err-"))
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=full_env
        )
    return process, stdout_path, stderr_path


def wait_ready(
    process: subprocess.Popen,
    stdout_path: Path,
    stderr_path: Path,
    *,
    metrics: bool,
    timeout: float = 30.0,
    port: int | None = None,
) -> tuple[int, int | None]:
    """(proxy port, metrics port) once mitmdump listens; ProxyFailed if it exits first.

    With `port`, mitmdump was told where to listen (as `-q` needs): it is
    ready once that port accepts connections.
    """
    deadline = time.monotonic() + timeout
    expected, port, metrics_port = port, None, None
    while time.monotonic() < deadline:
        text = stdout_path.read_text(errors="replace") + stderr_path.read_text(errors="replace")
        if expected is not None and port is None and accepts(expected):
            port = expected
        elif expected is None and port is None and (m := _LISTENING.search(text)):
            port = int(m.group(2))
        if metrics and metrics_port is None:
            for line in stderr_path.read_text(errors="replace").splitlines():
                if '"metrics_listening"' in line:
                    metrics_port = int(json.loads(line)["port"])
        if port is not None and (metrics_port is not None or not metrics):
            return port, metrics_port
        if process.poll() is not None:
            raise ProxyFailed(f"mitmdump exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    stop_process(process, signal.SIGKILL)
    raise ProxyFailed(
        "mitmdump did not become ready in time:\n"
        + stdout_path.read_text(errors="replace")
        + stderr_path.read_text(errors="replace")
    )


# Set by tests/decision/test_compiled.py when it runs tests on the compiled
# build: every proxy started must then decide with the compiled engine.
EXPECT_COMPILED = "ACCESSGATE_EXPECT_COMPILED"


def _check_compiled(stderr_path: Path) -> None:
    for line in stderr_path.read_text(errors="replace").splitlines():
        if '"policy_loaded"' in line:
            engine = json.loads(line).get("engine")
            if engine != "compiled":
                raise ProxyFailed(f"{EXPECT_COMPILED}=1, but this proxy's engine is {engine!r}")
            return
    raise ProxyFailed(f"{EXPECT_COMPILED}=1, but the proxy logged no policy_loaded to tell its engine")


def start_proxy(
    *,
    policy: Path | str | None,
    confdir: Path,
    workdir: Path,
    origin=None,
    metrics: bool = True,
    state: str = "memory:",
    options: dict[str, object] | None = None,
    scripts: list[Path | str] = (),
    audit: bool = True,
    accessgate: bool = True,
    core: int | None = None,
    quiet: bool = False,
    mitmdump: Path = MITMDUMP,
    source: Path | None = None,
) -> Proxy:
    """Start mitmdump + accessgate (+ routing to `origin`) and wait until it listens.

    `accessgate=False` starts mitmdump without it (a benchmark's bare proxy;
    `policy`, `state`, `metrics` and `audit` then do not apply).  `core` pins
    the process to one CPU core; `quiet` runs `mitmdump -q` (no line per
    flow or connection) on a port picked here, since it then does not say
    which one it bound.  `mitmdump` is this environment's unless another
    virtual environment's is named (tests/e2e/test_mitmproxy_lines.py).
    `source`, a checkout of another revision, runs its
    addon script and package instead of this one's (a benchmark's baseline).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port() if quiet else 0
    args = [
        str(mitmdump), *(["-q"] if quiet else []),
        "--listen-host", "127.0.0.1",
        "--listen-port", str(port),
        "--set", f"confdir={confdir}",
    ]  # fmt: skip
    if "connection_strategy" not in (options or {}):
        args += ["--set", "connection_strategy=lazy"]
    settings: dict[str, object] = {}
    audit_path = workdir / "audit.jsonl" if audit and accessgate else None
    if accessgate:
        args += ["-s", str(source / "addons" / "accessgate.py" if source is not None else ADDON)]
        settings.update(
            accessgate_state=state,
            accessgate_audit_log=str(audit_path or ""),
            accessgate_metrics="127.0.0.1:0" if metrics else "",
        )
        if policy is not None:
            settings["accessgate_policy"] = str(policy)
    for script in scripts:
        args += ["-s", str(script)]
    if origin is not None:
        args += ["-s", str(ROUTE), "--set", f"route_to_origin={origin.address}"]
        if accessgate and ((source or REPO) / "src/accessgate/proxy/upstream.py").exists():
            # The origin lives on this host, which accessgate otherwise never connects to
            # (a baseline revision from before that guard has no such option).
            settings["accessgate_upstream_allow"] = [origin.address.rpartition(":")[0]]
    settings.update(options or {})
    args += _set_options(settings)
    metrics = metrics and accessgate
    env = None
    if source is not None:  # its package first on the path, before the installed one
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(source / "src"), os.environ.get("PYTHONPATH")]))}
    process, out, err = launch(pin(args, core), cwd=workdir, env=env)
    try:
        port, metrics_port = wait_ready(process, out, err, metrics=metrics, port=port or None)
        if os.environ.get(EXPECT_COMPILED) == "1" and accessgate and policy is not None:
            _check_compiled(err)
    except ProxyFailed:
        stop_process(process, signal.SIGKILL)
        raise
    return Proxy(process, port, confdir, workdir, audit_path, metrics_port, out, err, Path(policy) if policy else None)


def _set_options(settings: dict[str, object]) -> list[str]:
    """`--set NAME=VALUE` arguments; a list value is set once per item (mitmproxy's sequence options)."""
    args: list[str] = []
    for name, value in settings.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        for item in value if isinstance(value, (list, tuple)) else [value]:
            args += ["--set", f"{name}={item}"]
    return args
