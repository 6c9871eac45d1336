"""The load the proxy benchmarks make, and the proxies they make it through.

Servers come from the test harness (tests/support: nginx, mitmdump,
Squid, Redis, HAProxy); this module adds what only benchmarks need:

- `bench_proxy`: `mitmdump -q` with proxyauth and routing to the origin,
  with accessgate as the benchmarks run it (the example policy, audit log,
  metrics endpoint, quota state) or without it (bare);
- `wrk`: wrk through a proxy (wrk-proxy.lua makes it speak like a browser
  to a proxy) and its summary;
- `run_load`: an asyncio client over raw sockets, HTTP/1.1 keep-alive
  through the proxy, absolute-form for plain HTTP, CONNECT + TLS (trusting
  the mitmproxy CA) for HTTPS.  It sends the next request on a connection
  only when the previous answer is complete, and stops at its deadline
  between requests, so "requests sent" and "responses received" are the
  same number: what a soak needs to compare with the audit log.

Everything runs on 127.0.0.1 and is ended by PID.  The proxy is pinned to
one core and everything that makes load (nginx, wrk, the Python client) to
the other (see docs/performance.md, "Method").
"""

from __future__ import annotations

import asyncio
import base64
import json
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
sys.path.insert(0, str(REPO / "tests"))

from support.clients import write_htpasswd  # noqa: E402
from support.processes import cores, cpu_seconds, pin, rss_bytes  # noqa: E402,F401  (for the benchmarks)
from support.proxy import Proxy, make_confdir, start_proxy  # noqa: E402,F401

POLICY = REPO / "policy" / "example.yaml"
LUA = HERE / "wrk-proxy.lua"
PASSWORD = "bench-pw"


def bench_htpasswd(path: Path, users: list[str]) -> Path:
    """{SHA} entries: mitmproxy checks the password on every plain-HTTP
    request, and a slow hash would add the same milliseconds to every
    configuration and hide what accessgate costs."""
    return write_htpasswd(path, users, PASSWORD, scheme="sha1")


def bench_proxy(
    workdir: Path, *, confdir: Path, origin, htpasswd: Path, core: int | None,
    accessgate: bool = True, state: str = "sqlite", options: dict | None = None, source: Path | None = None,
) -> Proxy:
    """`mitmdump -q` with proxyauth, routing every request to `origin`, pinned to `core`;
    with accessgate (example policy, audit log, metrics endpoint, `state` quota store, `options`) or bare.
    `source`: accessgate (and its example policy) from that checkout of another revision."""
    policy = (source / "policy" / "example.yaml") if source is not None else POLICY
    return start_proxy(
        policy=policy if accessgate else None, confdir=confdir, workdir=workdir, origin=origin,
        state="memory:" if state == "memory" else f"sqlite:{workdir / 'state.sqlite'}",
        options={"proxyauth": f"@{htpasswd}", **(options or {})}, accessgate=accessgate, core=core, quiet=True,
        source=source,
    )  # fmt: skip


def engine_build(proxy: Proxy, timeout: float = 10.0) -> str | None:
    """Which engine build (python, compiled) an accessgate proxy logged at its policy_loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in proxy.oplog():
            if record.get("event") == "policy_loaded":
                return record.get("engine")
        time.sleep(0.1)
    return None


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# -- traffic ---------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of a traffic mix, as a user's browser sends it to a proxy."""

    user: str | None  # None: no Proxy-Authorization
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

    def wrk_spec(self) -> str:
        """The request as wrk-proxy.lua takes it: "METHOD URL [Basic TOKEN]"."""
        auth = f" {self.proxy_authorization()}" if self.user is not None else ""
        return f"{self.method} {self.url}{auth}"

    def wire(self) -> bytes:
        """The request's bytes: absolute-form with credentials for HTTP, origin-form inside a tunnel."""
        target = self.path if self.tls else self.url
        lines = [f"{self.method} {target} HTTP/1.1", f"Host: {self.host}", "Accept: */*"]
        if not self.tls and self.user is not None:
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


async def _connect(port: int, call: Call, ca: ssl.SSLContext | None, *, handshake: bool = True):
    """A connection through the proxy for `call`: for HTTPS its CONNECT answered, then TLS unless not `handshake`."""
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
        if handshake:
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


# -- wrk -------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # failed connections, reads, writes, timeouts and answers other than 2xx/3xx


def wrk_command(port: int, calls: list[Call], *, seconds: float, connections: int = 16,
                core: int | None = None) -> list[str]:
    """wrk (one thread) through the proxy at `port`, cycling through `calls` (plain HTTP)."""
    return pin(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s",
         "-s", str(LUA), f"http://127.0.0.1:{port}", "--", *(c.wrk_spec() for c in calls)],
        core,
    )  # fmt: skip


def wrk_result(stdout: str, stderr: str = "") -> WrkRun:
    """What wrk-proxy.lua's JSON summary line says."""
    line = next((l for l in stdout.splitlines() if l.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{stdout}\n{stderr}")
    out = json.loads(line)
    errors = sum(out[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return WrkRun(out["requests"] / (out["duration_us"] / 1e6), out["p50_us"] / 1000, out["p99_us"] / 1000, errors)


def wrk(port: int, calls: list[Call], *, seconds: float, connections: int = 16, core: int | None = None) -> WrkRun:
    """One bounded wrk run through the proxy at `port`."""
    done = subprocess.run(wrk_command(port, calls, seconds=seconds, connections=connections, core=core),
                          capture_output=True, text=True, timeout=seconds + 60)
    return wrk_result(done.stdout, done.stderr)
