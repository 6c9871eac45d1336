#!/usr/bin/env python3
"""How long one request with N Host headers holds mitmdump's event loop.

mitmproxy runs every connection on one event loop: while it reads a
request's headers and runs the hooks, no other client gets an answer.  A
request may give many Host headers (mitmproxy sets no limit on their
number); accessgate decides at most eight names and drops the surplus Host
headers (issue 14, hole 7), so beyond the cap a request should cost only
what reading its bytes costs.

For each N this sends one request with N Host headers, each a different
name in fullwidth letters and dots (what UTS-46 must map), through a real mitmdump
with accessgate (the example policy, proxyauth, nginx as origin), and as
its yardstick the same request with one Host header and N - 1 other
headers of the same sizes.  A second client meanwhile sends small requests
one after another on its own connection.  Printed per N, medians over
rounds: the time from the request's last byte to its answer (the loop is
held for about that long), and the longest a small request waited.

    .venv/bin/python benchmarks/host_headers.py [--rounds 3] [--max 100000]

To measure another checkout's engine under the same mitmdump, put its
src/ first: PYTHONPATH=/path/to/checkout/src .venv/bin/python benchmarks/host_headers.py
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxyload as pl  # noqa: E402

USER = "zoe"
HOST = "www.example.org"  # not governed by the example policy: allowed, so it reaches the origin


def _auth() -> str:
    import base64

    return "Basic " + base64.b64encode(f"{USER}:{pl.PASSWORD}".encode()).decode()


def _fullwidth(name: str) -> str:
    """`name` in fullwidth letters, digits and full stops: one host to UTS-46, heavy work to IDNA."""
    return "".join(chr(ord(c) + 0xFEE0) for c in name)


def big_request(n: int, hosts: bool) -> bytes:
    """GET with n Host headers, or with one Host header and n - 1 X-Pad headers of the same sizes."""
    lines = [f"GET http://{HOST}/1k.bin HTTP/1.1", f"Proxy-Authorization: {_auth()}", f"Host: {HOST}"]
    for i in range(1, n):
        value = _fullwidth(f"h{i}.example.org")
        lines.append(f"Host: {value}" if hosts else f"X-Pad: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _read_response(sock: socket.socket) -> bytes:
    """One response on a keep-alive connection (Content-Length bodies only: nginx and accessgate send them)."""
    data = _read_head(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


def one(port: int, data: bytes) -> tuple[float, int, float]:
    """(seconds from the last byte to the answer, its status, the longest a small request waited meanwhile)."""
    small = f"GET http://{HOST}/1k.bin HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: {_auth()}\r\n\r\n".encode()
    waits: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            while not done.is_set():
                start = time.perf_counter()
                sock.sendall(small)
                _read_response(sock)
                waits.append(time.perf_counter() - start)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.05)  # the probe is under way
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(data)
        sent = time.perf_counter()
        head = _read_head(sock)
        elapsed = time.perf_counter() - sent
    done.set()
    prober.join(120)
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return elapsed, status, max(waits, default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max", type=int, default=100_000, help="the largest N (default 100,000)")
    args = parser.parse_args()
    sizes = [n for n in (1, 2, 8, 9, 10, 100, 1_000, 10_000, 20_000, 50_000, 100_000) if n <= args.max]

    proxy_core, load_core = pl.cores()
    workdir = pl.tmpdir("accessgate-host-headers-")
    nginx = pl.start_nginx(workdir, load_core)
    htpasswd = pl.write_htpasswd(workdir / "htpasswd", [USER])
    proxy = None
    try:
        proxy = pl.start_mitmdump(
            "accessgate", workdir=workdir / "accessgate", confdir=pl.make_confdir(workdir), origin=nginx,
            htpasswd=htpasswd, core=proxy_core, accessgate=pl.accessgate_options(workdir / "accessgate", "memory"),
        )  # fmt: skip
        import accessgate.decision.rules

        print(f"mitmdump with accessgate (engine from {Path(accessgate.decision.rules.__file__).parent}), "
              f"the example policy, proxyauth; nginx origin; medians of {args.rounds} rounds")
        print(f"{'N':>8} {'KiB':>7} | {'N Host headers':>26} | {'1 Host + N-1 other headers':>26}")
        print(f"{'':>8} {'':>7} | {'answered':>9} {'other wait':>11} {'':>4} | {'answered':>9} {'other wait':>11} {'':>4}")
        for n in sizes:
            cells = []
            for hosts in (True, False):
                data = big_request(n, hosts)
                runs = [one(proxy.port, data) for _ in range(args.rounds)]
                statuses = sorted({status for _, status, _ in runs})
                cells.append(f"{statistics.median(r[0] for r in runs):8.3f}s "
                             f"{statistics.median(r[2] for r in runs):10.3f}s "
                             f"{'/'.join(map(str, statuses)):>4}")
            print(f"{n:>8,} {len(big_request(n, True)) / 1024:7.0f} | {cells[0]} | {cells[1]}", flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
