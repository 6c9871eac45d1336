"""Writes decided on what they say they do: `read_only_allow` rules with an `operation` (issue 21).

A write that read-only refuses at a site with such rules may still be a
read by what it says: a header (decided at once), a field of its body or a
GraphQL document in it (decided in the `request` hook, once mitmproxy has
read the body, before a byte of it leaves).  The engine decides; this
module gives it what the request says (`decision.Content`) and keeps the
flow waiting meanwhile.

A body is waited for only when mitmproxy will hold it whole: a declared
`Content-Length` of at most `BODY_LIMIT` (and under `stream_large_bodies`,
or mitmproxy would already stream it).  Anything else is decided at once,
as a body that says nothing: streamed, chunked, of unknown or excessive
length.  An allowed body is forwarded as it came; a GraphQL document is
parsed off the event loop, so that a large one stalls no other client.

A body is waited for at most BODY_WAIT seconds.  mitmproxy reads each
connection on its own, so a slow body holds up only its own request; once
it is late, the request is decided as one whose body says nothing (a
write): blocked and recorded at that moment, its block page sent if the
body ever ends, nothing of it forwarded.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from accessgate import decision as engine
from accessgate.decision import BODY_LIMIT, Content, Decision, Identity, Request
from accessgate.oplog import get_logger
from accessgate.policy.model import Operation, Policy
from accessgate.proxy.flows import all_headers
from accessgate.proxy.records import FlowState

if TYPE_CHECKING:
    from accessgate.proxy.addon import AccessGate

_HTTP1 = (b"HTTP/1.1", b"HTTP/1.0")
NOT_READ = "its body was not read"
# Seconds a body is waited for: a form or document under BODY_LIMIT takes
# milliseconds on any network a proxy's users sit on.
BODY_WAIT = 10.0
TOO_SLOW = f"its body did not arrive within {BODY_WAIT:g} s"

log = get_logger("addon")


def stream_limit(stream_large_bodies: str | None) -> float:
    """The body size past which mitmproxy streams (stream_large_bodies); infinite when it never does."""
    from mitmproxy.utils.human import parse_size

    try:
        limit = parse_size(stream_large_bodies)
    except ValueError:
        return 0.0  # mitmproxy refuses such a value; read nothing meanwhile
    return math.inf if limit is None else float(limit)


def _observe(gate: AccessGate, decision: Decision, t0: float) -> None:
    try:  # as quietly(), without a closure per request
        gate.metrics.observe_decision(decision, time.perf_counter() - t0)
    except Exception:
        log.exception("ignored_error")


class Operations:
    """The addon's decisions on what requests say they do."""

    def __init__(self, gate: AccessGate) -> None:
        self.gate = gate

    def decide(
        self, flow: http.HTTPFlow, request: Request, identity: Identity, policy: Policy, now: datetime
    ) -> tuple[Decision, Request, bool]:
        """`gate.decide` for a write: (decision, the request as decided, whether
        the decision waits for the body).  A decision that waits is counted
        when it is made, in `body_arrived`."""
        t0 = time.perf_counter()
        decision = engine.decide(request, identity, policy, now, self.gate.ledger)
        waits = False
        if not decision.allowed and decision.reason == engine.READ_ONLY:
            site = policy.sites.get(decision.site) if decision.site is not None else None
            asked = engine.operations_asked(request, site) if site is not None else ()
            if asked:
                content, waits = self._content_now(flow, asked)
                request = request._replace(content=content)
                if not waits:
                    decision = engine.decide(request, identity, policy, now, self.gate.ledger)
        if not waits:
            _observe(self.gate, decision, t0)
        return decision, request, waits

    def note(self, flow: http.HTTPFlow, st: FlowState, request: Request, policy: Policy, waits: bool) -> None:
        """Keep on `st` what `request` says it does: for the record, for re-decisions, and for
        `body_arrived`; when the decision waits for the body, set the deadline for it."""
        st.said = request
        st.awaiting = waits
        if waits:
            st.waiting_since = time.monotonic()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (hooks called directly): body_arrived checks the time
                return
            st.body_timer = loop.call_later(BODY_WAIT, self._too_slow, flow, st)
        else:
            site = policy.sites.get(st.decision.site) if st.decision.site is not None else None
            st.operation = engine.operation_said(request, site) if site is not None else None

    def _too_slow(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """The deadline of a body still not arrived: decide the request a write now."""
        if not st.awaiting or flow.response is not None or flow.error is not None:
            return
        st.awaiting = False
        try:
            self._unread(flow, st, TOO_SLOW)
        except Exception as exc:
            self.gate.fail(flow, "request", exc)

    def _unread(self, flow: http.HTTPFlow, st: FlowState, why: str) -> None:
        said = st.said
        assert said is not None and isinstance(said.content, Content)
        content = Content(said.content.headers, None, why, said.content.query)
        self._decided(flow, st, said._replace(content=content), self.gate.require_policy())

    def _content_now(self, flow: http.HTTPFlow, asked: tuple[Operation, ...]) -> tuple[Content, bool]:
        """What the request says before its body is read, and whether the body is worth waiting for."""
        rq = flow.request
        headers = all_headers(rq)
        query = rq.data.path.partition(b"?")[2].decode("utf-8", "surrogateescape")
        if not any(operation.reads_body for operation in asked):
            return Content(headers, None, NOT_READ, query), False
        why = self._unreadable(rq)
        if why:
            return Content(headers, None, why, query), False
        if rq.data.http_version in _HTTP1 and "content-length" not in rq.headers:
            return Content(headers, b"", query=query), False  # HTTP/1 without a length has no body
        return Content(headers, None, NOT_READ, query), True

    def _unreadable(self, rq: http.Request) -> str:
        """Why the body of `rq` will not be read whole before it could leave; "" if it will."""
        if rq.stream:
            return "its body streams (stream_large_bodies)"
        headers = rq.headers
        if "transfer-encoding" in headers:
            return "its body is chunked, of a length not given"
        lengths = headers.get_all("content-length")
        if not lengths:
            return "" if rq.data.http_version in _HTTP1 else "its body is of a length not given"
        if len(lengths) > 1 or not lengths[0].strip().isdigit():
            return "its Content-Length is not one number"
        size = int(lengths[0])
        if size > BODY_LIMIT:
            return f"its body is over {BODY_LIMIT // 1024} KiB"
        if size > self.gate.stream_limit:
            # mitmproxy switches to streaming past stream_large_bodies, also while it reads.
            return "its body would stream (stream_large_bodies)"
        return ""

    def body_arrived(self, flow: http.HTTPFlow, st: FlowState) -> Any:
        """The `request` hook of a flow whose decision waits for its body: decide
        now, or return the coroutine that parses a GraphQL document first."""
        st.awaiting = False
        if st.body_timer is not None:
            st.body_timer.cancel()
            st.body_timer = None
        if flow.response is not None or flow.error is not None:
            return None
        rq = flow.request
        policy = self.gate.require_policy()
        said = st.said
        assert said is not None and isinstance(said.content, Content)
        headers, query = said.content.headers, said.content.query
        if rq.stream:
            # Another addon made it stream after accessgate looked: the body has
            # left already.  Only killing keeps the site's answer from the client.
            return self._unread(flow, st, "its body streamed before it was read")
        if time.monotonic() - st.waiting_since > BODY_WAIT:
            return self._unread(flow, st, TOO_SLOW)
        body = rq.raw_content or b""
        if len(body) <= BODY_LIMIT:
            content = Content(headers, body, query=query)
        else:
            content = Content(headers, None, f"its body is over {BODY_LIMIT // 1024} KiB", query)
        request = said._replace(content=content)
        site = policy.sites.get(st.decision.site) if st.decision.site is not None else None
        asked = engine.operations_asked(request, site) if site is not None else ()
        if content.body is not None and any(operation.graphql is not None for operation in asked):
            return self._parse_then_decide(flow, st, request, policy, asked)
        return self._decided(flow, st, request, policy)

    async def _parse_then_decide(
        self, flow: http.HTTPFlow, st: FlowState, request: Request, policy: Policy, asked: tuple[Operation, ...]
    ) -> None:
        try:
            assert isinstance(request.content, Content)
            await asyncio.to_thread(request.content.parse_documents, asked)
            self._decided(flow, st, request, policy)
        except Exception as exc:
            self.gate.fail(flow, "request", exc)

    def _decided(self, flow: http.HTTPFlow, st: FlowState, request: Request, policy: Policy) -> None:
        """Decide `request` with what it says, and enforce, count and record it."""
        gate = self.gate
        t0 = time.perf_counter()
        decision = engine.decide(request, st.identity, policy, st.ts, gate.ledger)
        _observe(gate, decision, t0)
        site = policy.sites.get(decision.site) if decision.site is not None else None
        st.decision, st.said, st.policy = decision, request, policy.short_digest
        st.operation = engine.operation_said(request, site) if site is not None else None
        if not decision.allowed and st.enforced:  # a body that streamed after all is killed there
            status = gate.block(flow, st)
            gate.audit_flow(st, status, 0, st.streamed_out or 0, None if status else "killed")
            return
        if decision.counts_quota:
            gate.spend_quota(decision, st.identity, policy, st.ts)
