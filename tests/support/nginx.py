"""nginx (Debian nginx-light) as a fast origin: one process, no access log, 1 KiB for every path.

    origin = start_nginx(workdir, core=load_core)
    start_proxy(..., origin=origin)           # origin.address is HOST:PORT
    origin.stop()                             # by its PID

Python's http.server (support.origin) saturates before mitmproxy does, so
whatever measures a proxy's throughput uses this origin instead.  Every
path answers the same 1 KiB file, and POST a short "posted" (a static file
would refuse writes with 405, which no real site does).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.processes import accepts, await_ready, free_port, pin, stop_process

CONF = Path(__file__).resolve().parent / "nginx.conf"
FILE = "1k.bin"


class Missing(RuntimeError):
    """A tool is not installed; the message says how to get it."""


@dataclass
class Nginx:
    process: subprocess.Popen
    port: int
    prefix: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def start_nginx(workdir: Path, core: int | None = None) -> Nginx:
    """nginx in the foreground with its files under `workdir`/nginx, on a free port (pinned to `core`)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise Missing("nginx is not installed: apt-get install nginx-light")
    prefix = workdir / "nginx"
    (prefix / "www").mkdir(parents=True, exist_ok=True)
    (prefix / "www" / FILE).write_bytes(bytes(range(256)) * 4)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(CONF.read_text().format(prefix=prefix, port=port))
    with open(prefix / "stderr.txt", "wb") as log:
        process = subprocess.Popen(
            pin([binary, "-p", str(prefix), "-c", str(conf)], core),
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    await_ready(process, lambda: accepts(port), f"nginx on port {port}",
                output=lambda: (prefix / "stderr.txt").read_text(errors="replace"))
    return Nginx(process, port, prefix)
