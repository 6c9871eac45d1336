"""The mitmproxy addon: decide every request with the policy engine, enforce, audit, count.

Where a request is decided (see docs/running.md for why each one matters):

- `http_connect`: the CONNECT target, decided as "may this client reach the
  site at all".  It is refused here only when the tunnel may go through
  uninspected (`ignore_hosts`, `allow_hosts`, `tcp_hosts` are set); otherwise
  it is let through so that the request inside gets a real block page.
- `tls_clienthello` (through `_LastWord`, after every other addon): a
  passthrough that another addon asks for, decided as a write on every
  name; blocked, it is intercepted instead, so that each request inside is
  decided.
- `next_layer` (through `_LastWord`, after mitmproxy's own choice): a tunnel
  whose first bytes could still become TLS or HTTP waits for more; one that
  is neither where every tunnel is meant to be read is refused; one that
  will be relayed unread (ignore_hosts, allow_hosts, tcp_hosts) is decided
  on every name it has, as a write, and closed before a byte reaches the
  server when blocked.
- `requestheaders`: every HTTP request, on every name it gives for its host
  plus its connection's CONNECT target and SNI; the strictest decision
  stands.  A block is answered before the request body is forwarded; a body
  that mitmproxy already streams cannot be answered, so the flow is killed.
- `response`: an upgrade answered with 101 that mitmproxy will relay raw
  (any but a version-13 WebSocket) is decided again, as a write.

What stays open stays decided: WebSockets, streamed bodies and allowed raw
relays are decided again every second, charged for each minute they carry
traffic and closed when the policy no longer allows them.

Every hook fails closed: an exception blocks (reason `denied`, rule
`internal-error`), is logged with its traceback, counted in
`accessgate_fail_closed_total{stage}` and audited.  Nothing is let through
undecided.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.proxy import commands, events, layer, layers, mode_specs

from accessgate import decision as engine
from accessgate.proxy import firstbytes
from accessgate.decision import Decision, Identity
from accessgate.errors import PolicyError, StateStoreError
from accessgate.proxy.flows import (
    REACH,
    TUNNEL,
    connect_request,
    path_without_query,
    request_of,
    scan_request,
    tunnel_request,
)
from accessgate.proxy.identity import (
    client_ip,
    identity_for_connection,
    identity_for_flow,
    user_from_proxyauth,
)
from accessgate.policy.loader import load_policy
from accessgate.oplog import get_logger
from accessgate.proxy.gctuning import settle_after_load
from accessgate.proxy.sessions import LongLivedFlows
from accessgate.stores.timed import TimedLedger
from accessgate.proxy.metrics import site_label
from accessgate.policy.model import Policy
from accessgate.proxy.reload import Fingerprint, PolicyWatch, fingerprint, settled

META = "accessgate"
_USERS_PER_CONNECTION = 16  # identities kept per client connection
# A blocked request with a larger body is killed rather than answered: mitmproxy
# would read the whole body before it could send the 403.  Form posts stay
# below this and get the readable block page.
BLOCKED_BODY_READ_LIMIT = 1024 * 1024
# How often open WebSockets and streams are re-decided: a window's end or a
# spent quota closes them within this many seconds.
LONG_LIVED_REVIEW_SECONDS = 1.0
MODES = ("enforce", "audit")
STATUS_HOST = "accessgate.status"
INTERNAL_ERROR = "internal-error"
# Alt-Svc advertises HTTP/3 over UDP, which a browser may then use around the
# proxy; without it the browser stays on the TCP connection that we decide.
_ALT_SVC = "alt-svc"
_ALT_SVC_B = _ALT_SVC.encode()

DEFAULTS = {
    "accessgate_audit_log": "var/accessgate-audit.jsonl",
    "accessgate_state": "sqlite:var/accessgate-state.sqlite",
    "accessgate_contact": "your IT service desk",
}

log = get_logger("addon")


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
        "client_ip": _ip_text(st.identity.client_ip),
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
    if error is not None:
        record["error"] = error
    return record


_ID_BYTES = 8
_ID_BATCH = 512  # ids per os.urandom() call
_ids: list[str] = []


def new_request_id() -> str:
    """Short, unique enough to quote on the phone, unguessable."""
    # One getrandom() per 512 ids instead of one per request: the call showed
    # up in the request hook's profile (1-20 us on a busy virtual machine).
    # The bytes are os.urandom's all the same, so ids stay unguessable.
    # list.pop() is atomic under the GIL, so threads need no lock; two that
    # find the list empty at once both refill it, which wastes nothing.
    try:
        return _ids.pop()
    except IndexError:
        block = os.urandom(_ID_BYTES * _ID_BATCH).hex()
        _ids.extend(block[i : i + 2 * _ID_BYTES] for i in range(0, len(block), 2 * _ID_BYTES))
        return _ids.pop()


def _internal_error(message: str) -> Decision:
    return Decision(
        engine.BLOCK,
        engine.DENIED,
        INTERNAL_ERROR,
        message=f"accessgate could not decide this request ({message}); it is blocked to be safe.",
    )


def _parse_listen(value: str) -> tuple[str, int]:
    from accessgate.proxy.metrics import parse_address

    try:
        return parse_address(value)
    except ValueError as exc:
        raise exceptions.OptionsError(str(exc)) from None


class _Refuse(layer.Layer):
    """Closes a connection that must not be tunnelled, before any byte is relayed."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
            yield commands.CloseConnection(self.context.client)
        else:
            yield from ()


@dataclass(slots=True, eq=False)
class RawTunnel:
    """A connection that mitmproxy relays without reading it, allowed by accessgate.

    Decided as a write on every name it has, then kept like a WebSocket:
    re-decided every second, charged a quota minute for each minute in
    which it carries traffic, closed when the policy stops allowing it, and
    audited once, when it ends, with the bytes it carried.  Mutable: the
    counters move as bytes pass.
    """

    key: tuple[str, str]  # ("tcp", client connection id): one relay per client connection
    client: Any  # mitmproxy's Client connection, to close it
    st: FlowState  # the audit record to be: the tunnel's own, or the upgraded request's
    status: int | None = None  # 101 for a request upgraded to a raw connection
    counted_by_hooks: bool = False  # bytes come from tcp_message (mitmproxy made the relay itself)
    unseen: bool = False  # its bytes pass where accessgate cannot count them: every open minute is charged
    bytes_in: int = 0  # from the client
    bytes_out: int = 0  # to the client
    minute: int = -1  # the last UTC minute it carried traffic
    closed: str | None = None  # why accessgate closed it


class _Relay(layers.TCPLayer):
    """mitmproxy's raw relay, telling accessgate what passes so that it can charge and audit it."""

    def __init__(self, context, ignore: bool, tunnel: RawTunnel, on_data) -> None:
        super().__init__(context, ignore=ignore)
        self.tunnel = tunnel
        self._on_data = on_data

    def relay_messages(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived):
            if not self._on_data(self.tunnel, event.connection is self.context.client, len(event.data)):
                return  # closed by accessgate: these bytes go nowhere
        yield from super().relay_messages(event)


class _LastWord:
    """accessgate's say on what other addons chose for a connection, after all of them.

    Script addons run before mitmproxy's own NextLayer addon, and before any
    script loaded after accessgate, but accessgate must see what they chose
    (a raw relay, a TLS passthrough) and be able to make mitmproxy wait for
    more bytes, which only works once no later addon will choose instead.
    So this small addon sits at the end of mitmproxy's chain and hands the
    choice to accessgate.
    """

    name = "accessgate_next_layer"

    def __init__(self, gate: "AccessGate") -> None:
        self.gate: AccessGate | None = gate

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if self.gate is not None:
            self.gate.next_layer_chosen(nextlayer)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if self.gate is not None:
            self.gate.passthrough_asked(data)


_UNINSPECTED = (layers.TCPLayer, layers.UDPLayer)
_EXPLICIT_PROXY = (mode_specs.RegularMode, mode_specs.UpstreamMode)
# A tunnel that is neither TLS nor HTTP where the operator expects every
# tunnel to be read (no ignore_hosts/allow_hosts/tcp_hosts match): refused,
# as Squid's on_unsupported_protocol does by default.
UNREADABLE = "unreadable-tunnel"


class AccessGate:
    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.ledger: Any = None
        self.audit: Any = None
        self.metrics: Any = None
        self.metrics_server: Any = None
        self.metrics_port: int | None = None
        self.watch: PolicyWatch | None = None
        # Bumped by every install: a reload that began before one is stale.
        self._generation = 0
        # The files the policy option's last load read, and when (for the watcher).
        self._files: Fingerprint = ()
        self._files_read_at = 0
        self._pseudonym_key: bytes | None = None
        self._running = False
        self._tasks: list[asyncio.Task] = []
        # Per client connection (by its id; dropped in client_disconnected):
        # its CONNECT targets, for the requests inside, and its identity, its
        # address parsed once (ip_address() on every request was the largest
        # single cost in the request hook, profiled).  Plain dicts: a
        # WeakKeyDictionary lookup builds a weak reference every time.
        self._tunnels: dict[str, tuple[str, ...]] = {}
        self._identities: dict[str, dict[str | None, Identity]] = {}  # connection -> user -> identity
        # (subject, site) -> last UTC minute marked, so a busy minute costs one store write.
        self._marked: dict[tuple[str, str], int] = {}
        self._enforce = True  # accessgate_mode, kept by configure
        self._log_query = False  # accessgate_log_query, kept by configure
        # Open WebSockets, streams and raw relays, re-decided every second.
        self._long: LongLivedFlows[http.HTTPFlow | RawTunnel] = LongLivedFlows()
        # Allowed raw relays by client connection id, until the connection ends.
        self._raw: dict[str, RawTunnel] = {}
        # stream_large_bodies may switch a body of unknown length to streaming
        # after the headers hooks (kept by configure; see requestheaders).
        self._late_streaming = False
        self._init_metrics()

    # -- options -------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option(
            "accessgate_policy",
            str,
            "",
            """
            Path of the accessgate policy (YAML).  Required.  The file and its
            includes are watched: a valid new version takes effect within two
            seconds, an invalid one is rejected and the last good policy stays.
            """,
        )
        loader.add_option(
            "accessgate_audit_log",
            str,
            DEFAULTS["accessgate_audit_log"],
            """
            Path of the audit log: one JSON object per request and per policy
            load or rejection.  Relative paths are relative to the working
            directory.  Empty disables the audit log.
            """,
        )
        loader.add_option(
            "accessgate_metrics",
            str,
            "",
            """
            HOST:PORT where accessgate serves Prometheus metrics at /metrics,
            e.g. 127.0.0.1:9464.  Port 0 picks a free port (logged as
            metrics_listening).  Empty disables the endpoint.
            """,
        )
        loader.add_option(
            "accessgate_state",
            str,
            DEFAULTS["accessgate_state"],
            """
            Where daily quota minutes are kept: sqlite:PATH (survives restarts),
            redis://HOST:PORT/DB (shared by several proxies), or memory: (tests).
            """,
        )
        loader.add_option(
            "accessgate_contact",
            str,
            DEFAULTS["accessgate_contact"],
            """
            Whom users should ask about a block; shown on the block page,
            e.g. "the IT service desk, extension 4444".
            """,
        )
        loader.add_option(
            "accessgate_mode",
            str,
            "enforce",
            """
            enforce: block what the policy blocks.  audit: decide and log every
            request (records carry "enforced": false) but block nothing, as a
            dry run before a rollout.
            """,
            choices=MODES,
        )
        loader.add_option(
            "accessgate_log_query",
            bool,
            False,
            """
            Keep query strings in the audit log's path field.  Off by default:
            query strings often carry search terms and tokens.
            """,
        )
        loader.add_option(
            "accessgate_pseudonymize_key",
            str,
            "",
            """
            Path of a key file (at least 16 random bytes).  When set, the audit
            log holds keyed pseudonyms instead of user names; auditors with the
            key re-identify with `accessgate audit reveal`.
            """,
        )
        loader.add_option(
            "accessgate_audit_retention_days",
            int,
            0,
            """
            Delete rotated audit logs older than this many days (checked at
            start and hourly).  0 keeps them forever.
            """,
        )
        self._claim_next_layer()

    def _claim_next_layer(self) -> None:
        """Put _LastWord at the end of mitmproxy's addon chain (once; a reloaded script takes it over)."""
        addons = ctx.master.addons if ctx.master is not None else None
        if addons is None:
            return
        last = addons.get(_LastWord.name)
        if last is None:
            addons.add(_LastWord(self))
        else:
            last.gate = self

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
        # Read on every request; ctx.options deep-copies each value it returns.
        # configure runs on every change (and again on a rollback), so these follow.
        self._enforce = o.accessgate_mode == "enforce"
        self._log_query = bool(o.accessgate_log_query)
        # mitmproxy's own options; absent only where its proxy server is not loaded (unit tests).
        self._late_streaming = _streams_late(
            getattr(o, "stream_large_bodies", None), getattr(o, "body_size_limit", None)
        )
        if "accessgate_audit_retention_days" in updated and o.accessgate_audit_retention_days < 0:
            raise exceptions.OptionsError(
                "accessgate_audit_retention_days must be 0 (keep forever) or a number of days"
            )
        if "accessgate_policy" in updated:
            policy, files, read_at = self._load_policy_option(o.accessgate_policy)
        else:
            policy = None
        if "accessgate_pseudonymize_key" in updated:
            self._pseudonym_key = self._read_key(o.accessgate_pseudonymize_key)
        if updated & {"accessgate_state", "accessgate_pseudonymize_key"}:
            self._open_state(o.accessgate_state)
        if updated & {"accessgate_audit_log", "accessgate_pseudonymize_key"}:
            self._open_audit(o.accessgate_audit_log)
        if "accessgate_metrics" in updated:
            self._start_metrics(o.accessgate_metrics)
        if policy is not None:
            self._install(policy)
            self._files, self._files_read_at = files, read_at
            if self.watch is not None:
                self.watch.rebase(files, read_at)

    def _load_policy_option(self, path: str) -> tuple[Policy, Fingerprint, int]:
        """The policy at `path`, the files it was read from and when: at start, or when the option changes."""
        if not path:
            raise exceptions.OptionsError(
                "no policy: set accessgate_policy=PATH (e.g. --set accessgate_policy=policy/example.yaml)"
            )
        read_at = time.time_ns()
        files: list = []
        try:
            policy = load_policy(path, files=files)
        except PolicyError as exc:
            self._count_reload("failure")
            raise exceptions.OptionsError(str(exc)) from None
        except Exception as exc:  # MemoryError and the like: still a policy that cannot be used
            self._count_reload("failure")
            raise exceptions.OptionsError(
                f"policy {path} could not be loaded ({type(exc).__name__}: {str(exc)[:200]}); "
                "run `accessgate check` on it"
            ) from None
        return policy, tuple(dict(files).items()), read_at

    @staticmethod
    def _read_key(path: str) -> bytes | None:
        if not path:
            return None
        from accessgate.audit.pseudonym import read_key

        try:
            return read_key(path, private=True)
        except (OSError, ValueError) as exc:
            raise exceptions.OptionsError(f"accessgate_pseudonymize_key: {exc}") from None

    def _open_state(self, spec: str) -> None:
        from accessgate.stores import open_store

        _ensure_parent(spec[len("sqlite:") :] if spec.startswith("sqlite:") else "")
        try:
            # Quota subjects follow the audit log: pseudonyms when it has them.
            store = open_store(spec, on_error=self._state_error, pseudonymize_key=self._pseudonym_key)
        except (ValueError, OSError) as exc:
            raise exceptions.OptionsError(str(exc)) from None
        except Exception as exc:  # StateStoreError and whatever the backend raises
            raise exceptions.OptionsError(f"accessgate_state {spec!r} cannot be opened: {exc}") from None
        old, self.ledger = self.ledger, TimedLedger(store, self.metrics.state_seconds)
        self._marked.clear()
        if old is not None:
            _quietly(old.close)

    def _state_error(self, exc: Exception) -> None:
        kind = getattr(getattr(self.ledger, "spec", None), "kind", "unknown")
        _quietly(lambda: self.metrics.state_errors.labels(store=kind).inc())
        log.warning("state_store_error", error=str(exc))

    def _open_audit(self, path: str) -> None:
        from accessgate.audit.writer import AuditLog

        old, self.audit = self.audit, None
        if old is not None:
            _quietly(old.close)
        if not path:
            return
        try:
            _ensure_parent(path)
            self.audit = AuditLog(
                path,
                pseudonymize_key=self._pseudonym_key,
                on_error=lambda exc: log.error("audit_write_failed", error=str(exc)),
                on_flush=self.metrics.observe_audit,
            )
        except OSError as exc:
            raise exceptions.OptionsError(f"accessgate_audit_log {path!r}: {exc}") from None

    def _init_metrics(self) -> None:
        from prometheus_client import CollectorRegistry

        from accessgate.proxy.metrics import Metrics

        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)

    def _start_metrics(self, value: str) -> None:
        from accessgate.proxy.metrics import MetricsServer

        old, self.metrics_server = self.metrics_server, None
        if old is not None:
            _quietly(old.stop)
        self.metrics_port = None
        if not value:
            return
        host, port = _parse_listen(value)
        server = MetricsServer(self.registry, host, port)
        try:
            self.metrics_port = server.start()
        except OSError as exc:
            raise exceptions.OptionsError(
                f"accessgate_metrics: cannot listen on {value}: {exc.strerror or exc}; "
                "pick a free port or leave it empty"
            ) from None
        self.metrics_server = server
        log.info("metrics_listening", host=host, port=self.metrics_port)

    # -- policy --------------------------------------------------------------

    def _install(self, policy: Policy) -> None:
        """Swap in a valid policy: one reference assignment, so every request sees one whole policy."""
        _quietly(lambda: engine.prepare(policy))
        self.policy = policy
        self._generation += 1
        self._count_reload("success")
        _quietly(lambda: self.metrics.set_policy(policy.short_digest))
        self._audit_event(
            "policy_loaded", policy=policy.short_digest, sources=list(policy.sources)
        )
        log.info("policy_loaded", policy=policy.short_digest, sources=list(policy.sources), engine=engine.BUILD)
        for warning in policy.warnings:
            log.warning("policy_warning", policy=policy.short_digest, warning=warning)
        _quietly(settle_after_load)

    def _reject(self, path: str, problems: list[str]) -> None:
        self._count_reload("failure")
        current = self.policy.short_digest if self.policy else None
        self._audit_event("policy_rejected", file=path, problems=problems, policy=current)
        log.error("policy_rejected", file=path, problems=problems, kept=current)

    def _count_reload(self, result: str) -> None:
        _quietly(lambda: self.metrics.observe_reload(result == "success", time.time()))

    async def _reload(self) -> Fingerprint | None:
        """Load the policy file again; the watcher runs this, one call at a time.

        Returns the files as this load read them, or None when the attempt
        does not count and must be repeated: a file was still being written
        (not settled when read, or changed since), or the policy option was
        set meanwhile (its load is newer than this one).
        """
        path = ctx.options.accessgate_policy
        generation = self._generation
        started = time.time_ns()
        files: list = []
        policy = error = None
        try:
            policy = await asyncio.to_thread(load_policy, path, files)
        except PolicyError as exc:
            error = exc
        except Exception as exc:  # MemoryError, RecursionError ...: a rejection like any other
            log.exception("policy_load_failed", file=path)
            error = exc
        read = tuple(dict(files).items()) or fingerprint([path])  # a missing include named twice: once
        if self._generation != generation or ctx.options.accessgate_policy != path:
            return None
        if not settled(read, started) or fingerprint(p for p, _ in read) != read:
            return None
        if isinstance(error, PolicyError):
            self._reject(path, error.lines())
        elif error is not None:
            self._reject(path, [f"{path}: the policy could not be loaded ({type(error).__name__}: "
                                f"{str(error)[:200]}); run `accessgate check {path}`"])
        elif self.policy is None or policy.digest != self.policy.digest:
            self._install(policy)
        return read

    def _reload_crashed(self, exc: BaseException) -> None:
        self._count_reload("failure")
        log.error("policy_reload_crashed", error=f"{type(exc).__name__}: {exc}"[:500], exc_info=exc)

    # -- life cycle ----------------------------------------------------------

    def running(self) -> None:
        self._running = True
        self.watch = PolicyWatch(
            lambda: ctx.options.accessgate_policy, self._reload, on_crash=self._reload_crashed
        )
        self.watch.rebase(self._files, self._files_read_at)
        self.watch.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping()))
        self._tasks.append(loop.create_task(self._review_long_lived()))
        try:
            # logrotate's postrotate (`systemctl reload`) sends SIGHUP; mitmdump
            # alone would die of it.
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # not the main thread, or no SIGHUP on this platform

    def _sighup(self) -> None:
        """Reopen the audit log (it was rotated) and re-read the policy now."""
        if self.audit is not None:
            _quietly(self.audit.reopen)
        log.info("sighup", audit_log=str(self.audit.path) if self.audit is not None else None)
        if self.watch is not None:
            self.watch.request()  # the watcher's task runs it: reloads never overlap

    async def _housekeeping(self) -> None:
        while True:
            days = ctx.options.accessgate_audit_retention_days
            if days and self.audit is not None:
                _quietly(lambda: self.audit.prune_rotated(days, time.time()))
            await asyncio.sleep(3600)

    async def _review_long_lived(self) -> None:
        while True:
            await asyncio.sleep(LONG_LIVED_REVIEW_SECONDS)
            try:
                self._charge_unseen_tunnels()
                self._close_expired_flows()
            except Exception as exc:  # the review must go on; the error is counted
                log.error("fail_closed", stage="long-lived-review", error=repr(exc), exc_info=exc)
                _quietly(lambda: self.metrics.fail_closed.labels(stage="long-lived-review").inc())

    def _close_expired_flows(self) -> None:
        """Close open flows that the policy now blocks: window over, quota spent, access revoked."""
        if self.policy is None or not self.enforcing or not len(self._long):
            return
        now = datetime.now(timezone.utc)
        for key, entry, decision in self._long.to_close(self.policy, now, self.ledger):
            self._close_long_lived(key, entry, decision)

    def _close_long_lived(self, key, entry, decision: Decision) -> None:
        self._long.untrack(key)
        flow = entry.flow
        if isinstance(flow, RawTunnel):
            st = flow.st
            flow.closed = f"closed: {decision.reason}"
        else:
            st = flow.metadata.get(META)
        self._audit_event(
            "flow_closed",
            request_id=st.request_id if isinstance(st, FlowState) else None,
            user=entry.identity.user,
            site=decision.site,
            reason=decision.reason,
            rule=decision.rule,
            policy=self.policy.short_digest if self.policy is not None else None,
        )
        log.info("flow_closed", site=decision.site, reason=decision.reason)
        _close_client(flow)

    def _track_long_lived(self, flow: http.HTTPFlow, st: FlowState, request: engine.Request | None = None) -> None:
        if st.decision.allowed:
            if request is None:
                request = request_of(flow, self._tunnels.get(flow.client_conn.id, ()))
            self._long.track(flow.id, flow, request, st.identity, st.decision.site)

    def _active(self, key) -> bool:
        """An open flow carried traffic.  Its first traffic in a minute is decided
        again and, allowed, spends that minute; blocked, the flow is closed and
        False returned (the traffic is dropped where it can be).

        Deciding first matters: a quota minute spent on traffic alone would let
        a flow that sends at the turn of the minute run on past its quota.
        """
        now = datetime.now(timezone.utc)
        entry = self._long.activity(key, now)
        policy = self.policy
        if entry is None or policy is None:
            return True
        decision = self._decide(entry.request, entry.identity, policy, now)
        if decision.allowed:
            self._spend_quota(decision, entry.identity, policy, now)
            return True
        if not self.enforcing:
            return True
        self._close_long_lived(key, entry, decision)
        return False

    def _stream_counter(self, flow: http.HTTPFlow, st: FlowState, attr: str, request: engine.Request):
        """mitmproxy's stream callable for one body: counts its bytes, and from its
        first byte keeps the flow open to review and charges its minutes."""
        setattr(st, attr, 0)
        tracked = False

        def count(chunk: bytes) -> bytes | list[bytes]:
            nonlocal tracked
            if chunk:
                setattr(st, attr, getattr(st, attr) + len(chunk))
                try:
                    if not tracked:
                        tracked = True
                        self._track_long_lived(flow, st, request)
                    if not self._active(flow.id):
                        return []  # closed: nothing more is sent (b"" would end a chunked body)
                except Exception as exc:
                    self._fail_long_lived(flow, "stream", exc)
                    return []
            return chunk

        return count

    # -- raw relays ------------------------------------------------------------

    def _open_tunnel(self, tunnel: RawTunnel, request: engine.Request) -> None:
        """Keep an allowed raw relay: reviewed, charged from now on, audited when it ends."""
        old = self._raw.get(tunnel.client.id)
        if old is not None:  # one relay per connection; an earlier one ended without its record
            self._end_tunnel(old)
        self._raw[tunnel.client.id] = tunnel
        st = tunnel.st
        self._long.track(tunnel.key, tunnel, request, st.identity, st.decision.site)
        self._tunnel_activity(tunnel)

    def _relayed(self, tunnel: RawTunnel, from_client: bool, size: int) -> bool:
        """Bytes passed a raw relay: count them.  False: the relay is closed, drop them."""
        if from_client:
            tunnel.bytes_in += size
        else:
            tunnel.bytes_out += size
        if tunnel.closed is not None:
            return False
        if int(time.time()) // 60 == tunnel.minute:
            return True
        try:
            return self._tunnel_activity(tunnel)
        except Exception as exc:
            log.error("fail_closed", stage="tcp_message", error=repr(exc), exc_info=exc)
            _quietly(lambda: self.metrics.fail_closed.labels(stage="tcp_message").inc())
            self._long.untrack(tunnel.key)
            tunnel.closed = "failed closed"
            _quietly(lambda: _close_client(tunnel))
            return False

    def _tunnel_activity(self, tunnel: RawTunnel) -> bool:
        tunnel.minute = int(time.time()) // 60
        return self._active(tunnel.key)

    def _charge_unseen_tunnels(self) -> None:
        """Relays whose bytes accessgate cannot see are charged every minute they are open."""
        for tunnel in list(self._raw.values()):
            if tunnel.unseen and tunnel.closed is None and int(time.time()) // 60 != tunnel.minute:
                self._tunnel_activity(tunnel)

    def _end_tunnel(self, tunnel: RawTunnel) -> None:
        """Its connection ended: the one audit record of the relay, with the bytes it carried."""
        if self._raw.get(tunnel.client.id) is tunnel:
            del self._raw[tunnel.client.id]
        self._long.untrack(tunnel.key)
        if not tunnel.st.logged:
            self._audit_flow(tunnel.st, tunnel.status, tunnel.bytes_in, tunnel.bytes_out, tunnel.closed)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._on_long_lived(flow, "websocket_start", self._track_long_lived)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self._on_long_lived(flow, "websocket_message", self._websocket_activity)

    def _websocket_activity(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if not self._active(flow.id) and flow.websocket is not None and flow.websocket.messages:
            flow.websocket.messages[-1].drop()  # the flow is closed: this message goes nowhere

    def _on_long_lived(self, flow: http.HTTPFlow, stage: str, action) -> None:
        try:
            st = flow.metadata.get(META)
            if isinstance(st, FlowState):
                action(flow, st)
        except Exception as exc:
            self._fail_long_lived(flow, stage, exc)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._long.untrack(flow.id)

    def tcp_start(self, flow) -> None:
        """A raw relay starts: one accessgate allowed already, or one mitmproxy made itself."""
        try:
            if flow.client_conn.id not in self._raw:
                self._undecided_relay(flow)
        except Exception as exc:
            log.error("fail_closed", stage="tcp_start", error=repr(exc), exc_info=exc)
            _quietly(lambda: self.metrics.fail_closed.labels(stage="tcp_start").inc())
            _quietly(lambda: _close_connection(flow.client_conn))

    def tcp_message(self, flow) -> None:
        tunnel = self._raw.get(flow.client_conn.id)
        if tunnel is not None and tunnel.counted_by_hooks and flow.messages:
            message = flow.messages[-1]
            if not self._relayed(tunnel, message.from_client, len(message.content)):
                message.content = b""  # the relay is closed: these bytes go nowhere

    def _fail_long_lived(self, flow: http.HTTPFlow, stage: str, exc: BaseException) -> None:
        """Fail closed on an open connection: count it, log it, close it."""
        log.error("fail_closed", stage=stage, error=repr(exc), exc_info=exc)
        _quietly(lambda: self.metrics.fail_closed.labels(stage=stage).inc())
        self._long.untrack(flow.id)
        _quietly(lambda: _close_client(flow))

    def done(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except Exception:
            pass
        if self.watch is not None:
            self.watch.stop()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        for tunnel in list(self._raw.values()):  # still open: their records go out now
            _quietly(lambda: self._end_tunnel(tunnel))
        last = ctx.master.addons.get(_LastWord.name) if ctx.master is not None else None
        if last is not None and last.gate is self:
            last.gate = None
        if self.audit is not None:
            _quietly(self.audit.close)  # drains: no record is lost on a clean stop
        if self.ledger is not None:
            _quietly(self.ledger.close)
        if self.metrics_server is not None:
            _quietly(self.metrics_server.stop)

    # -- helpers shared by the hooks ----------------------------------------

    @property
    def enforcing(self) -> bool:
        return self._enforce

    def _decide(self, request: engine.Request, identity: Identity, policy: Policy, now: datetime) -> Decision:
        t0 = time.perf_counter()
        decision = engine.decide(request, identity, policy, now, self.ledger)
        try:  # as _quietly, without a closure per request
            self.metrics.observe_decision(decision, time.perf_counter() - t0)
        except Exception:
            log.exception("ignored_error")
        return decision

    def _identity(self, flow: http.HTTPFlow) -> Identity:
        """identity_for_flow(flow), kept per connection and user.

        A connection usually carries one user (proxyauth copies a CONNECT's
        credentials into the tunnel), but a parent proxy or a test client
        may send several users' requests over one; each keeps its identity.
        """
        client = flow.client_conn
        user = user_from_proxyauth(flow.metadata.get("proxyauth"))
        users = self._identities.get(client.id)
        if users is None:
            users = self._identities[client.id] = {}
        identity = users.get(user)
        if identity is None:
            if users:
                ip = next(iter(users.values())).client_ip
                if len(users) >= _USERS_PER_CONNECTION:
                    users.clear()
            else:
                ip = client_ip(client.peername)
            identity = users[user] = Identity(user=user, client_ip=ip)
        return identity

    def client_disconnected(self, client) -> None:
        self._identities.pop(client.id, None)
        self._tunnels.pop(client.id, None)
        tunnel = self._raw.get(client.id)
        if tunnel is not None:
            try:
                self._end_tunnel(tunnel)
            except Exception:
                log.exception("ignored_error")

    def _policy(self) -> Policy:
        policy = self.policy
        if policy is None:
            raise RuntimeError("no policy is loaded")
        return policy

    def _spend_quota(self, decision: Decision, identity: Identity, policy: Policy, now: datetime) -> None:
        """Count this minute against the site's daily quota (idempotent in the store)."""
        if not (decision.allowed and decision.counts_quota and decision.site):
            return
        minute = engine.minute_of(now)
        key = (identity.subject, decision.site)
        if self._marked.get(key) == minute:
            return
        try:
            self.ledger.mark(identity.subject, decision.site, engine.local_day(now, policy), minute)
        except StateStoreError as exc:
            # The request was allowed on a usage the store gave moments ago;
            # this minute goes uncounted.  The store already reported the
            # error (logged, counted); no traceback per request.
            log.warning("quota_minute_not_counted", site=decision.site, error=str(exc))
            return
        if len(self._marked) > 100_000:
            self._marked.clear()
        self._marked[key] = minute
        _quietly(
            lambda: self.metrics.quota_minutes.labels(
                site=decision.site, role=decision.role or "none"
            ).inc()
        )

    def _audit_event(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.write({"event": event, "ts": datetime.now(timezone.utc), **fields})

    def _audit_flow(self, st: FlowState, status: int | None, bytes_in: int, bytes_out: int, error: str | None = None) -> None:
        st.logged = True
        d = st.decision
        if self.audit is not None:
            # Made into a record by the writer thread; the decision and
            # `enforced` are passed as they are now (_fail may change them).
            self.audit.defer(
                access_record, st, d, st.enforced, status, bytes_in, bytes_out, time.perf_counter() - st.started, error
            )
        try:  # as _quietly, without closures per request
            site = site_label(d)
            if bytes_in:
                self.metrics.count_bytes(site, "in", bytes_in)
            if bytes_out:
                self.metrics.count_bytes(site, "out", bytes_out)
        except Exception:
            log.exception("ignored_error")

    def _state(
        self,
        flow: http.HTTPFlow,
        decision: Decision,
        identity: Identity,
        now: datetime,
        started: float,
        policy: Policy | None,
        enforced: bool,
        request: engine.Request | None = None,
    ) -> FlowState:
        """The flow's state; `request`, when given, is the engine's view of
        the flow (read from it already: mitmproxy decodes on every access)."""
        rq = flow.request
        if request is not None and not self._log_query:
            method, scheme, path = request.method, request.scheme, request.path
        else:
            method, scheme = rq.method, rq.scheme
            path = rq.path if self._log_query else path_without_query(rq.path)
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

    def _block_response(self, flow: http.HTTPFlow, st: FlowState, accept: str | None = None) -> int | None:
        """Answer `flow` with the block page; returns the status sent (None: killed)."""
        d = st.decision
        headers_base = {
            "X-Accessgate-Decision": "block",
            "X-Accessgate-Reason": d.reason,
            "X-Accessgate-Request-Id": st.request_id,
        }
        try:
            from accessgate.proxy import pages

            status, headers, body = pages.block_response(
                d,
                request_id=st.request_id,
                contact=ctx.options.accessgate_contact,
                url=flow.request.pretty_url,
                now=st.ts,
                accept=accept if accept is not None else flow.request.headers.get("accept", ""),
                # "Opens again at 12:00" in the policy's zone, as the policy is written.
                timezone=self.policy.timezone if self.policy is not None else None,
            )
        except Exception:
            log.exception("block_page_failed", request_id=st.request_id)
            _quietly(lambda: self.metrics.fail_closed.labels(stage="block-page").inc())
            status, headers, body = 403, {"Content-Type": "text/plain; charset=utf-8"}, (
                f"Blocked by accessgate ({d.reason}). Request id {st.request_id}.\n".encode()
            )
        headers = {**dict(headers), **headers_base}
        st.blocked_here = True
        if flow.request.method != "CONNECT" and (
            flow.request.stream
            or _declares_large_body(flow.request)
            or (self._late_streaming and _request_length_unknown(flow.request))
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

    def _fail(self, flow: http.HTTPFlow | None, stage: str, exc: BaseException) -> None:
        """An exception in a hook: log, count, audit and block (fail closed)."""
        log.error("fail_closed", stage=stage, error=repr(exc), exc_info=exc)
        _quietly(lambda: self.metrics.fail_closed.labels(stage=stage).inc())
        if flow is None:
            return
        try:
            st = flow.metadata.get(META)
            enforced = self.enforcing
            decision = _internal_error(type(exc).__name__)
            if isinstance(st, FlowState):
                st.decision = decision
                st.enforced = enforced
            else:
                st = self._state(
                    flow, decision, identity_for_flow(flow), datetime.now(timezone.utc),
                    time.perf_counter(), self.policy, enforced,
                )
            if not enforced:
                return  # audit mode blocks nothing; the record says what would have happened
            if stage == "responseheaders" and flow.killable:
                # The site's body is still to come, and mitmproxy reads it into
                # whatever response the flow holds: a block page set here went
                # out carrying the site's bytes.  Only killing withholds them.
                flow.kill()
                st.blocked_here = True
                self._audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="killed")
                return
            if flow.response is not None and not st.blocked_here:
                flow.response = None
            if flow.killable:
                status = self._block_response(flow, st)
                self._audit_flow(st, status=status, bytes_in=0, bytes_out=0,
                                 error=None if status else "killed")
            elif not st.logged:
                self._audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="failed closed")
        except Exception:
            log.exception("fail_closed_failed", stage=stage)
            if flow.killable:
                flow.kill()

    # -- hooks ---------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            self._http_connect(flow)
        except Exception as exc:
            self._fail(flow, "http_connect", exc)

    def _http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # proxyauth answered 407: leave it alone
        policy = self._policy()
        now = datetime.now(timezone.utc)
        started = time.perf_counter()
        request = connect_request(flow)
        identity = self._identity(flow)
        if self._tunnel_may_be_uninspected():
            decision = self._decide(request, identity, policy, now)
            if not decision.allowed and self.enforcing:
                st = self._state(flow, decision, identity, now, started, policy, True)
                status = self._block_response(flow, st, accept="application/json")
                self._audit_flow(st, status=status, bytes_in=0, bytes_out=0)
                return
        # Let it through: the requests inside are decided with this name too.
        client_id = flow.client_conn.id
        self._tunnels[client_id] = self._tunnels.get(client_id, ()) + request.hosts

    @staticmethod
    def _tunnel_may_be_uninspected() -> bool:
        o = ctx.options
        return bool(o.ignore_hosts or o.allow_hosts or o.tcp_hosts)

    def passthrough_asked(self, data: tls.ClientHelloData) -> None:
        """Every addon has seen the ClientHello (called by _LastWord, after them)."""
        try:
            if not data.ignore_connection:
                return
            # Another addon wants this connection relayed unread: a tunnel
            # like any other, decided as a write on every name it has.
            client = data.context.client
            names = [*self._tunnel_names(data.context), *_server_names(data.client_hello)]
            decision = self._decide_connection(client, names, TUNNEL)
            if not decision.allowed and self.enforcing:
                data.ignore_connection = False  # intercept, so that each request inside is decided
                return
            # mitmproxy relays it from inside its TLS layer, where no byte can be
            # counted: every minute it is open is charged.
            tunnel = RawTunnel(("tcp", client.id), client, self._tunnel_state(client, decision, names), unseen=True)
            self._open_tunnel(tunnel, tunnel_request(names, TUNNEL))
        except Exception as exc:
            self._fail(None, "tls_clienthello", exc)
            data.ignore_connection = False

    def _decide_connection(self, client, names: list[str], method: str) -> Decision:
        return self._decide(tunnel_request(names, method), self._connection_identity(client), self._policy(),
                            datetime.now(timezone.utc))

    @staticmethod
    def _connection_identity(client) -> Identity:
        proxyauth = ctx.master.addons.get("proxyauth")
        return identity_for_connection(client, getattr(proxyauth, "authenticated", None))

    def _tunnel_names(self, context) -> list[str]:
        """The names a connection has before its bytes are read: CONNECT targets, server address, SNI."""
        names = list(self._tunnels.get(context.client.id, ()))
        if context.server.address:
            names.append(str(context.server.address[0]))
        if context.client.sni:
            names.append(context.client.sni)
        return names

    def _tunnel_state(self, client, decision: Decision, names: list[str]) -> FlowState:
        policy = self.policy
        return FlowState(
            request_id=new_request_id(),
            started=time.perf_counter(),
            ts=datetime.now(timezone.utc),
            decision=decision,
            identity=self._connection_identity(client),
            enforced=self.enforcing,
            policy=policy.short_digest if policy else "",
            method="CONNECT",
            scheme="tcp",
            host=decision.host or (names[0] if names else ""),
            path="",
        )

    def next_layer_chosen(self, nextlayer: layer.NextLayer) -> None:
        """mitmproxy has chosen the next layer of a connection (called by _LastWord, after it)."""
        try:
            self._next_layer(nextlayer)
        except Exception as exc:
            self._fail(None, "next_layer", exc)
            if self.enforcing:
                _replace_layer(nextlayer, _Refuse(nextlayer.context))

    def _next_layer(self, nextlayer: layer.NextLayer) -> None:
        chosen = nextlayer.layer
        if not isinstance(chosen, _UNINSPECTED) or isinstance(chosen, _Relay):
            return  # read by mitmproxy (TLS, HTTP, ...), or undecided yet, or ours
        context = nextlayer.context
        names = self._tunnel_names(context)
        if not names:
            return  # not a proxied tunnel (e.g. a transparent-mode flow with no target)
        tcp = isinstance(chosen, layers.TCPLayer)
        data = nextlayer.data_client()
        # Bytes from the server first: no TLS or HTTP server speaks first.
        may_wait = (tcp and not nextlayer.data_server() and len(data) < firstbytes.WAIT_LIMIT
                    and len(nextlayer.events) < firstbytes.WAIT_PIECES)
        hello = firstbytes.read_hello(data) if tcp else firstbytes.HelloRead(firstbytes.Hello.NONE)
        if may_wait and hello.state is firstbytes.Hello.PARTIAL:
            # A ClientHello still coming (its first bytes alone, say): wait for
            # all of it, to intercept it or decide every name it carries.
            _replace_layer(nextlayer, None)
            return
        passed = not tcp or self._operator_passes(context, data, nextlayer.data_server())
        if not passed and may_wait and firstbytes.could_become_http(data):
            _replace_layer(nextlayer, None)  # a request line still coming: mitmproxy will read it
            return
        names.extend(hello.names)
        if passed and data[:3].isalpha():
            names.extend(firstbytes.http_hosts(data))
        decision = self._decide_connection(context.client, names, TUNNEL)
        if decision.allowed and (not passed or hello.state in (firstbytes.Hello.PARTIAL, firstbytes.Hello.INVALID)):
            # Neither TLS nor HTTP where every tunnel is meant to be read, or a
            # ClientHello nobody can read: what it carries cannot be decided.
            decision = _unreadable(decision)
        refused = not decision.allowed and self.enforcing
        log.info(
            "tunnel_uninspected",
            decision=decision.decision,
            reason=decision.reason,
            rule=decision.rule,
            site=decision.site,
            enforced=self.enforcing,
        )
        st = self._tunnel_state(context.client, decision, names)
        if refused:
            _replace_layer(nextlayer, _Refuse(context))
            self._audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="tunnel refused")
            return
        if not tcp:
            self._audit_flow(st, status=None, bytes_in=0, bytes_out=0)
            return
        tunnel = RawTunnel(("tcp", context.client.id), context.client, st)
        _replace_layer(nextlayer, _Relay(context, chosen.flow is None, tunnel, self._relayed))
        self._open_tunnel(tunnel, tunnel_request(names, TUNNEL))

    @staticmethod
    def _operator_passes(context, data_client: bytes, data_server: bytes) -> bool:
        """The operator asked for this tunnel to be relayed (ignore_hosts, allow_hosts, tcp_hosts match)."""
        if not isinstance(context.client.proxy_mode, _EXPLICIT_PROXY):
            return True  # transparent and reverse modes relay what they do not know; decided on names
        o = ctx.options
        if not (o.ignore_hosts or o.allow_hosts or o.tcp_hosts):
            return False  # no such option: mitmproxy chose a raw relay on its own
        builtin = ctx.master.addons.get("nextlayer")
        if builtin is None:
            return True  # another addon chose the relay: that is the operator's configuration
        try:
            if builtin._ignore_connection(context, data_client, data_server):
                return True
        except Exception:
            pass  # it wants more bytes: then it did not choose on these names
        return bool(builtin._is_destination_in_hosts(context, builtin.tcp_hosts))

    def _undecided_relay(self, flow) -> None:
        """A raw relay accessgate did not decide (an upgrade answered with 101 without a request
        hook to catch it, or one made by another addon): decided now, as a write."""
        client = flow.client_conn
        names = list(self._tunnels.get(client.id, ()))
        if flow.server_conn.address:
            names.append(str(flow.server_conn.address[0]))
        if client.sni:
            names.append(client.sni)
        decision = self._decide_connection(client, names, TUNNEL) if names else _internal_error("no name")
        st = self._tunnel_state(client, decision, names)
        if not decision.allowed and self.enforcing:
            self._audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="tunnel refused")
            _close_connection(client)
            return
        self._open_tunnel(RawTunnel(("tcp", client.id), client, st, counted_by_hooks=True),
                          tunnel_request(names, TUNNEL))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            if flow.response is not None or flow.error is not None:
                return  # a preset answer (proxyauth's 407) or a killed flow: not ours to decide
            started = time.perf_counter()
            now = datetime.now(timezone.utc)
            policy = self._policy()
            identity = self._identity(flow)
            tunnel_names = self._tunnels.get(flow.client_conn.id, ())
            scan = scan_request(flow, tunnel_names)
            if scan.private or scan.folded:
                # Before anything else reads them: see _sanitize.
                _sanitize(flow.request.headers, scan.private, scan.folded)
                if scan.folded:
                    scan = scan_request(flow, tunnel_names)
            request = scan.request
            if _names_status(flow, scan.host_values):
                self._answer_status(flow, identity, policy, now)
                return
            decision = self._decide(request, identity, policy, now)
            enforced = self._enforce
            st = self._state(flow, decision, identity, now, started, policy, enforced, request)
            if not decision.allowed and enforced:
                status = self._block_response(flow, st)
                self._audit_flow(st, status, 0, st.streamed_out or 0, None if status else "killed")
                return
            if decision.counts_quota:
                self._spend_quota(decision, identity, policy, now)
            if flow.request.stream is True or (self._late_streaming and _request_length_unknown(flow.request)):
                # A body mitmproxy streams, or may start to stream once it grows
                # past stream_large_bodies (with no hook then): counted and kept
                # under review from its first byte.
                flow.request.stream = self._stream_counter(flow, st, "streamed_in", request)
        except Exception as exc:
            self._fail(flow, "requestheaders", exc)

    def _answer_status(self, flow: http.HTTPFlow, identity: Identity, policy: Policy, now: datetime) -> None:
        from accessgate.proxy import pages

        roles = engine.roles_for(identity, policy)
        rows = pages.standing(policy, identity, now, self.ledger)
        status, headers, body = pages.status_response(
            identity=identity, roles=roles, rows=rows, now=now,
            accept=flow.request.headers.get("accept", ""),
            timezone=policy.timezone,
        )
        flow.response = http.Response.make(status, body, dict(headers))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            st = flow.metadata.get(META)
            if not isinstance(st, FlowState) or st.blocked_here:
                return
            _drop_alt_svc(flow.response.headers)
            if flow.response.stream is True or (self._late_streaming and _response_length_unknown(flow)):
                request = request_of(flow, self._tunnels.get(flow.client_conn.id, ()))
                flow.response.stream = self._stream_counter(flow, st, "streamed_out", request)
        except Exception as exc:
            self._fail(flow, "responseheaders", exc)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._long.untrack(flow.id)
        try:
            st = flow.metadata.get(META)
            if not isinstance(st, FlowState) or st.logged:
                return
            if flow.response.status_code == 101 and flow.websocket is None:
                self._upgraded_to_raw(flow, st)
                return
            self._audit_flow(
                st,
                flow.response.status_code,
                _size(flow.request.raw_content, st.streamed_in),
                _size(flow.response.raw_content, st.streamed_out),
            )
        except Exception as exc:
            self._fail(flow, "response", exc)

    def _upgraded_to_raw(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """The site answered 101 to a protocol mitmproxy does not read (a WebSocket of another
        version than 13, any other Upgrade): the connection becomes a raw relay next.

        Decided again as a write on every name the request gave, whatever its
        method; allowed, it is kept like a WebSocket and its record waits for
        its end, with the bytes it carried.
        """
        request = request_of(flow, self._tunnels.get(flow.client_conn.id, ()))
        decision = self._decide(tunnel_request(request.hosts, TUNNEL), st.identity, self._policy(),
                                datetime.now(timezone.utc))
        if not decision.allowed:
            st.decision = decision
            if st.enforced:
                flow.kill()  # before the 101 reaches the client
                st.blocked_here = True
                self._audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="killed")
                return
        client = flow.client_conn
        tunnel = RawTunnel(("tcp", client.id), client, st, status=101, counted_by_hooks=True)
        self._open_tunnel(tunnel, tunnel_request(request.hosts, TUNNEL))

    def error(self, flow: http.HTTPFlow) -> None:
        self._long.untrack(flow.id)
        try:
            st = flow.metadata.get(META)
            if not isinstance(st, FlowState) or st.logged:
                return
            self._audit_flow(
                st,
                status=None,
                bytes_in=_size(flow.request.raw_content, st.streamed_in),
                bytes_out=_size(flow.response.raw_content if flow.response else None, st.streamed_out),
                error=flow.error.msg if flow.error else "error",
            )
        except Exception as exc:
            log.error("fail_closed", stage="error", error=repr(exc), exc_info=exc)
            _quietly(lambda: self.metrics.fail_closed.labels(stage="error").inc())


# -- small helpers -------------------------------------------------------------


def _drop_alt_svc(headers: http.Headers) -> None:
    """No Alt-Svc: it would invite the browser to HTTP/3 over UDP, past the proxy."""
    # A scan of the raw names: pop() of an absent header raises and catches
    # a KeyError inside mitmproxy, on nearly every response.
    for name, _ in headers.fields:
        if len(name) == 7 and name.lower() == _ALT_SVC_B:
            del headers[_ALT_SVC]
            return


_IP_TEXTS: dict[int, tuple[Any, str]] = {}


def _ip_text(ip) -> str | None:
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


def _sanitize(headers: http.Headers, private: tuple[bytes, ...], folded: bool) -> None:
    """Before anything reads the headers: strip what is private, unfold what is folded.

    Nothing about the user reaches the site: no proxy credentials, no
    X-Accessgate-*.  `private` and `folded` are what `scan_request` found
    (the lower-case names of the private headers, and whether any value is
    folded); unfolding cannot make a new header, so the names stay complete.
    """
    for name in dict.fromkeys(private):
        del headers[name.decode("utf-8", "surrogateescape")]
    if folded:
        _unfold(headers)


_FOLD = re.compile(rb"\r?\n[ \t]*")


def _unfold(headers: http.Headers) -> None:
    """Replace each obs-fold with one space (RFC 9112 5.2), as a proxy must.

    mitmproxy keeps a folded value as it came, line break included, and
    forwards it; a server that reads the continuation as a line of its own
    would see a header, e.g. a second Host, that accessgate never decided.
    """
    headers.fields = tuple((name, _FOLD.sub(b" ", value)) for name, value in headers.fields)


def _names_status(flow: http.HTTPFlow, host_values: list[str]) -> bool:
    for name in (flow.request.data.host, *host_values):
        # The prefix first: a cheap "no" for nearly every request.
        if name[:_STATUS_PREFIX_LEN].lower() == _STATUS_PREFIX and name.lower().rstrip(".").split(":")[0] == STATUS_HOST:
            return True
    return False


_STATUS_PREFIX = STATUS_HOST.split(".")[0]
_STATUS_PREFIX_LEN = len(_STATUS_PREFIX)


def _declares_large_body(request: http.Request) -> bool:
    """A body too large to read just to refuse it (or of unknown size)."""
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return True
    try:
        return int(request.headers.get("content-length", "0")) > BLOCKED_BODY_READ_LIMIT
    except ValueError:
        return True  # a malformed length: nothing worth reading


def _close_client(flow: http.HTTPFlow | RawTunnel) -> None:
    """Close the client's connection, as if the client had hung up.

    `flow.kill()` does not stop a flow in transit (mitmproxy issue 4711), so
    the client transport is closed instead; mitmproxy then ends the WebSocket,
    stream or relay on both sides and runs its usual end hooks.  On an HTTP/2
    connection this ends the client's other streams too; the browser
    reconnects and every new request is decided afresh.
    """
    if isinstance(flow, RawTunnel):
        _close_connection(flow.client)
    elif not _close_connection(flow.client_conn) and flow.killable:
        flow.kill()


def _close_connection(client) -> bool:
    """Close a client connection's transport; False if it is gone already."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver else None
    io = handler.transports.get(client) if handler is not None else None
    if io is not None and io.writer is not None:
        io.writer.close()
        return True
    return False


def _replace_layer(nextlayer: layer.NextLayer, new: layer.Layer | None) -> None:
    """Put `new` where mitmproxy chose its layer (None: decide later, when more bytes came).

    A layer adds itself to its context's stack when it is made; the one
    mitmproxy made and we drop must leave it, or the layers above would
    find it as their parent.
    """
    old = nextlayer.layer
    if old is not None and old is not new and old in nextlayer.context.layers:
        nextlayer.context.layers.remove(old)
    nextlayer.layer = new


def _unreadable(decision: Decision) -> Decision:
    return Decision(
        engine.BLOCK,
        engine.DENIED,
        UNREADABLE,
        site=decision.site,
        roles=decision.roles,
        host=decision.host,
        message="This connection is neither TLS nor HTTP that the proxy can read, so what it carries "
        "cannot be checked; it is refused. Ask IT to list its host in tcp_hosts if it must pass.",
    )


def _streams_late(stream_large_bodies: str | None, body_size_limit: str | None) -> bool:
    """mitmproxy may switch a body of unknown length to streaming once it grows past the limit."""
    from mitmproxy.utils.human import parse_size

    try:
        stream, limit = parse_size(stream_large_bodies), parse_size(body_size_limit)
    except ValueError:
        return bool(stream_large_bodies)
    # With a smaller body_size_limit mitmproxy refuses such a body before it would stream it.
    return stream is not None and (limit is None or limit > stream)


def _request_length_unknown(request: http.Request) -> bool:
    """A request body that may grow past stream_large_bodies after the headers were decided."""
    headers = request.headers
    if "transfer-encoding" in headers:
        return True
    # HTTP/2 and 3 frame a body without Content-Length; mitmproxy then reads it as it comes.
    return request.data.http_version not in _HTTP1 and "content-length" not in headers


_HTTP1 = (b"HTTP/1.1", b"HTTP/1.0")


def _response_length_unknown(flow: http.HTTPFlow) -> bool:
    from mitmproxy.net.http.http1 import expected_http_body_size

    try:
        size = expected_http_body_size(flow.request, flow.response)
    except ValueError:
        return True
    return size is None or size < 0


def _size(content: bytes | None, streamed: int | None) -> int:
    if streamed is not None:
        return streamed
    return len(content) if content else 0


def _server_names(hello) -> list[str]:
    """Every name in every server_name extension of `hello`, not only mitmproxy's `sni`.

    mitmproxy reports no SNI at all when the extension lists two names (RFC
    6066 forbids it), yet OpenSSL servers then serve the first: a denied
    name first and an ignored host second made an uninspected tunnel to the
    denied site.  So each name is decided; one that is no host name blocks.
    """
    names = [hello.sni] if hello.sni else []
    try:
        for ext in hello._client_hello.extensions.extensions:
            if ext.type == 0x00:
                for entry in ext.body.server_names:
                    names.append(bytes(entry.host_name).decode("utf-8", "surrogateescape"))
    except Exception:
        pass  # mitmproxy parsed the hello; what it saw still decides
    return list(dict.fromkeys(names))


def _ensure_parent(path: str) -> None:
    if path:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _quietly(fn) -> None:
    """Metrics and clean-up must never turn a decided request into a failure."""
    try:
        fn()
    except Exception:
        log.exception("ignored_error")
