"""The mitmproxy addon: decide every request with the policy engine, enforce, audit, count.

`AccessGate` takes accessgate's options, opens what they name and receives
every mitmproxy hook; the HTTP request hooks (the hot path) are here, and
each other concern has its module:

- tunnels.py: CONNECT targets, TLS passthroughs, a tunnel's first bytes and
  relays that nothing reads (with `accessgate_next_layer`, a small addon at
  the end of mitmproxy's chain);
- balancer.py: the client's own address from a trusted load balancer's
  PROXY header (`accessgate_trusted_proxies`; called through tunnels.py's
  `accessgate_next_layer`);
- sessions.py: WebSockets, streamed bodies and raw relays, decided again
  every second while they stay open, charged per minute, closed when blocked;
- gate.py: the block page or a kill, and failing closed;
- hygiene.py: private and folded request headers (`sanitize`, called here),
  and `StripAltSvc`, the addon that removes Alt-Svc from every response;
- status.py: the status page; warn.py: warn grants' page and continue form;
  reload.py: the policy's loads and reloads;
  records.py: the flow's state and its audit record; minutes.py: quota
  minutes; resources.py and options.py: what the options open, and them;
- operations.py: writes decided on what they say they do (a header, a
  small body: `read_only_allow` rules with an `operation`), whose decision
  may wait for the body, in the `request` hook.

`requestheaders` decides every HTTP request on every name it gives for its
host plus its connection's CONNECT target and SNI; the strictest decision
stands.  A block is answered before the request body is forwarded; a body
that mitmproxy already streams cannot be answered, so the flow is killed.

Every hook fails closed: an exception blocks (reason `denied`, rule
`internal-error`), is logged with its traceback, counted in
`accessgate_fail_closed_total{stage}` and audited.  Nothing is let through
undecided.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from datetime import datetime, timezone
from typing import Any

from mitmproxy import ctx, exceptions, http

from accessgate import decision as engine
from accessgate.decision import SAFE_METHODS, Decision, Identity
from accessgate.oplog import get_logger
from accessgate.policy.model import Policy
from accessgate.proxy import options, resources
from accessgate.proxy.balancer import TrustedBalancers
from accessgate.proxy.flows import request_of, scan_request
from accessgate.proxy.gate import (
    answer_blocked,
    count_failure,
    fail_closed,
    quietly,
    request_length_unknown,
    response_length_unknown,
    streams_late,
)
from accessgate.proxy.hygiene import StripAltSvc, sanitize
from accessgate.proxy.identity import IdentityCache
from accessgate.proxy.inspection import Inspector
from accessgate.proxy.metrics import site_label
from accessgate.proxy.minutes import QuotaMinutes
from accessgate.proxy.operations import Operations, stream_limit
from accessgate.proxy.records import META, FlowState, access_record, body_size, flow_state
from accessgate.proxy.reload import PolicyReloads
from accessgate.proxy.sessions import Sessions
from accessgate.proxy.signin import SignIn
from accessgate.proxy.status import answer_status, names_status
from accessgate.proxy.tunnels import Tunnels
from accessgate.proxy.upstream import UpstreamGuard, parse_allowed
from accessgate.proxy.warn import CONTINUE_PATH, META_CONTINUE, WarnForms

log = get_logger("addon")


def accessgate_addons() -> list:
    """The addons a mitmproxy script loads, in their order (see addons/accessgate.py)."""
    gate = AccessGate()
    return [gate.signin, gate, StripAltSvc(gate.fail), gate.upstream]


class AccessGate:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        from accessgate.proxy.metrics import Metrics

        self.policy: Policy | None = None
        self.ledger: Any = None
        self.audit: Any = None
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        refused = self.metrics.upstream_refused
        self.upstream = UpstreamGuard(lambda reason: refused.labels(reason).inc())
        self.metrics.watch_audit_head(lambda: self.audit.head if self.audit is not None else None)
        self.metrics_server: Any = None
        self.metrics_port: int | None = None
        self._pseudonym_key: bytes | None = None
        self._running = False
        self._tasks: list[asyncio.Task] = []
        # Options read on every request, kept by configure (ctx.options copies each value it returns).
        self._enforce = True  # accessgate_mode
        self.log_query = False  # accessgate_log_query
        # stream_large_bodies may switch a body of unknown length to streaming
        # after the headers hooks (see requestheaders).
        self._late_streaming = False
        self.stream_limit = math.inf  # stream_large_bodies: bodies past it stream
        # Per client connection (by its id; dropped in client_disconnected):
        # its CONNECT targets, for the requests inside, and its users' identities.
        self.connect_names: dict[str, tuple[str, ...]] = {}
        self._identities = IdentityCache()
        self._minutes = QuotaMinutes(self.metrics)
        self.reloads = PolicyReloads(self)
        self.sessions = Sessions(self)
        self.balancers = TrustedBalancers(self.metrics)  # accessgate_trusted_proxies
        self.inspector = Inspector(self, self.sessions)
        self.tunnels = Tunnels(self, self.sessions, self.inspector)
        # accessgate_auth and directory groups: an addon of its own, before this one in the chain.
        self.signin = SignIn(self)
        self.metrics.watch_signin(self.signin.samples)
        self.warn = WarnForms(self)
        self.operations = Operations(self)
        # Bound once: the request hooks call these on every request.
        self.identity = self._identities.of_flow
        self.spend_quota = self._minutes.spend
        self._untrack = self.sessions.flows.untrack

    # -- options and what they open ----------------------------------------------

    def load(self, loader) -> None:
        options.declare(loader)
        self.tunnels.claim_last_word()

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        except exceptions.OptionsError as exc:
            if self._proxy_running():
                raise  # mitmproxy rejects the change and keeps the old value
            # At start-up mitmproxy would only log an error raised while it loads
            # a script and then run without a policy: stop instead, loudly.
            print(f"accessgate: cannot start: {exc}", file=sys.stderr, flush=True)
            log.error("startup_failed", error=str(exc))
            raise SystemExit(1) from None

    def _proxy_running(self) -> bool:
        scripts = ctx.master.addons.get("scriptloader") if ctx.master else None
        return self._running or bool(getattr(scripts, "is_running", False))

    def _configure(self, updated: set[str]) -> None:
        o = ctx.options
        # configure runs on every change (and again on a rollback), so these follow.
        self._enforce = o.accessgate_mode == "enforce"
        self.inspector.configure(o.accessgate_inspect, o.accessgate_refuse_ech)
        self.log_query = bool(o.accessgate_log_query)
        # mitmproxy's own options; absent only where its proxy server is not loaded (unit tests).
        self._late_streaming = streams_late(
            getattr(o, "stream_large_bodies", None), getattr(o, "body_size_limit", None)
        )
        self.stream_limit = stream_limit(getattr(o, "stream_large_bodies", None))
        if "accessgate_audit_retention_days" in updated and o.accessgate_audit_retention_days < 0:
            raise exceptions.OptionsError(
                "accessgate_audit_retention_days must be 0 (keep forever) or a number of days"
            )
        if "accessgate_upstream_allow" in updated:
            try:
                self.upstream.allow(parse_allowed(o.accessgate_upstream_allow))
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None
        if updated & {"accessgate_trusted_proxies", "mode"}:
            try:
                self.balancers.configure(o.accessgate_trusted_proxies, getattr(o, "mode", ()))
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None
        loaded = self.reloads.load_option(o.accessgate_policy) if "accessgate_policy" in updated else None
        if "accessgate_pseudonymize_key" in updated:
            self._pseudonym_key = resources.read_key(o.accessgate_pseudonymize_key)
        if "accessgate_warn_key" in updated:
            self.warn.use_key(resources.read_warn_key(o.accessgate_warn_key))
        if updated & {"accessgate_state", "accessgate_pseudonymize_key"}:
            ledger = resources.open_state(
                o.accessgate_state, self._pseudonym_key, self._state_error, self.metrics.state_seconds
            )
            old, self.ledger = self.ledger, ledger
            self._minutes.use(ledger)
            if old is not None:
                quietly(old.close)
        if updated & {"accessgate_audit_log", "accessgate_pseudonymize_key", "accessgate_audit_seal_key"}:
            old, self.audit = self.audit, None
            if old is not None:
                quietly(old.close)
            self.audit = resources.open_audit(
                o.accessgate_audit_log, self._pseudonym_key, self.metrics.observe_audit, o.accessgate_audit_seal_key
            )
        if "accessgate_metrics" in updated:
            old, self.metrics_server, self.metrics_port = self.metrics_server, None, None
            if old is not None:
                quietly(old.stop)
            self.metrics_server, self.metrics_port = resources.start_metrics(self.registry, o.accessgate_metrics)
        if loaded is not None:
            self.reloads.adopt(*loaded)
        self.signin.apply_options(o, updated)

    def _state_error(self, exc: Exception) -> None:
        kind = getattr(getattr(self.ledger, "spec", None), "kind", "unknown")
        quietly(lambda: self.metrics.state_errors.labels(store=kind).inc())
        log.warning("state_store_error", error=str(exc))

    # -- life cycle ----------------------------------------------------------

    def running(self) -> None:
        self._running = True
        self.reloads.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping()))
        self._tasks.append(loop.create_task(self.sessions.review()))
        self._tasks.append(loop.create_task(self.inspector.review()))
        try:
            # logrotate's postrotate (`systemctl reload`) sends SIGHUP; mitmdump
            # alone would die of it.
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # not the main thread, or no SIGHUP on this platform

    def _sighup(self) -> None:
        """Reopen the audit log (it was rotated) and re-read the policy now."""
        if self.audit is not None:
            quietly(self.audit.reopen)
        log.info("sighup", audit_log=str(self.audit.path) if self.audit is not None else None)
        self.reloads.request()

    async def _housekeeping(self) -> None:
        while True:
            days = ctx.options.accessgate_audit_retention_days
            if days and self.audit is not None:
                quietly(lambda: self.audit.prune_rotated(days, time.time()))
            await asyncio.sleep(3600)

    def done(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except Exception:
            pass
        self.reloads.stop()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        for tunnel in list(self.sessions.relays.values()):  # still open: their records go out now
            if tunnel.splice is not None:
                quietly(tunnel.splice.close)
            quietly(lambda: self.sessions.end_relay(tunnel))
        self.tunnels.release_last_word()
        if self.audit is not None:
            quietly(self.audit.close)  # drains: no record is lost on a clean stop
        if self.ledger is not None:
            quietly(self.ledger.close)
        if self.metrics_server is not None:
            quietly(self.metrics_server.stop)
        quietly(self.signin.close)

    # -- HTTP hooks --------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            self.tunnels.http_connect(flow)
        except Exception as exc:
            self.fail(flow, "http_connect", exc)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            if flow.response is not None or flow.error is not None:
                return  # a preset answer (proxyauth's 407) or a killed flow: not ours to decide
            started = time.perf_counter()
            now = datetime.now(timezone.utc)
            policy = self.require_policy()
            identity = self.identity(flow)
            tunnel_names = self.connect_names.get(flow.client_conn.id, ())
            scan = scan_request(flow, tunnel_names)
            if scan.private or scan.folded:
                # Before anything else reads them.
                sanitize(flow.request.headers, scan.private, scan.folded)
                if scan.folded:
                    scan = scan_request(flow, tunnel_names)
            request = scan.request
            if names_status(flow, scan.host_values):
                answer_status(flow, identity, policy, now, self.ledger, self.inspector.mode)
                return
            if request.method in SAFE_METHODS and not request.headers:
                decision = self.decide(request, identity, policy, now)
                waits = False
            else:  # a write: what it says it does may decide, or its body, in `request`
                decision, request, waits = self.operations.decide(flow, request, identity, policy, now)
            enforced = self._enforce
            st = flow_state(flow, decision, identity, now, started, policy, enforced, self.log_query, request)
            if request.path.startswith(CONTINUE_PATH) and request.path.partition("?")[0] == CONTINUE_PATH:
                self.warn.intercept(flow, st, policy)  # a warn page's form: answered here, never forwarded
                return
            if request.content is not None:
                self.operations.note(flow, st, request, policy, waits)
                if waits:
                    return
            if not decision.allowed and enforced:
                status = self.block(flow, st)
                self.audit_flow(st, status, 0, st.streamed_out or 0, None if status else "killed")
                return
            if decision.counts_quota:
                self.spend_quota(decision, identity, policy, now)
            if flow.request.stream is True or (self._late_streaming and request_length_unknown(flow.request)):
                # A body mitmproxy streams, or may start to stream once it grows
                # past stream_large_bodies (with no hook then): counted and kept
                # under review from its first byte.
                flow.request.stream = self.sessions.stream_counter(flow, st, "streamed_in", request)
        except Exception as exc:
            self.fail(flow, "requestheaders", exc)

    def request(self, flow: http.HTTPFlow) -> Any:
        """A warn page's form (warn.py), and a flow whose decision waits for its body
        (operations.py), are answered here, before mitmproxy forwards anything; every
        other flow was decided already."""
        if META_CONTINUE in flow.metadata:  # the body of a warn page's form is here now
            try:
                self.warn.answer(flow)
            except Exception as exc:
                self.fail(flow, "request", exc)
            return None
        st = flow.metadata.get(META)
        if st is None or not st.awaiting:
            return None
        try:
            return self.operations.body_arrived(flow, st)
        except Exception as exc:
            self.fail(flow, "request", exc)
            return None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            st = flow.metadata.get(META)
            if not isinstance(st, FlowState) or st.blocked_here:
                return
            if flow.response.stream is True or (self._late_streaming and response_length_unknown(flow)):
                request = st.said or request_of(flow, self.connect_names.get(flow.client_conn.id, ()))
                flow.response.stream = self.sessions.stream_counter(flow, st, "streamed_out", request)
        except Exception as exc:
            self.fail(flow, "responseheaders", exc)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._untrack(flow.id)
        try:
            st = flow.metadata.get(META)
            if not isinstance(st, FlowState) or st.logged:
                return
            if flow.response.status_code == 101 and flow.websocket is None:
                self.tunnels.upgraded_to_raw(flow, st)
                return
            self.audit_flow(
                st,
                flow.response.status_code,
                body_size(flow.request.raw_content, st.streamed_in),
                body_size(flow.response.raw_content, st.streamed_out),
            )
        except Exception as exc:
            self.fail(flow, "response", exc)

    def error(self, flow: http.HTTPFlow) -> None:
        self._untrack(flow.id)
        try:
            st = flow.metadata.get(META)
            if not isinstance(st, FlowState) or st.logged:
                return
            self.audit_flow(
                st,
                status=None,
                bytes_in=body_size(flow.request.raw_content, st.streamed_in),
                bytes_out=body_size(flow.response.raw_content if flow.response else None, st.streamed_out),
                error=flow.error.msg if flow.error else "error",
            )
        except Exception as exc:
            count_failure(self.metrics, "error", exc)

    # -- open connections ----------------------------------------------------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self.sessions.websocket_start(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self.sessions.websocket_message(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._untrack(flow.id)

    def tcp_start(self, flow) -> None:
        self.tunnels.tcp_start(flow)

    def tcp_message(self, flow) -> None:
        self.sessions.tcp_message(flow)

    def client_disconnected(self, client) -> None:
        self._identities.forget(client.id)
        self.balancers.forget(client.id)
        self.connect_names.pop(client.id, None)
        tunnel = self.sessions.relays.get(client.id)
        if tunnel is not None and tunnel.handed_off:
            return  # relayed on by accessgate (splice.py): it ends when the splice does
        self.inspector.forget(client.id)
        if tunnel is not None:
            if tunnel.splice is not None:
                quietly(tunnel.splice.close)  # mitmproxy let go of a client before handing it over
            try:
                self.sessions.end_relay(tunnel)
            except Exception:
                log.exception("ignored_error")

    # -- what every concern uses ------------------------------------------------

    @property
    def enforcing(self) -> bool:
        return self._enforce

    def require_policy(self) -> Policy:
        policy = self.policy
        if policy is None:
            raise RuntimeError("no policy is loaded")
        return policy

    def decide(self, request: engine.Request, identity: Identity, policy: Policy, now: datetime) -> Decision:
        """engine.decide, timed and counted."""
        t0 = time.perf_counter()
        decision = engine.decide(request, identity, policy, now, self.ledger, self.ledger)
        try:  # as quietly(), without a closure per request
            self.metrics.observe_decision(decision, time.perf_counter() - t0)
        except Exception:
            log.exception("ignored_error")
        return decision

    def block(self, flow: http.HTTPFlow, st: FlowState, accept: str | None = None) -> int | None:
        """Answer `flow` with the block page; returns the status sent (None: killed)."""
        policy = self.policy
        contact = ctx.options.accessgate_contact
        page = None
        if st.decision.reason == engine.JUSTIFICATION_REQUIRED and accept is None:
            page = self.warn.page(flow, st, contact)  # a page load: the form that asks for a reason
        return answer_blocked(
            flow,
            st,
            contact=contact,
            page=page,
            timezone=policy.timezone if policy is not None else None,
            late_streaming=self._late_streaming,
            metrics=self.metrics,
            accept=accept,
            site_name=policy.site_title(st.decision.site) if policy is not None else None,
        )

    def fail(self, flow: http.HTTPFlow | None, stage: str, exc: BaseException) -> None:
        """An exception in a hook: log, count, audit and block (fail closed)."""
        fail_closed(self, flow, stage, exc)

    def audit_event(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.write({"event": event, "ts": datetime.now(timezone.utc), **fields})

    def audit_flow(
        self, st: FlowState, status: int | None, bytes_in: int, bytes_out: int, error: str | None = None
    ) -> None:
        st.logged = True
        d = st.decision
        if self.audit is not None:
            # Made into a record by the writer thread; the decision and
            # `enforced` are passed as they are now (fail() may change them).
            self.audit.defer(
                access_record, st, d, st.enforced, status, bytes_in, bytes_out, time.perf_counter() - st.started, error
            )
        try:  # as quietly(), without closures per request
            site = site_label(d)
            if bytes_in:
                self.metrics.count_bytes(site, "in", bytes_in)
            if bytes_out:
                self.metrics.count_bytes(site, "out", bytes_out)
        except Exception:
            log.exception("ignored_error")
