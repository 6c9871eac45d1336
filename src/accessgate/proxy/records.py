"""What accessgate keeps about a request until it is audited (FlowState), and its access record.

`access_record` is the one place where the proxy puts an access record's
fields together (contract section 5); the audit writer calls it on its own
thread, with what `FlowState` held when the request ended.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mitmproxy import http

from accessgate.decision import Decision, Identity, Request
from accessgate.policy.model import Policy
from accessgate.proxy.flows import path_without_query

META = "accessgate"  # the key of a flow's FlowState in flow.metadata


@dataclass(slots=True)
class FlowState:
    """What accessgate remembers about one flow until it is audited.

    Mutable on purpose: bytes are counted as they stream by and `logged`
    makes sure each request is audited exactly once.
    """

    request_id: str
    started: float  # perf_counter at requestheaders
    ts: datetime  # when it was decided
    decision: Decision
    identity: Identity
    enforced: bool
    policy: str  # short digest of the policy that decided
    method: str
    scheme: str
    host: str
    path: str
    blocked_here: bool = False  # accessgate answered it (no response from a site)
    logged: bool = False
    # Body bytes counted while mitmproxy streams them (it keeps no copy then).
    streamed_in: int | None = None  # from the client: the request body
    streamed_out: int | None = None  # to the client: the response body
    # A TLS connection passed through (or refused) unread: every name it gave, and why it was not decrypted.
    names: tuple[str, ...] = ()
    inspection: str | None = None
    # Decided on what it says it does (proxy/operations.py): the operation it
    # names, for the record; the request with its content, for re-decisions;
    # and whether its decision waits for its body (the `request` hook).
    operation: str | None = None
    said: Request | None = None
    awaiting: bool = False
    # While it waits: since when (time.monotonic), and the timer that decides
    # it a write once the body is BODY_WAIT late (asyncio.TimerHandle).
    waiting_since: float = 0.0
    body_timer: Any = None


def flow_state(
    flow: http.HTTPFlow,
    decision: Decision,
    identity: Identity,
    now: datetime,
    started: float,
    policy: Policy | None,
    enforced: bool,
    log_query: bool,
    request: Request | None = None,
) -> FlowState:
    """A new FlowState for `flow`, kept in its metadata; `request`, when given, is the
    engine's view of the flow (read from it already: mitmproxy decodes on every access)."""
    rq = flow.request
    if request is not None and not log_query:
        method, scheme, path = request.method, request.scheme, request.path
    else:
        method, scheme = rq.method, rq.scheme
        path = rq.path if log_query else path_without_query(rq.path)
    st = FlowState(
        new_request_id(),
        started,
        now,
        decision,
        identity,
        enforced,
        policy.short_digest if policy is not None else "",
        method,
        scheme,
        decision.host or rq.data.host,
        path,
    )
    flow.metadata[META] = st
    return st


def connection_state(gate: Any, decision: Decision, identity: Identity, method: str, scheme: str,
                     hosts: tuple[str, ...] | list[str], **more: Any) -> FlowState:
    """A new FlowState for a connection decided before any request of it (a tunnel, a TLS
    hello), stamped now, under `gate`'s policy and mode; its host the decided one, else the first of `hosts`."""
    policy = gate.policy
    return FlowState(
        request_id=new_request_id(),
        started=time.perf_counter(),
        ts=datetime.now(timezone.utc),
        decision=decision,
        identity=identity,
        enforced=gate.enforcing,
        policy=policy.short_digest if policy else "",
        method=method,
        scheme=scheme,
        host=decision.host or (hosts[0] if hosts else ""),
        path="",
        **more,
    )


def access_record(
    st: FlowState,
    d: Decision,
    enforced: bool,
    status: int | None,
    bytes_in: int,
    bytes_out: int,
    seconds: float,
    error: str | None,
) -> dict[str, Any]:
    """The audit record of one request (contract section 5), fields in their order."""
    record = {
        "event": "access",
        "ts": st.ts,
        "request_id": st.request_id,
        "user": st.identity.user,
        "roles": list(d.roles),
        "client_ip": ip_text(st.identity.client_ip),
        "method": st.method,
        "scheme": st.scheme,
        "host": st.host,
        "path": st.path,
        "site": d.site,
        "decision": d.decision,
        "reason": d.reason,
        "level": d.level._value_ if d.level is not None else None,  # .value is a slow property
        "rule": d.rule,
        "role": d.role,
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": round(seconds * 1000, 3),
        "policy": st.policy,
        "enforced": enforced,
    }
    if st.operation is not None:
        record["operation"] = st.operation
    if error is not None:
        record["error"] = error
    if st.inspection is not None:
        record["names"] = list(st.names)
        record["inspection"] = st.inspection
    return record


def body_size(content: bytes | None, streamed: int | None) -> int:
    """A body's size for the record: what was counted while it streamed, else what mitmproxy holds."""
    if streamed is not None:
        return streamed
    return len(content) if content else 0


_IP_TEXTS: dict[int, tuple[Any, str]] = {}


def ip_text(ip) -> str | None:
    """str(ip), remembered: ipaddress rebuilds the text on every str() and
    hashes slowly, and each connection reuses one address object."""
    if ip is None:
        return None
    entry = _IP_TEXTS.get(id(ip))
    if entry is not None and entry[0] is ip:  # held here, so its id is not reused
        return entry[1]
    if len(_IP_TEXTS) >= 4096:
        _IP_TEXTS.clear()
    text = str(ip)
    _IP_TEXTS[id(ip)] = (ip, text)
    return text


_ID_BYTES = 8
_ID_BATCH = 512  # ids per os.urandom() call
_ids: list[str] = []


def new_request_id() -> str:
    """Short, unique enough to quote on the phone, unguessable."""
    # Random bytes are fetched in batches, which keeps a system call off
    # most requests; they are os.urandom's all the same.  list.pop() is
    # atomic under the GIL, so threads need no lock; two that find the list
    # empty at once both refill it, which wastes nothing.
    try:
        return _ids.pop()
    except IndexError:
        block = os.urandom(_ID_BYTES * _ID_BATCH).hex()
        _ids.extend(block[i : i + 2 * _ID_BYTES] for i in range(0, len(block), 2 * _ID_BYTES))
        return _ids.pop()
