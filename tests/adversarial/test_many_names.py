"""No request may stall the others, however many names it gives for its host (issue 14, hole 7).

A request with 40,000 Host headers costs mitmproxy the time to read that
many header lines.  It must cost no more than that: accessgate decides at
most eight names and drops the surplus headers, so neither its own hooks
nor mitmproxy's addons after it (which join every Host value and
IDNA-encode the whole) hold the event loop while other clients wait.  The
yardstick is the same request with as many harmless headers instead.
"""

from __future__ import annotations

import threading
import time

import pytest

from cases import AUTH, FREE
from support.wire import plain, request

pytestmark = pytest.mark.e2e

N = 40_000
FULLWIDTH = "\uff57\uff57\uff57\uff0e\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff54\uff45\uff53\uff54"  # www.example.test


def _timed(proxy, headers) -> tuple[float, int]:
    data = request("GET", f"http://{FREE}/", headers, auth=AUTH)
    start = time.perf_counter()
    reply = plain(proxy, data, timeout=60)
    return time.perf_counter() - start, reply.status


def _while_another_client_waits(proxy, headers) -> tuple[float, int, float]:
    """(time the big request took, its status, the longest a small request took meanwhile)."""
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(big=_timed(proxy, headers)))
    worker.start()
    small = request("GET", f"http://{FREE}/small", [("Host", FREE)], auth=AUTH)
    longest = 0.0
    deadline = time.monotonic() + 60
    while worker.is_alive() and time.monotonic() < deadline:
        start = time.perf_counter()
        plain(proxy, small, timeout=60)
        longest = max(longest, time.perf_counter() - start)
    worker.join(60)
    elapsed, status = result["big"]
    return elapsed, status, longest


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(lambda i: FULLWIDTH, id="one-fullwidth-name-repeated"),
        pytest.param(lambda i: f"h{i}\uff0eexample\uff0etest", id="every-name-different"),
    ],
)
def test_many_host_headers_hold_no_other_client(proxies, origin, names):
    proxy = proxies("plain")
    hosts = [("Host", names(i)) for i in range(N)]
    padding = [("Host", FREE)] + [("X-Pad", value) for _, value in hosts[1:]]
    yardstick, _ = _timed(proxy, padding)  # the same bytes, one Host: what reading them costs
    origin.clear()

    elapsed, status, longest = _while_another_client_waits(proxy, hosts)

    bound = 3 * yardstick + 0.5
    assert elapsed <= bound, f"{N} Host headers took {elapsed:.2f} s; {N} other headers {yardstick:.2f} s"
    assert longest <= bound, f"another client waited {longest:.2f} s (the same bytes as padding: {yardstick:.2f} s)"
    assert status == 403
    assert all(seen.path == "/small" for seen in origin.requests)
