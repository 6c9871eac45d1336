"""Real HTTP clients through the proxy: curl (HTTP/1.1, HTTP/2) and httpx.

`curl()` runs the real curl binary and returns what it saw, including the
time it took, so tests can say "the client got a 403 quickly".
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "s3cret-pw"  # every test user's password in support.proxy htpasswd files


@dataclass(frozen=True)
class Result:
    status: int  # 0 when curl got no HTTP response at all
    headers: dict[str, str]  # lower-case names, last value wins
    body: bytes
    seconds: float
    exit_code: int
    stderr: str
    stdout: str = ""  # what `-w/--write-out` printed

    def json(self):
        return json.loads(self.body)

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-accessgate-reason")


def _last_header_block(raw: str) -> tuple[int, dict[str, str]]:
    """The final response's status and headers (after CONNECT's 200, 100 Continue ...)."""
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip().startswith("HTTP/")]
    if not blocks:
        return 0, {}
    lines = blocks[-1].strip().split("\n")
    return int(lines[0].split()[1]), header_fields(lines[1:])


def header_fields(lines: list[str]) -> dict[str, str]:
    """`Name: value` lines as {lower-case name: value}, the last value of a name winning."""
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def curl(
    proxy,
    url: str,
    *,
    user: str | None = None,
    password: str = PASSWORD,
    method: str | None = None,
    headers: dict[str, str] | list[tuple[str, str]] = (),
    data: bytes | None = None,
    http2: bool = False,
    extra: list[str] = (),
    timeout: float = 30.0,
) -> Result:
    """Send one request with curl through `proxy` (a support.proxy.Proxy)."""
    with tempfile.TemporaryDirectory(prefix="curl-") as tmp:
        head, body, upload = Path(tmp, "head"), Path(tmp, "body"), Path(tmp, "upload")
        args = [
            "curl", "-sS", "--noproxy", "",
            "--max-time", str(timeout),
            "-x", proxy.url,
            "--cacert", str(proxy.ca),
            "-D", str(head), "-o", str(body),
        ]  # fmt: skip
        if user is not None:
            args += ["--proxy-user", f"{user}:{password}"]
        if method:
            args += ["-X", method]
        for name, value in headers.items() if isinstance(headers, dict) else headers:
            args += ["-H", f"{name}: {value}"]
        if data is not None:
            upload.write_bytes(data)
            args += ["--data-binary", f"@{upload}"]
        args += ["--http2"] if http2 else ["--http1.1"]
        args += [*extra, url]
        started = time.monotonic()
        done = subprocess.run(args, capture_output=True, timeout=timeout + 10)
        seconds = time.monotonic() - started
        status, hdrs = _last_header_block(head.read_text(errors="replace") if head.exists() else "")
        return Result(
            status=status,
            headers=hdrs,
            body=body.read_bytes() if body.exists() else b"",
            seconds=seconds,
            exit_code=done.returncode,
            stderr=done.stderr.decode(errors="replace"),
            stdout=done.stdout.decode(errors="replace"),
        )


def httpx_client(proxy, user: str | None = None, password: str = PASSWORD, **kwargs):
    """An httpx.Client through `proxy` that trusts the proxy's CA."""
    import ssl

    import httpx

    auth = f"{user}:{password}@" if user else ""
    context = ssl.create_default_context(cafile=str(proxy.ca))
    return httpx.Client(
        proxy=f"http://{auth}127.0.0.1:{proxy.port}", verify=context, timeout=30, trust_env=False, **kwargs
    )


def write_htpasswd(path: Path, users: list[str], password: str = PASSWORD, scheme: str = "bcrypt") -> Path:
    """An Apache htpasswd file for mitmproxy's `proxyauth=@PATH`, on mitmproxy 11 and 12 alike.

    bcrypt at cost 4 by default: mitmproxy 12 reads only bcrypt and `{SHA}`
    entries, and checks the hash on every plain-HTTP request, so the lowest
    cost keeps the hash from showing in the tests' timings.  `sha1` ({SHA},
    `htpasswd -s`) is cheaper still, for the benchmarks; `apr1` (`htpasswd -m`)
    is for Squid, which reads no bcrypt.  Written with the `bcrypt` package
    and accessgate's own hashes, not passlib, which mitmproxy 12 does not bring.
    """
    import base64
    import hashlib
    import secrets

    import bcrypt

    from accessgate.auth.hashes import apr1

    def entry(pw: bytes) -> str:
        if scheme == "bcrypt":
            return bcrypt.hashpw(pw, bcrypt.gensalt(4)).decode("ascii")
        if scheme == "sha1":
            return "{SHA}" + base64.b64encode(hashlib.sha1(pw).digest()).decode("ascii")
        if scheme == "apr1":
            return apr1(pw, "".join(secrets.choice(_SALT) for _ in range(8)).encode("ascii"))
        raise ValueError(f"unknown htpasswd scheme {scheme!r}: bcrypt, sha1 or apr1")

    path.write_text("".join(f"{user}:{entry(password.encode())}\n" for user in users))
    return path


_SALT = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class TunnelResult:
    connect_status: int  # the proxy's answer to CONNECT
    connect_headers: dict[str, str]
    reply: bytes  # everything received inside the tunnel until it closed

    @property
    def status(self) -> int:
        """Status of the response inside the tunnel (0 when there was none)."""
        if not self.reply.startswith(b"HTTP/"):
            return 0
        return int(self.reply.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        head = self.reply.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def read_head(sock) -> bytes:
    """Bytes from `sock` until the end of a message head (or until the peer closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _connect(sock, connect: str, user: str | None, password: str) -> tuple[int, dict[str, str], bytes]:
    """Send CONNECT on `sock`; (status, lower-case headers, bytes after the head).

    Status 0 when the proxy hung up without a valid answer.
    """
    import base64

    head = f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n"
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        head += f"Proxy-Authorization: Basic {token}\r\n"
    sock.sendall((head + "\r\n").encode())
    status_head, _, rest = read_head(sock).partition(b"\r\n\r\n")
    lines = status_head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    return status, header_fields(lines[1:]), rest


def tunnel(
    proxy,
    connect: str,
    *,
    user: str | None = None,
    password: str = PASSWORD,
    sni: str | None = None,
    send: bytes = b"",
    tls: bool = True,
    timeout: float = 10.0,
) -> TunnelResult:
    """CONNECT to `connect` (HOST:PORT), then speak TLS with `sni` (or raw bytes) inside.

    Lets a test name one host in the CONNECT, another in the SNI and a third
    in the Host header, which no ordinary client does on purpose.
    """
    import socket
    import ssl

    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    try:
        connect_status, connect_headers, rest = _connect(sock, connect, user, password)
        if connect_status != 200:
            return TunnelResult(connect_status, connect_headers, rest)
        conn = sock
        if tls:
            context = ssl.create_default_context(cafile=str(proxy.ca))
            context.check_hostname = False  # the point is to send a name that does not match
            try:
                conn = context.wrap_socket(sock, server_hostname=sni or connect.rsplit(":", 1)[0])
            except (ssl.SSLError, OSError):
                return TunnelResult(connect_status, connect_headers, b"")
        reply = b""
        try:
            if send:
                conn.sendall(send)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except (OSError, ssl.SSLError):
            pass
        return TunnelResult(connect_status, connect_headers, reply)
    finally:
        sock.close()


def get(host: str, path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 GET with `Connection: close`, as bytes for `tunnel(send=...)`."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def h2_get(
    proxy,
    connect: str,
    headers: list[tuple[str, str]],
    *,
    user: str | None = None,
    password: str = PASSWORD,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str]]:
    """One HTTP/2 request with exactly `headers` (pseudo-headers first), through a CONNECT tunnel.

    HTTP/2 lets a client send what curl never would, e.g. two `host`
    headers next to `:authority`; returns (status, response headers).
    """
    import socket
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    try:
        connect_status, _, _ = _connect(sock, connect, user, password)
        if connect_status != 200:
            return connect_status, {}
        context = ssl.create_default_context(cafile=str(proxy.ca))
        context.set_alpn_protocols(["h2"])
        tls = context.wrap_socket(sock, server_hostname=connect.rsplit(":", 1)[0])
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False)
        )
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=True)
        tls.sendall(conn.data_to_send())
        while True:
            data = tls.recv(65536)
            if not data:
                return 0, {}
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    got = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                           for k, v in event.headers}
                    return int(got[":status"]), got
                if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return 0, {}
            tls.sendall(conn.data_to_send())
    finally:
        sock.close()
