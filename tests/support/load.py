"""A bounded load through the proxy with a fault injected half-way, and what it left behind.

`run_load(proxy, count, fault)` sends `count` requests one after another
over keep-alive connections: two of three to an unlisted site (allowed,
they reach the origin) and one of three to facebook.test (blocked).  After
`count // 2` requests it calls `fault()`.  A request that gets no answer
(the proxy stopped, a connection dropped) is counted, never retried, so
that "every answered request has exactly one audit record" can be checked.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from support.clients import PASSWORD

AUTH = "Basic " + base64.b64encode(f"zoe:{PASSWORD}".encode()).decode()
MAX_SECONDS = 60.0  # no load runs longer, whatever happens


@dataclass
class Load:
    statuses: list[int] = field(default_factory=list)  # one per request; 0 = no answer
    request_ids: set[str] = field(default_factory=set)  # of the blocked ones (allowed ones carry none)

    @property
    def answered(self) -> int:
        return sum(1 for s in self.statuses if s)

    def count(self, status: int) -> int:
        return self.statuses.count(status)


def target(i: int) -> tuple[str, int]:
    """(URL, expected status) of request number `i`."""
    if i % 3 == 2:
        return f"http://facebook.test/{i}", 403
    return f"http://example.test/{i}", 200


def run_load(proxy, count: int, fault: Callable[[], None] | None = None, at: int | None = None) -> Load:
    load = Load()
    at = count // 2 if at is None else at
    conn: http.client.HTTPConnection | None = None
    deadline = time.monotonic() + MAX_SECONDS
    for i in range(count):
        if time.monotonic() > deadline:
            raise AssertionError(f"load exceeded {MAX_SECONDS} s after {i} requests")
        if i == at and fault is not None:
            fault()
        url, _ = target(i)
        host = url.split("/")[2]
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("GET", url, headers={"Host": host, "Proxy-Authorization": AUTH})
            response = conn.getresponse()
            response.read()
            load.statuses.append(response.status)
            if rid := response.getheader("x-accessgate-request-id"):
                load.request_ids.add(rid)
        except (OSError, http.client.HTTPException):
            load.statuses.append(0)
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return load


def access_records(*paths: Path) -> list[dict]:
    """Request records ("event": "access") from audit log files, in order."""
    records = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    if record.get("event") == "access":
                        records.append(record)
    return records


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples in Prometheus text, over samples with the given labels."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{re.escape(name)}(?:\{{([^}}]*)\}})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()
