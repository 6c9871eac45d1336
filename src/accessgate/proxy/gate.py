"""Enforcement: answer a blocked request with the block page or kill it, and fail closed.

A blocked request gets the 403 block page when mitmproxy can still answer
it cheaply; one whose body mitmproxy streams, may switch to streaming, or
would have to read whole first is killed instead (`answer_blocked`).  An
exception in any hook blocks the flow, is logged with its traceback,
counted in `accessgate_fail_closed_total{stage}` and audited
(`fail_closed`): nothing is let through undecided.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from mitmproxy import ctx, http

from accessgate import decision as engine
from accessgate.decision import Decision
from accessgate.oplog import get_logger
from accessgate.proxy import pages
from accessgate.proxy.identity import identity_for_flow
from accessgate.proxy.records import META, FlowState, flow_state

if TYPE_CHECKING:
    from accessgate.proxy.addon import AccessGate

# A blocked request with a larger body is killed rather than answered: mitmproxy
# would read the whole body before it could send the 403.  Form posts stay
# below this and get the readable block page.
BLOCKED_BODY_READ_LIMIT = 1024 * 1024
INTERNAL_ERROR = "internal-error"
_HTTP1 = (b"HTTP/1.1", b"HTTP/1.0")

log = get_logger("addon")


def internal_error(message: str) -> Decision:
    """The decision for a request that accessgate failed to decide: blocked."""
    return Decision(
        engine.BLOCK,
        engine.DENIED,
        INTERNAL_ERROR,
        message=f"accessgate could not decide this request ({message}); it is blocked to be safe.",
    )


def refused(decision: Decision, rule: str, message: str) -> Decision:
    """`decision` (its site, roles and host) turned into a block by `rule`, for `message`."""
    return Decision(
        engine.BLOCK,
        engine.DENIED,
        rule,
        site=decision.site,
        roles=decision.roles,
        host=decision.host,
        message=message,
    )


def answer_blocked(
    flow: http.HTTPFlow,
    st: FlowState,
    *,
    contact: str,
    timezone: Any,
    late_streaming: bool,
    metrics: Any,
    accept: str | None = None,
    page: tuple[int, dict[str, str], bytes] | None = None,
    site_name: str | None = None,
) -> int | None:
    """Answer `flow` with the block page (or `page`, e.g. a warn page); returns the status sent (None: killed).

    `timezone` is the policy's ("opens again at 12:00" as the policy is
    written); `late_streaming` says mitmproxy may switch a body of unknown
    length to streaming while it reads it; `site_name` is the site's display name.
    """
    d = st.decision
    try:
        status, headers, body = page if page is not None else pages.block_response(
            d,
            request_id=st.request_id,
            contact=contact,
            url=flow.request.pretty_url,
            now=st.ts,
            accept=accept if accept is not None else flow.request.headers.get("accept", ""),
            timezone=timezone,
            site_name=site_name,
        )
    except Exception:
        log.exception("block_page_failed", request_id=st.request_id)
        quietly(lambda: metrics.fail_closed.labels(stage="block-page").inc())
        status, headers, body = 403, {"Content-Type": "text/plain; charset=utf-8"}, (
            f"Blocked by accessgate ({d.reason}). Request id {st.request_id}.\n".encode()
        )
    headers = {
        **dict(headers),
        "X-Accessgate-Decision": "block",
        "X-Accessgate-Reason": d.reason,
        "X-Accessgate-Request-Id": st.request_id,
    }
    st.blocked_here = True
    if flow.request.method != "CONNECT" and (
        flow.request.stream
        or declares_large_body(flow.request)
        or (late_streaming and request_length_unknown(flow.request))
    ):
        # mitmproxy cannot answer a request whose body it streams, nor one
        # whose body it may switch to streaming while reading it (it raises
        # then), and it answers any other request only after reading its
        # whole body into memory.  Killing keeps the body from the site
        # and off the proxy.
        flow.kill()
        return None
    flow.response = http.Response.make(status, body, headers)
    st.streamed_out = len(body)
    return status


def fail_closed(gate: AccessGate, flow: http.HTTPFlow | None, stage: str, exc: BaseException) -> None:
    """An exception in a hook: log, count, audit and block the flow (if there is one)."""
    count_failure(gate.metrics, stage, exc)
    if flow is None:
        return
    try:
        st = flow.metadata.get(META)
        enforced = gate.enforcing
        decision = internal_error(type(exc).__name__)
        if isinstance(st, FlowState):
            st.decision = decision
            st.enforced = enforced
        else:
            st = flow_state(
                flow, decision, identity_for_flow(flow), datetime.now(timezone.utc),
                time.perf_counter(), gate.policy, enforced, gate.log_query,
            )
        if not enforced:
            return  # audit mode blocks nothing; the record says what would have happened
        if stage == "responseheaders" and flow.killable:
            # The site's body is still to come, and mitmproxy reads it into
            # whatever response the flow holds: a block page set here went
            # out carrying the site's bytes.  Only killing withholds them.
            flow.kill()
            st.blocked_here = True
            gate.audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="killed")
            return
        if flow.response is not None and not st.blocked_here:
            flow.response = None
        if flow.killable:
            status = gate.block(flow, st)
            gate.audit_flow(st, status=status, bytes_in=0, bytes_out=0, error=None if status else "killed")
        elif not st.logged:
            gate.audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="failed closed")
    except Exception:
        log.exception("fail_closed_failed", stage=stage)
        if flow.killable:
            flow.kill()


def count_failure(metrics: Any, stage: str, exc: BaseException) -> None:
    """Log an exception that accessgate failed closed on, with its traceback, and count it."""
    log.error("fail_closed", stage=stage, error=repr(exc), exc_info=exc)
    quietly(lambda: metrics.fail_closed.labels(stage=stage).inc())


def connection_io(client, connection=None) -> Any:
    """mitmproxy's reader, writer and task of `connection` (by default the client's own) in the
    handler of `client`'s connection; None when either is gone.  mitmproxy has no public way to it."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    return handler.transports.get(client if connection is None else connection) if handler is not None else None


def close_connection(client) -> bool:
    """Close a client connection's transport; False if it is gone already."""
    io = connection_io(client)
    if io is not None and io.writer is not None:
        io.writer.close()
        return True
    return False


def declares_large_body(request: http.Request) -> bool:
    """A body too large to read just to refuse it (or of unknown size)."""
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return True
    try:
        return int(request.headers.get("content-length", "0")) > BLOCKED_BODY_READ_LIMIT
    except ValueError:
        return True  # a malformed length: nothing worth reading


def streams_late(stream_large_bodies: str | None, body_size_limit: str | None) -> bool:
    """mitmproxy may switch a body of unknown length to streaming once it grows past the limit."""
    from mitmproxy.utils.human import parse_size

    try:
        stream, limit = parse_size(stream_large_bodies), parse_size(body_size_limit)
    except ValueError:
        return bool(stream_large_bodies)
    # With a smaller body_size_limit mitmproxy refuses such a body before it would stream it.
    return stream is not None and (limit is None or limit > stream)


def request_length_unknown(request: http.Request) -> bool:
    """A request body that may grow past stream_large_bodies after the headers were decided."""
    headers = request.headers
    if "transfer-encoding" in headers:
        return True
    # HTTP/2 and 3 frame a body without Content-Length; mitmproxy then reads it as it comes.
    return request.data.http_version not in _HTTP1 and "content-length" not in headers


def response_length_unknown(flow: http.HTTPFlow) -> bool:
    """A response body that may grow past stream_large_bodies after its headers were seen."""
    from mitmproxy.net.http.http1 import expected_http_body_size

    try:
        size = expected_http_body_size(flow.request, flow.response)
    except ValueError:
        return True
    return size is None or size < 0


def quietly(fn: Callable[[], Any]) -> None:
    """Metrics and clean-up must never turn a decided request into a failure."""
    try:
        fn()
    except Exception:
        log.exception("ignored_error")
