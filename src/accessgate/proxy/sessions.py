"""What stays open stays decided: WebSockets, streamed bodies and raw relays.

A request is decided when it starts, but a WebSocket to a lunch-time site can
stay open all afternoon, a stream can outlast a daily quota, and a relay that
mitmproxy does not read carries whatever it likes.  Such flows are tracked
here and, every second, decided again: the ones the policy now blocks (the
window closed, the quota ran out, a reload took the access away) are closed.

While a flow stays open and active, it spends quota like requests do: every
minute in which it carried traffic counts against the site's daily minutes,
otherwise one WebSocket would be an unmetered session.  Its first traffic in
a minute is decided again before it spends that minute.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, TypeVar

from mitmproxy import http

from accessgate.decision import Decision, Identity, Request, decide, minute_of
from accessgate.decision.quota import QuotaLedger
from accessgate.oplog import get_logger
from accessgate.policy.model import Policy
from accessgate.proxy.flows import request_of
from accessgate.proxy.gate import close_connection, count_failure, quietly
from accessgate.proxy.records import META, FlowState

if TYPE_CHECKING:
    from accessgate.proxy.addon import AccessGate

# How often open flows are decided again: a window's end or a spent quota
# closes them within this many seconds.
REVIEW_SECONDS = 1.0

log = get_logger("addon")

F = TypeVar("F")


@dataclass(slots=True)
class OpenFlow(Generic[F]):
    """One long-lived flow and what it was decided on.  Mutable: activity moves."""

    flow: F
    request: Request
    identity: Identity
    site: str | None
    last_active_minute: int | None = None


class LongLivedFlows(Generic[F]):
    """The open flows, each with the request and identity it was decided on."""

    def __init__(self) -> None:
        self._open: dict[Hashable, OpenFlow[F]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def track(self, key: Hashable, flow: F, request: Request, identity: Identity, site: str | None) -> None:
        self._open[key] = OpenFlow(flow, request, identity, site)

    def untrack(self, key: Hashable) -> None:
        self._open.pop(key, None)

    def activity(self, key: Hashable, now: datetime) -> OpenFlow[F] | None:
        """Note traffic on a flow; returns it when this is its first traffic this minute."""
        entry = self._open.get(key)
        if entry is None:
            return None
        minute = minute_of(now)
        if entry.last_active_minute == minute:
            return None
        entry.last_active_minute = minute
        return entry

    def to_close(
        self, policy: Policy, now: datetime, ledger: QuotaLedger | None
    ) -> list[tuple[Hashable, OpenFlow[F], Decision]]:
        """The open flows that `policy` blocks at `now`, with the blocking decision."""
        closing = []
        for key, entry in list(self._open.items()):
            # The ledger is the state store, which also knows who continued past a warn page.
            went_on = ledger if hasattr(ledger, "continued_until") else None
            decision = decide(entry.request, entry.identity, policy, now, ledger, went_on)
            if not decision.allowed:
                closing.append((key, entry, decision))
        return closing


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
    splice: Any = None  # splice.Splice: accessgate relays it itself, outside mitmproxy

    @property
    def handed_off(self) -> bool:
        """Relayed by accessgate itself and still open: mitmproxy's end of it is gone."""
        return self.splice is not None and self.splice.client_taken and not self.splice.ended


class Sessions:
    """The addon's open flows: tracked, reviewed every second, charged, closed, audited."""

    def __init__(self, gate: AccessGate) -> None:
        self._gate = gate
        self.flows: LongLivedFlows[http.HTTPFlow | RawTunnel] = LongLivedFlows()
        # Allowed raw relays by client connection id, until the connection ends.
        self.relays: dict[str, RawTunnel] = {}

    # -- the review ------------------------------------------------------------

    async def review(self) -> None:
        """Every second: charge the relays no byte of which is seen, close what the policy now blocks."""
        while True:
            await asyncio.sleep(REVIEW_SECONDS)
            try:
                self._charge_unseen()
                self._close_expired()
            except Exception as exc:  # the review must go on; the error is counted
                count_failure(self._gate.metrics, "long-lived-review", exc)

    def _close_expired(self) -> None:
        """Close open flows that the policy now blocks: window over, quota spent, access revoked."""
        gate = self._gate
        if gate.policy is None or not gate.enforcing or not len(self.flows):
            return
        now = datetime.now(timezone.utc)
        for key, entry, decision in self.flows.to_close(gate.policy, now, gate.ledger):
            self._close(key, entry, decision)

    def _close(self, key, entry: OpenFlow, decision: Decision) -> None:
        gate = self._gate
        self.flows.untrack(key)
        flow = entry.flow
        if isinstance(flow, RawTunnel):
            st = flow.st
            flow.closed = f"closed: {decision.reason}"
        else:
            st = flow.metadata.get(META)
        gate.audit_event(
            "flow_closed",
            request_id=st.request_id if isinstance(st, FlowState) else None,
            user=entry.identity.user,
            site=decision.site,
            reason=decision.reason,
            rule=decision.rule,
            policy=gate.policy.short_digest if gate.policy is not None else None,
        )
        log.info("flow_closed", site=decision.site, reason=decision.reason)
        close_client(flow)

    def _active(self, key) -> bool:
        """An open flow carried traffic.  Its first traffic in a minute is decided
        again and, allowed, spends that minute; blocked, the flow is closed and
        False returned (the traffic is dropped where it can be).

        Deciding first matters: a quota minute spent on traffic alone would let
        a flow that sends at the turn of the minute run on past its quota.
        """
        gate = self._gate
        now = datetime.now(timezone.utc)
        entry = self.flows.activity(key, now)
        policy = gate.policy
        if entry is None or policy is None:
            return True
        decision = gate.decide(entry.request, entry.identity, policy, now)
        if decision.allowed:
            gate.spend_quota(decision, entry.identity, policy, now)
            return True
        if not gate.enforcing:
            return True
        self._close(key, entry, decision)
        return False

    def fail(self, flow: http.HTTPFlow, stage: str, exc: BaseException) -> None:
        """Fail closed on an open connection: count it, log it, close it."""
        count_failure(self._gate.metrics, stage, exc)
        self.flows.untrack(flow.id)
        quietly(lambda: close_client(flow))

    # -- WebSockets and streamed bodies -------------------------------------------

    def track(self, flow: http.HTTPFlow, st: FlowState, request: Request | None = None) -> None:
        if st.decision.allowed:
            if request is None:
                request = request_of(flow, self._gate.connect_names.get(flow.client_conn.id, ()))
            self.flows.track(flow.id, flow, request, st.identity, st.decision.site)

    def stream_counter(self, flow: http.HTTPFlow, st: FlowState, attr: str, request: Request) -> Callable:
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
                        self.track(flow, st, request)
                    if not self._active(flow.id):
                        return []  # closed: nothing more is sent (b"" would end a chunked body)
                except Exception as exc:
                    self.fail(flow, "stream", exc)
                    return []
            return chunk

        return count

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._on_websocket(flow, "websocket_start", self.track)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self._on_websocket(flow, "websocket_message", self._websocket_activity)

    def _websocket_activity(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if not self._active(flow.id) and flow.websocket is not None and flow.websocket.messages:
            flow.websocket.messages[-1].drop()  # the flow is closed: this message goes nowhere

    def _on_websocket(self, flow: http.HTTPFlow, stage: str, action) -> None:
        try:
            st = flow.metadata.get(META)
            if isinstance(st, FlowState):
                action(flow, st)
        except Exception as exc:
            self.fail(flow, stage, exc)

    # -- raw relays ------------------------------------------------------------

    def open_relay(self, tunnel: RawTunnel, request: Request) -> None:
        """Keep an allowed raw relay: reviewed, charged from now on, audited when it ends."""
        old = self.relays.get(tunnel.client.id)
        if old is not None:  # one relay per connection; an earlier one ended without its record
            self.end_relay(old)
        self.relays[tunnel.client.id] = tunnel
        st = tunnel.st
        self.flows.track(tunnel.key, tunnel, request, st.identity, st.decision.site)
        self._relay_activity(tunnel)

    def relayed(self, tunnel: RawTunnel, from_client: bool, size: int) -> bool:
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
            return self._relay_activity(tunnel)
        except Exception as exc:
            count_failure(self._gate.metrics, "tcp_message", exc)
            self.flows.untrack(tunnel.key)
            tunnel.closed = "failed closed"
            quietly(lambda: close_client(tunnel))
            return False

    def tcp_message(self, flow) -> None:
        """Bytes of a relay mitmproxy made itself, which reach accessgate through its hooks."""
        tunnel = self.relays.get(flow.client_conn.id)
        if tunnel is not None and tunnel.counted_by_hooks and flow.messages:
            message = flow.messages[-1]
            if not self.relayed(tunnel, message.from_client, len(message.content)):
                message.content = b""  # the relay is closed: these bytes go nowhere

    def _relay_activity(self, tunnel: RawTunnel) -> bool:
        tunnel.minute = int(time.time()) // 60
        return self._active(tunnel.key)

    def _charge_unseen(self) -> None:
        """Relays whose bytes accessgate cannot see are charged every minute they are open."""
        for tunnel in list(self.relays.values()):
            if tunnel.unseen and tunnel.closed is None and int(time.time()) // 60 != tunnel.minute:
                self._relay_activity(tunnel)

    def end_relay(self, tunnel: RawTunnel) -> None:
        """Its connection ended: the one audit record of the relay, with the bytes it carried."""
        if self.relays.get(tunnel.client.id) is tunnel:
            del self.relays[tunnel.client.id]
        self.flows.untrack(tunnel.key)
        if not tunnel.st.logged:
            self._gate.audit_flow(tunnel.st, tunnel.status, tunnel.bytes_in, tunnel.bytes_out, tunnel.closed)


def close_client(flow: http.HTTPFlow | RawTunnel) -> None:
    """Close the client's connection, as if the client had hung up.

    `flow.kill()` does not stop a flow in transit (mitmproxy issue 4711), so
    the client transport is closed instead; mitmproxy then ends the WebSocket,
    stream or relay on both sides and runs its usual end hooks.  On an HTTP/2
    connection this ends the client's other streams too; the browser
    reconnects and every new request is decided afresh.
    """
    if isinstance(flow, RawTunnel):
        if flow.splice is not None:
            flow.splice.close()
        else:
            close_connection(flow.client)
    elif not close_connection(flow.client_conn) and flow.killable:
        flow.kill()
