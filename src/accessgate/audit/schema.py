"""The audit record, defined once: its fields, their order and types, the events, the chain, the file names.

Everything else takes it from here:

- the proxy builds an access record in `ACCESS_ORDER`, and the writer puts
  every line's keys in that order (`accessgate.audit.encoding`);
- the auditors' view `audit` has one column per field, typed by `COLUMNS`
  (`accessgate.audit.reader`);
- the field and event tables of docs/audit-log.md are `field_table()` and
  `event_table()`
  (`python -m accessgate.audit.schema` prints them; tests/audit/test_schema.py
  keeps the page and the writer's output in step with this module);
- the writer and the tools read rotated file names by one grammar
  (`rotated()`, `is_rotation_of()`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple


class Field(NamedTuple):
    name: str
    json: str  # its JSON type, as docs/audit-log.md states it
    sql: str  # the DuckDB type of its column in the view `audit`
    meaning: str  # its row in docs/audit-log.md


def _fields(table: str) -> tuple[Field, ...]:
    """Fields from a table of `name | json | sql | meaning` rows."""
    rows = (tuple(cell.strip() for cell in row.split("|", 3)) for row in table.strip().splitlines())
    # Interned: the same objects as the names in code, which makes comparing keys an identity test.
    return tuple(Field(sys.intern(name), *rest) for name, *rest in rows)


# An access record, in the order of its line.
ACCESS = _fields("""
event       | string          | VARCHAR   | `access` for a request; see [events](#events) for the others
ts          | string          | TIMESTAMP | when the request was decided: RFC 3339, UTC, milliseconds, `Z` (`2026-11-23T11:30:02.125Z`)
request_id  | string          | VARCHAR   | the id also sent to the client in `X-Accessgate-Request-Id` and shown on the block page
user        | string or null  | VARCHAR   | the user the proxy authenticated; `null` when anonymous; a pseudonym (`u-…`) when [pseudonymization](#pseudonymized-user-names) is on
roles       | list of strings | VARCHAR[] | every role the client had
client_ip   | string          | VARCHAR   | the client's address as the proxy saw it
method      | string          | VARCHAR   | HTTP method (`CONNECT` for a tunnel decided before TLS)
scheme      | string          | VARCHAR   | `http` or `https`; `tls` for a TLS connection passed through (or refused) without decryption, `tcp` for another connection relayed unread
host        | string          | VARCHAR   | the normalized host that decided (lower case, A-label, no port)
path        | string          | VARCHAR   | the path, without the query string unless `accessgate_log_query` is on
site        | string or null  | VARCHAR   | the policy's site; `null` for a host in no site
decision    | string          | VARCHAR   | `allow` or `block`
reason      | string          | VARCHAR   | `allowed`, `unlisted`, `denied`, `read-only`, `outside-window`, `quota-exhausted`, `unauthenticated`, `justification-required`
level       | string or null  | VARCHAR   | the effective level: `full`, `warn`, `read-only`, `deny`; `null` when no grant applied
rule        | string          | VARCHAR   | the policy rule that decided, e.g. `roles.everyone.access.facebook` (with `+continued` when a warn grant allowed after the user gave a reason); `unlisted`, `unauthenticated`, `no-grant`, `invalid-host`, or `internal-error` for a fail-closed block
role        | string or null  | VARCHAR   | the role whose grant decided
status      | integer or null | INTEGER   | the HTTP status the client got (403 for a block page)
bytes_in    | integer         | BIGINT    | body bytes from the client
bytes_out   | integer         | BIGINT    | body bytes to the client
duration_ms | number          | DOUBLE    | from decision to the end of the response
policy      | string          | VARCHAR   | short hash of the policy in force (`accessgate_policy_info{hash}` shows the same)
enforced    | boolean         | BOOLEAN   | `false` in `accessgate_mode=audit`: the decision was logged but not enforced
operation   | string          | VARCHAR   | only for a write decided on what it says it does (a `read_only_allow` rule with an `operation`): the operation it names, e.g. `CometNewsFeedPaginationQuery`, `query Feed` or `mutation CreatePost` for a GraphQL document (names that disagree joined by ` / `); set by the client (see [operations](policy-language.md#operations))
error       | string          | VARCHAR   | only when something went wrong with the flow (e.g. `killed`)
""")
# Fields an access record has only sometimes, in ACCESS order; the writer's
# fast path knows the record with and without each.
SOMETIMES = ("operation", "error")

# What only the record of a TLS connection not decrypted (scheme `tls`) has, after the fields above.
UNREAD = _fields("""
names      | list of strings | VARCHAR[] | only for a TLS connection that was not decrypted: every name it gave (CONNECT target and its `Host`, server address, every SNI name), as sent; `bytes_in`/`bytes_out` are then the connection's bytes each way, `duration_ms` how long it was open
inspection | string          | VARCHAR   | only with `names`: why it was not decrypted: `unlisted` (no site), `full` (full access), `never-inspect`; for a refused one (`decision` `block`) `never-inspect` or `ech` (see docs/inspection.md)
""")

# What the writer adds to any record, after the fields it was given, in this order.
WRITTEN = _fields("""
ts_given  | string          | VARCHAR              | only when the `ts` given was no time (a bug in a caller): that value, as text; `ts` is then the time of writing
escaped   | list of strings | VARCHAR[]            | only when a field held bytes that are not UTF-8: the fields written with escapes (see [text that is not UTF-8](#text-that-is-not-utf-8))
truncated | object          | MAP(VARCHAR, BIGINT) | only when the record was over the size bound: each shortened field and its length before (see [the size bound](#the-size-bound))
seq       | integer         | BIGINT               | position in the chain: 1, 2, 3, … never restarting; see [the chain](#the-chain-seq-and-prev)
prev      | string          | VARCHAR              | sha256 (hex) of the previous line; 64 zeros for the first record ever
epoch     | integer         | BIGINT               | only in a [sealed](#sealed-lines-epoch-and-mac) log: the key epoch that sealed the line
mac       | string          | VARCHAR              | only in a sealed log: the line's seal, 32 hex digits (HMAC-SHA256 of the line up to it, under that epoch's key)
""")

# Fields that only the other events have; EVENTS says what each holds.
OTHER = _fields("""
sources         | list of strings | VARCHAR[] |
file            | string          | VARCHAR   |
problems        | list of strings | VARCHAR[] |
truncated_bytes | integer         | BIGINT    |
count           | integer         | BIGINT    |
since           | string          | TIMESTAMP |
files           | list of strings | VARCHAR[] |
days            | integer         | BIGINT    |
note            | string          | VARCHAR   |
key             | string          | VARCHAR   |
t0              | string          | TIMESTAMP |
interval        | integer         | BIGINT    |
from            | string          | TIMESTAMP |
until           | string          | TIMESTAMP |
through         | integer         | BIGINT    |
justification   | string          | VARCHAR   |
""")

ACCESS_ORDER = tuple(f.name for f in ACCESS)
CHAIN_KEYS = ("seq", "prev")
SEAL_KEYS = ("epoch", "mac")  # after the chain, in a sealed line
ZERO_HASH = "0" * 64  # `prev` of the first record ever
# The chain at the end of a line as the writer writes it; read without parsing the JSON.
CHAIN_TAIL = rb',"seq":(\d+),"prev":"([0-9a-f]{64})"'
# What sealing adds after the chain (accessgate.audit.sealing.line has the exact form).
SEAL_TAIL = rb',"epoch":(\d+),"mac":"([0-9a-f]{32})"'
TS_TEXT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"  # `ts` as the writer writes it

# The longest line the writer writes: far above any request's record.
MAX_RECORD_BYTES = 1 << 20
# The longest line the tools read (DuckDB's maximum_object_size), sixteen times that.
MAX_LINE_BYTES = 16 << 20

ACCESS_EVENT = "access"
POLICY_LOADED = "policy_loaded"
POLICY_REJECTED = "policy_rejected"
FLOW_CLOSED = "flow_closed"
LOG_RESUMED = "log_resumed"
RECORDS_DROPPED = "records_dropped"
RETENTION_DELETED = "retention_deleted"
# The sealer's own records (accessgate.audit.sealing), sealed in a domain of their own.
SEALING_STARTED = "sealing_started"
SEALED = "sealed"
EPOCHS_SKIPPED = "epochs_skipped"
SEALING_RESUMED = "sealing_resumed"
CONTROL_EVENTS = (SEALING_STARTED, SEALED, EPOCHS_SKIPPED, SEALING_RESUMED)
WARN_CONTINUED = "warn_continued"
WARN_REFUSED = "warn_refused"


class Event(NamedTuple):
    name: str
    when: str  # docs/audit-log.md's sentence
    fields: tuple[tuple[str, str], ...]  # besides event and ts: (name, what it holds here, or "")


EVENTS: tuple[Event, ...] = (
    Event(ACCESS_EVENT, "a request was decided (allowed or blocked)", ()),
    Event(POLICY_LOADED, "a valid policy took effect (at start and on every change)",
          (("policy", ""), ("sources", "the files read"))),
    Event(POLICY_REJECTED, "a changed policy file was not valid; the last good one stays",
          (("file", ""), ("problems", "one sentence each, with file:line:column"), ("policy", "the one kept"))),
    Event(FLOW_CLOSED, "an open WebSocket or tunnel was closed: its window ended, its quota ran out or a reload took the access away",
          (("request_id", "of the request that opened it"), ("user", ""), ("site", ""),
           ("reason", "the block's reason, or why a tunnel passed through must now be decrypted (an `inspection` code such as `records`, `all`)"),
           ("rule", ""), ("policy", ""))),
    Event(LOG_RESUMED, "the proxy started on a log whose last line was torn by a crash, or whose last line is not an accessgate record",
          (("truncated_bytes", "length of the torn line, 0 if none"), ("note", ""))),
    Event(RECORDS_DROPPED, "writing works again after records had to be dropped (see [when the disk is full](#when-the-file-cannot-be-written))",
          (("count", ""), ("since", "time of the first loss"), ("note", ""))),
    Event(RETENTION_DELETED, "rotated logs older than `accessgate_audit_retention_days` were deleted",
          (("files", "names"), ("days", ""))),
    Event(SEALING_STARTED, "a [sealing key](#sealed-lines-epoch-and-mac) was used for the first time; sealed in epoch 0",
          (("key", "the key id"), ("t0", "when epoch 0 began"), ("interval", "seconds per epoch"))),
    Event(SEALED, "a key epoch ended (within a second while the proxy runs, or at the next start): its last line",
          (("key", ""), ("from", "the epoch's start"), ("until", "its end"), ("note", "when closed at a restart"))),
    Event(EPOCHS_SKIPPED, "the proxy started after epochs in which it wrote nothing; one record closes them all",
          (("key", ""), ("through", "the last epoch skipped"), ("from", ""), ("until", ""), ("note", ""))),
    Event(SEALING_RESUMED, "the proxy started on a log that does not end with its key's records (a replaced file, or one that lost its end)",
          (("key", ""), ("note", ""))),
    Event(WARN_CONTINUED, "a user gave a reason on a warn page: the site is open to them until `until`",
          (("request_id", "of the form's post"), ("user", ""), ("client_ip", ""), ("host", ""), ("site", ""),
           ("role", ""), ("rule", "the warn grant's, with `+continued`"),
           ("justification", "the reason as given (whitespace runs made one space, at most 500 characters)"),
           ("until", "when the site closes to them again"), ("policy", ""))),
    Event(WARN_REFUSED, "a warn page's form was refused (forged, replayed, expired, from another origin, for another site or user)",
          (("request_id", "of the form's post"), ("user", ""), ("client_ip", ""), ("host", ""), ("site", ""),
           ("note", "why it was refused"), ("policy", ""))),
)  # fmt: skip

FIELDS: tuple[Field, ...] = ACCESS + UNREAD + OTHER + WRITTEN
# The view's columns, in the order of a line: what the proxy writes, other events' fields, the writer's own.
COLUMNS: dict[str, str] = {f.name: f.sql for f in FIELDS}


# -- docs/audit-log.md ----------------------------------------------------------------


def field_table() -> str:
    """docs/audit-log.md's table of an access record's fields."""
    rows = ["| field | type | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {f.json} | {f.meaning} |" for f in ACCESS + UNREAD + WRITTEN]
    return "\n".join(rows) + "\n"


def event_table() -> str:
    """docs/audit-log.md's table of the events."""
    rows = ["| `event` | written when | extra fields |", "|---|---|---|"]
    for event in EVENTS:
        extra = ", ".join(f"`{name}`" + (f" ({note})" if note else "") for name, note in event.fields)
        rows.append(f"| `{event.name}` | {event.when} | {extra or 'the table above'} |")
    return "\n".join(rows) + "\n"


# -- rotated files ------------------------------------------------------------------------
#
# As logrotate names them: NAME.1, NAME.2.gz, NAME-20261122, NAME-2026-11-22.gz,
# NAME-20261122-1700000000 (dateext with a dateformat), compressed or not.

COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z")
_SUFFIX = (
    r"(?:\.(?P<number>\d+)|-(?P<date>\d{4}-?\d\d-?\d\d[\d_T:.-]*?))"
    r"(?P<compression>" + "|".join(map(re.escape, COMPRESSIONS)) + ")?"
)
# NAME.3 is the third of NAME (the longest base); NAME-DATE of the shortest, as dates may hold `-`.
_NUMBERED = re.compile(r"(?P<base>.+)" + _SUFFIX)
_DATED = re.compile(r"(?P<base>.+?)" + _SUFFIX)


class Rotated(NamedTuple):
    base: str  # the live file's name
    number: int | None  # NAME.N: the higher, the older
    date: str | None  # NAME-DATE: the earlier, the older


def rotated(name: str) -> Rotated | None:
    """What a rotated file's name says of it; None for a name that is no rotation."""
    found = _NUMBERED.fullmatch(name)
    if found is None or found.group("number") is None:
        found = _DATED.fullmatch(name)
    if found is None:
        return None
    number = found.group("number")
    return Rotated(found.group("base"), None if number is None else int(number), found.group("date"))


def is_rotation_of(name: str, base: str) -> bool:
    """Whether `name` is what logrotate makes of the file named `base`."""
    found = rotated(name)
    return found is not None and found.base == base


def chain_order(path: Path) -> tuple[str, int, str]:
    """Sort key putting a log's files in the order they were written.

    Numbered rotations are oldest at the highest number (`.3.gz`, `.2`,
    `.1`), dated ones oldest at the earliest date, and the live file last.
    """
    found = rotated(path.name)
    if found is None:
        return (str(path), 2, "")
    base = str(path.parent / found.base)
    if found.number is not None:
        return (base, 1, f"{10**9 - found.number:010d}")
    return (base, 0, found.date or "")


if __name__ == "__main__":
    print(field_table() + "\n" + event_table(), end="")
