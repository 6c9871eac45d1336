"""What the proxy benchmarks share: an nginx origin, mitmdump processes, a load client.

Everything runs on 127.0.0.1 and is ended by PID.  The proxy is pinned to one
core and everything that makes load (nginx, wrk, the Python client) to the
other, so that the proxy's core does nothing but proxy (see
../shared/notes/benchmarking.md, "How to measure").

The Python client (`run_load`) is asyncio over raw sockets: HTTP/1.1 keep-alive
through the proxy, absolute-form for plain HTTP, CONNECT + TLS (trusting the
mitmproxy CA) for HTTPS.  It sends the next request on a connection only when
the previous answer is complete, and stops at its deadline between requests,
so "requests sent" and "responses received" are the same number: what a soak
needs to compare with the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ADDON = REPO / "addons" / "accessgate.py"
POLICY = REPO / "policy" / "example.yaml"
ROUTE = HERE / "route_to_origin.py"
NGINX_CONF = HERE / "nginx.conf"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
PASSWORD = "bench-pw"


class Missing(RuntimeError):
    """A tool the benchmark needs is not installed; the message says how to get it."""


def cores() -> tuple[int, int]:
    """(proxy core, load core): the proxy gets one core to itself, the rest share the other."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return available[0], available[0]
    return available[0], available[-1]


def pin(args: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *args] if shutil.which("taskset") else args


def free_port() -> int:
    # nginx and `mitmdump -q` do not report a port 0 they bound, so pick one
    # the kernel considers free and hand it over (the race is harmless here).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
    """Stop one process we started, by its PID; returns its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (to see how busy its core was)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the origin ------------------------------------------------------------------


@dataclass
class Nginx:
    process: subprocess.Popen
    port: int
    prefix: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.process, signal.SIGTERM)


def start_nginx(workdir: Path, core: int) -> Nginx:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise Missing("nginx is not installed: apt-get install nginx-light")
    prefix = workdir / "nginx"
    (prefix / "www").mkdir(parents=True, exist_ok=True)
    (prefix / "www" / "1k.bin").write_bytes(bytes(range(256)) * 4)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.read_text().format(prefix=prefix, port=port))
    log = open(prefix / "stderr.txt", "wb")
    process = subprocess.Popen(
        pin([binary, "-p", str(prefix), "-c", str(conf)], core),
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    wait_listening(port, process, "nginx")
    return Nginx(process, port, prefix)


# -- mitmdump --------------------------------------------------------------------


def write_htpasswd(path: Path, users: list[str]) -> Path:
    """An htpasswd file with {SHA} entries (`htpasswd -s`).

    mitmproxy checks the password on every plain-HTTP request.  A deliberately
    slow hash (bcrypt, sha256_crypt) would cost both configurations the same
    milliseconds and hide accessgate's share, so the benchmark uses a cheap one.
    """
    from passlib.apache import HtpasswdFile

    ht = HtpasswdFile(str(path), new=True, default_scheme="ldap_sha1")
    for user in users:
        ht.set_password(user, PASSWORD)
    ht.save()
    return path


def make_confdir(workdir: Path) -> Path:
    """A mitmproxy confdir whose CA exists before the proxies start."""
    confdir = workdir / "mitm-conf"
    confdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from mitmproxy.certs import CertStore; CertStore.from_store(sys.argv[1], 'mitmproxy', 2048)",
         str(confdir)],
        check=True, timeout=60,
    )  # fmt: skip
    return confdir


@dataclass
class Mitmdump:
    name: str
    process: subprocess.Popen
    port: int
    workdir: Path
    audit_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        return stop(self.process, signal.SIGINT, timeout=60)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.txt")))


def accessgate_options(workdir: Path, state: str = "sqlite") -> dict[str, str]:
    """accessgate as the benchmarks run it: the example policy, an audit log
    and quota state in `workdir`, the metrics endpoint on a free port."""
    return {
        "accessgate_policy": str(POLICY),
        "accessgate_audit_log": str(workdir / "audit.jsonl"),
        "accessgate_metrics": "127.0.0.1:0",
        "accessgate_state": "memory:" if state == "memory" else f"sqlite:{workdir / 'state.sqlite'}",
    }


def start_mitmdump(
    name: str,
    *,
    workdir: Path,
    confdir: Path,
    origin: Nginx,
    htpasswd: Path,
    core: int,
    accessgate: dict[str, str] | None = None,
    scripts: list[Path] = (),
    addon: Path = ADDON,
) -> Mitmdump:
    """`mitmdump -q` with proxyauth and routing to `origin`; with accessgate when `accessgate` has its options."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        str(MITMDUMP), "-q",
        "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={confdir}",
        "--set", "connection_strategy=lazy",
        "--set", f"proxyauth=@{htpasswd}",
    ]  # fmt: skip
    if accessgate is not None:
        args += ["-s", str(addon)]  # accessgate, or a variant of it (benchmarks/parts/)
        for key, value in accessgate.items():
            args += ["--set", f"{key}={value}"]
    for script in scripts:
        args += ["-s", str(script)]
    args += ["-s", str(ROUTE), "--set", f"route_to_origin={origin.address}"]
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        process = subprocess.Popen(
            pin(args, core), cwd=workdir, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    audit = (accessgate or {}).get("accessgate_audit_log")
    proxy = Mitmdump(name, process, port, workdir, Path(audit) if audit else None)
    try:
        wait_listening(port, process, f"mitmdump ({name})")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{proxy.output()}") from None
    return proxy


# -- traffic ---------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of a traffic mix, as a user's browser sends it to a proxy."""

    user: str
    method: str
    url: str  # http://HOST/PATH or https://HOST/PATH
    body: bytes = b""

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def host(self) -> str:
        return self.url.split("/", 3)[2]

    @property
    def path(self) -> str:
        rest = self.url.split("/", 3)
        return "/" + (rest[3] if len(rest) > 3 else "")

    def proxy_authorization(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{PASSWORD}".encode()).decode()

    def wire(self) -> bytes:
        """The request's bytes: absolute-form with credentials for HTTP, origin-form inside a tunnel."""
        target = self.path if self.tls else self.url
        lines = [f"{self.method} {target} HTTP/1.1", f"Host: {self.host}", "Accept: */*"]
        if not self.tls:
            lines.append(f"Proxy-Authorization: {self.proxy_authorization()}")
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Tally:
    """What the client saw: every request answered, by status and accessgate reason."""

    requests: int = 0
    errors: int = 0  # requests that got no complete answer
    connects: int = 0
    connect_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)  # (status, reason or "")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency in milliseconds at quantile q (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, str, bool]:
    """(status, X-Accessgate-Reason, keep-alive) of one response; its body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, reason, keep = 0, "", True
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "x-accessgate-reason":
            reason = value.strip()
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, reason, keep


async def _connect(port: int, call: Call, ca: ssl.SSLContext | None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if call.tls:
        host = call.host if ":" in call.host else f"{call.host}:443"
        writer.write(
            f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n"
            f"Proxy-Authorization: {call.proxy_authorization()}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            writer.close()
            status_line = head.split(b"\r\n", 1)[0]
            raise ConnectionError(f"CONNECT {host} answered {status_line!r}")
        await writer.start_tls(ca, server_hostname=call.host.split(":")[0])
    return reader, writer


async def _connection(
    port: int, calls: list[Call], tally: Tally, deadline: float, ca: ssl.SSLContext | None,
    per_connection: int, budget: list[int],
) -> None:
    """Send `calls` in turn on one keep-alive connection (all to one tunnel when HTTPS) until the deadline."""
    wires = [c.wire() for c in calls]
    i = 0
    writer = None
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            if writer is None:
                try:
                    reader, writer = await _connect(port, calls[0], ca)
                except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                    tally.connect_errors.append(repr(exc))
                    await asyncio.sleep(0.1)
                    continue
                tally.connects += 1
                sent_here = 0
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(wires[i % len(wires)])
            try:
                status, reason, keep = await asyncio.wait_for(_read_response(reader), 30)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, ssl.SSLError):
                tally.errors += 1
                writer.close()
                writer = None
                continue
            tally.latencies.append(time.perf_counter() - t0)
            tally.requests += 1
            tally.outcomes[(status, reason)] += 1
            i += 1
            sent_here += 1
            if not keep or (per_connection and sent_here >= per_connection):
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


def run_load(
    port: int,
    plan: list[list[Call]],
    *,
    seconds: float,
    ca_file: Path | None = None,
    per_connection: int = 0,
    max_requests: int = 10_000_000,
    tally: Tally | None = None,
) -> Tally:
    """Run one connection per entry of `plan` against the proxy at `port`, for `seconds` (bounded)."""
    ca = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    tally = tally if tally is not None else Tally()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        budget = [max_requests]
        started = time.perf_counter()
        await asyncio.gather(
            *(_connection(port, calls, tally, deadline, ca, per_connection, budget) for calls in plan)
        )
        tally.seconds = time.perf_counter() - started

    asyncio.run(main())
    return tally


def run_load_together(
    targets: list[tuple[int, list[list[Call]], Tally]],
    *,
    seconds: float,
    ca_file: Path | None = None,
    per_connection: int = 0,
    max_requests: int = 10_000_000,
) -> None:
    """`run_load` against several proxies at once, from one event loop: the
    same client serves all of them in turn, so none is favoured."""
    ca = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    async def main() -> None:
        deadline = time.monotonic() + seconds
        started = time.perf_counter()
        budgets = [[max_requests] for _ in targets]  # requests per proxy
        await asyncio.gather(
            *(
                _connection(port, calls, tally, deadline, ca, per_connection, budget)
                for (port, plan, tally), budget in zip(targets, budgets)
                for calls in plan
            )
        )
        for _, _, tally in targets:
            tally.seconds = time.perf_counter() - started

    asyncio.run(main())


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
