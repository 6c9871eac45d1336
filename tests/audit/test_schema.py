"""One audit-record schema: what the proxy and the writer write, the tools select and the docs describe."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from accessgate.audit import schema
from accessgate.audit.reader import AuditReader
from accessgate.audit.sealing import keygen
from accessgate.audit.writer import AuditWriter
from accessgate.decision import Decision, Identity
from accessgate.policy.model import Level
from accessgate.proxy.records import FlowState, access_record

DOCS = Path(__file__).resolve().parents[2] / "docs"
T0 = datetime(2026, 11, 23, 12, 0, 0, 250000, tzinfo=timezone.utc)


def proxy_record(request_id: str, error: str | None = None, operation: str | None = None, **changes) -> dict:
    """An access record as the proxy makes it."""
    decision = Decision(decision="allow", reason="allowed", rule="roles.everyone.access.facebook", site="facebook",
                        level=Level.FULL, role="everyone", roles=("everyone", "sales"), host="www.facebook.com")
    st = FlowState(request_id=request_id, started=0.0, ts=T0, decision=decision, policy="ab12cd34ef56",
                   identity=Identity(user="alice", client_ip=ipaddress.ip_address("10.0.0.7")), enforced=True,
                   method="GET", scheme="https", host="www.facebook.com", path="/groups/feed/",
                   operation=operation)  # fmt: skip
    return access_record(st, decision, True, 200, 120, 5120, 0.0035, error) | changes


def test_the_proxy_builds_an_access_record_in_the_schemas_order():
    assert tuple(proxy_record("r1", error="killed", operation="CometNewsFeedPaginationQuery")) == schema.ACCESS_ORDER
    # `operation` and `error` only when there is one
    assert tuple(proxy_record("r2")) == tuple(k for k in schema.ACCESS_ORDER if k not in schema.SOMETIMES)
    assert tuple(proxy_record("r3", operation="x")) == schema.ACCESS_ORDER[:-1]


def test_the_record_of_a_tls_connection_not_decrypted_ends_with_its_names_and_why():
    decision = Decision(decision="allow", reason="unlisted", rule="unlisted", roles=("everyone",), host="example.org")
    st = FlowState(request_id="t1", started=0.0, ts=T0, decision=decision, policy="ab12cd34ef56",
                   identity=Identity(user="alice"), enforced=True, method="CONNECT", scheme="tls",
                   host="example.org", path="", names=("example.org", "example.org:443"), inspection="unlisted")
    record = access_record(st, decision, True, None, 700, 1400, 2.5, None)
    assert tuple(record) == (tuple(k for k in schema.ACCESS_ORDER if k not in schema.SOMETIMES)
                             + tuple(f.name for f in schema.UNREAD))
    assert (record["names"], record["inspection"]) == (["example.org", "example.org:443"], "unlisted")


def every_kind_of_line(log: Path) -> list[Path]:
    """Every field the writer writes, each in a line of its own kind, by the real writer; returns the files."""
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b'{"event":"access","ts":"2026-11-23T11:59:0')  # a torn line: log_resumed
    old = log.with_name(log.name + ".9.gz")
    old.write_bytes(b"")
    os.utime(old, (0, 0))  # for retention_deleted
    full = log.with_name("full.jsonl")
    full.symlink_to("/dev/full")  # for records_dropped
    writer = AuditWriter(log, flush_interval=60)
    writer.write(proxy_record("r1"))
    writer.write(proxy_record("r2", error="killed"))
    writer.write(proxy_record("r2b", operation="CometNewsFeedPaginationQuery"))
    writer.write(proxy_record("r3", path="/\udcff"))  # escaped
    writer.write(proxy_record("r4", path="/" + "a" * schema.MAX_RECORD_BYTES))  # truncated
    writer.write(proxy_record("r5", ts="yesterday-ish"))  # ts_given
    writer.write(proxy_record("r7", method="CONNECT", scheme="tls", path="", names=["example.org", "example.org"],
                              inspection="unlisted"))  # a TLS connection passed through unread
    writer.write({"event": "policy_loaded", "ts": T0, "policy": "ab12", "sources": ["policy.yaml"]})
    writer.write({"event": "policy_rejected", "ts": T0, "file": "policy.yaml", "problems": ["policy.yaml:1:1: x"],
                  "policy": "ab12"})  # fmt: skip
    writer.write({"event": "flow_closed", "ts": T0, "request_id": "r1", "user": "alice", "site": "facebook",
                  "reason": "outside-window", "rule": "roles.everyone.access.facebook", "policy": "ab12"})  # fmt: skip
    writer.write({"event": "warn_continued", "ts": T0, "request_id": "r7", "user": "zoe", "client_ip": "10.0.0.7",
                  "host": "www.tiktok.com", "site": "tiktok", "role": "everyone",
                  "rule": "roles.everyone.access.tiktok+continued", "justification": "answering a customer",
                  "until": T0, "policy": "ab12"})  # fmt: skip
    writer.write({"event": "warn_refused", "ts": T0, "request_id": "r8", "user": "zoe", "client_ip": "10.0.0.7",
                  "host": "www.tiktok.com", "site": "tiktok", "note": "the form was sent already",
                  "policy": "ab12"})  # fmt: skip
    writer.prune_rotated(1, T0)
    writer.close()
    dropping = AuditWriter(full, flush_interval=60, max_backlog=1)
    dropping.write(proxy_record("lost-1"))
    dropping.write(proxy_record("lost-2"))
    dropping.flush()
    full.unlink()
    dropping.write(proxy_record("r6"))
    dropping.close()
    return [log, full, *sealed_lines(log.parent)]


def sealed_lines(directory: Path) -> list[Path]:
    """A log sealed in epochs of a second: started, an epoch sealed, a stop over epochs; one resumed."""
    seal_key = directory / "seal.key"
    t0 = time.time() // 1
    keygen(seal_key, directory / "verify.key", interval=1, now=t0)

    def until(second: float) -> None:
        time.sleep(max(0.0, t0 + second - time.time()))

    sealed, resumed = directory / "sealed.jsonl", directory / "resumed.jsonl"
    writer = AuditWriter(sealed, seal_key=seal_key, flush_interval=0.05)  # sealing_started
    writer.write(proxy_record("s1"))
    until(1.3)  # epoch 0 ends: sealed
    writer.write(proxy_record("s2"))
    writer.close()
    until(3.3)  # the restart closes epoch 1 (sealed) and skips epoch 2 (epochs_skipped)
    writer = AuditWriter(sealed, seal_key=seal_key)
    writer.write(proxy_record("s3"))
    writer.close()
    writer = AuditWriter(resumed, seal_key=seal_key)  # the key goes on in another file: sealing_resumed
    writer.write(proxy_record("s4"))
    writer.close()
    return [sealed, resumed]


def records_in(path: Path) -> list[dict]:
    """The records of a file, without its torn line."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory) -> list[Path]:
    return every_kind_of_line(tmp_path_factory.mktemp("every-kind") / "logs" / "audit.jsonl")


def test_every_field_the_writer_writes_is_a_column_the_tools_select(cli, every_kind):
    written = [record for path in every_kind for record in records_in(path)]
    assert {r["event"] for r in written} == {e.name for e in schema.EVENTS}, "a line of every kind"
    assert set().union(*written) == set(schema.COLUMNS), "every field of the schema, and no other"
    status, out, err = cli("audit", "query", *every_kind, "--event", "all", "--format", "jsonl")
    assert status == 0, err
    def key(r: dict) -> tuple:  # each file's chain starts at seq 1
        return r["seq"], r["prev"], r["event"], r.get("request_id")

    selected = {key(r): r for r in map(json.loads, out.splitlines())}
    assert len(selected) == len(written)
    for record in written:
        row = selected[key(record)]
        assert {key: row[key] for key in record} == record, "each field reads back as it was written"


def test_the_tools_view_has_a_column_for_each_field_in_line_order(every_kind):
    with AuditReader([str(path) for path in every_kind]) as reader:
        assert reader.sql("SELECT * FROM audit LIMIT 0").columns == list(schema.COLUMNS)


def test_the_docs_tables_are_the_schemas():
    page = (DOCS / "audit-log.md").read_text()
    assert schema.field_table() in page, "run `python -m accessgate.audit.schema` and paste its tables"
    assert schema.event_table() in page
    listed = (DOCS / "auditing.md").read_text().split("in this order:")[1].split(". `escaped`")[0]
    named = [name for names in re.findall(r"`([^`]+)`", listed) for name in re.split(r",\s*", names)]
    assert named == list(schema.COLUMNS), "docs/auditing.md names the view's columns in order"


# name -> (rotated() of it, whether retention takes it as a rotation of audit.jsonl)
NAMES = {
    "audit.jsonl": (None, False),
    "audit.jsonl.1": (("audit.jsonl", 1, None), True),
    "audit.jsonl.2.gz": (("audit.jsonl", 2, None), True),
    "audit.jsonl.3.zst": (("audit.jsonl", 3, None), True),
    "audit.jsonl-20261122": (("audit.jsonl", None, "20261122"), True),
    "audit.jsonl-2026-11-22.gz": (("audit.jsonl", None, "2026-11-22"), True),
    "audit.jsonl-20261122-1700000000.xz": (("audit.jsonl", None, "20261122-1700000000"), True),
    "audit.jsonl-20261122.1": (("audit.jsonl-20261122", 1, None), False),
    "audit.jsonl-1": (None, False),
    "other.jsonl.1": (("other.jsonl", 1, None), False),
    "audit.jsonl.old": (None, False),
    "audit.jsonl.1.tmp": (None, False),
    "audit-2026-11-22.jsonl": (None, False),
    "audit[1].jsonl": (None, False),
}  # fmt: skip


@pytest.mark.parametrize("name, expected", NAMES.items(), ids=NAMES.keys())
def test_one_grammar_of_rotated_names_for_the_writer_and_the_tools(name, expected):
    parsed, retained = expected
    assert schema.rotated(name) == (schema.Rotated(*parsed) if parsed else None)
    assert schema.is_rotation_of(name, "audit.jsonl") == retained


def test_files_sort_in_the_order_they_were_written():
    names = ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.3.gz", "audit.jsonl.2.gz", "audit.jsonl-20261120.gz",
             "audit.jsonl-20261121"]  # fmt: skip
    ordered = sorted((Path("/logs") / n for n in names), key=schema.chain_order)
    assert [p.name for p in ordered] == [
        "audit.jsonl-20261120.gz", "audit.jsonl-20261121", "audit.jsonl.3.gz", "audit.jsonl.2.gz", "audit.jsonl.1",
        "audit.jsonl",
    ]  # fmt: skip


def test_the_writers_bound_is_below_what_the_tools_read():
    assert schema.MAX_RECORD_BYTES == 1 << 20 < schema.MAX_LINE_BYTES  # the bound docs/audit-log.md states
