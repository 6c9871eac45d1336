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
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


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


def write_htpasswd(path: Path, users: list[str], password: str = PASSWORD) -> Path:
    """An Apache htpasswd file (SHA-256 crypt) for mitmproxy's `proxyauth=@PATH`."""
    from passlib.apache import HtpasswdFile

    ht = HtpasswdFile(str(path), new=True, default_scheme="sha256_crypt")
    for user in users:
        ht.set_password(user, password)
    ht.save()
    return path
