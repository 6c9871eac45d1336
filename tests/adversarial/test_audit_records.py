"""Every record a hostile request leaves in the audit log is seen by every auditors' tool.

A method, path or Host with bytes that are not UTF-8 reaches accessgate as
text with lone surrogates (mitmproxy decodes with surrogateescape).  The
requests go through a real mitmdump; then `accessgate audit query`,
`audit sql`, `audit verify` and `accessgate replay` run as an auditor runs
them, as processes, on the proxy's own log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cases import CASES, LI
from support.wire import h2

pytestmark = pytest.mark.e2e

POLICY = os.path.join(os.path.dirname(__file__), "policy.yaml")


def accessgate(*args: str, cache) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACCESSGATE_NO_PROGRESS="1", ACCESSGATE_AUDIT_CACHE=str(cache))
    return subprocess.run(
        [sys.executable, "-m", "accessgate", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def by_id(case_id: str):
    return next(c for c in CASES if c.id == case_id)


# What each request sends, and how its record must read (field, text).
HOSTILE = {
    "method with 0xff (HTTP/1)": (lambda p: by_id("non-utf8-method-audited").send(p), ("method", "P\\xffST")),
    "Host with Latin-1 bytes (HTTP/1)": (lambda p: by_id("non-utf8-host-bytes").send(p), None),
    ":path with 0xff 0xfe (HTTP/2)": (
        lambda p: h2(p, f"{LI}:443", [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", LI.encode()),
                                      (b":path", b"/feed/\xff\xfe\\x")], body=b"x"),
        ("path", "/feed/\\xff\\xfe\\\\x"),
    ),
}  # fmt: skip


def test_records_of_requests_with_undecodable_bytes_are_read_by_every_tool(proxies, origin, tmp_path):
    proxy = proxies("plain")
    ids: dict[str, str] = {}
    for name, (send, _) in HOSTILE.items():
        reply = send(proxy)
        assert reply.status == 403, (name, reply)
        ids[name] = reply.header("x-accessgate-request-id")
    assert origin.wait_for(1, timeout=0.3) == []
    records = proxy.wait_audit(lambda rs: set(ids.values()) <= {r["request_id"] for r in rs}, timeout=10)
    assert set(ids.values()) <= {r["request_id"] for r in records}
    log = proxy.audit_path
    lines = log.read_bytes().splitlines()
    for line in lines:
        line.decode("utf-8")  # every line is valid UTF-8 ...
        assert b"\\ud" not in line.lower(), line  # ... with no lone surrogate written as an escape

    done = accessgate("audit", "query", log, "--decision", "block", "--format", "jsonl", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = {r["request_id"]: r for r in map(json.loads, done.stdout.splitlines())}
    for name, (_, shown) in HOSTILE.items():
        assert ids[name] in seen, f"{name}: `audit query --decision block` does not show the record"
        if shown is not None:
            field, text = shown
            assert seen[ids[name]][field] == text, name
            assert field in seen[ids[name]]["escaped"], name

    done = accessgate("audit", "sql", "SELECT count(*) AS n FROM audit", log, "--format", "csv", cache=tmp_path)
    assert done.stdout.splitlines() == ["n", str(len(lines))], "audit sql counts every line of the log"

    done = accessgate("audit", "verify", log, cache=tmp_path)
    assert done.returncode == 0, done.stdout
    assert f"OK: {len(lines)} records" in done.stdout

    # Replay decides every record again (the invalid Host itself is not in the log, so
    # that request may replay differently: exit 1 is a finding, 2 would be an error).
    done = accessgate("replay", POLICY, log, "--json", cache=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    assert json.loads(done.stdout)["records"] == len(records)
