"""Decrypt only what the policy needs to see: decision/inspection.py applied to each TLS tunnel (issue 18).

mitmproxy decrypts a tunnel whose first bytes are a ClientHello.  Once it
has chosen to, `Inspector.tls_chosen` (called by tunnels.LastWord, after
every other addon) waits for the whole ClientHello (however it is cut into
segments), reads every name in it, and asks `decision.inspection`:

- decrypt: mitmproxy's choice stands; each request inside is decided and
  audited as usual (a block page where it blocks);
- pass through: the tunnel becomes a raw relay (tunnels.Relay) that
  Sessions keeps as it keeps every relay: decided again every second,
  charged a quota minute for each minute it carries traffic, closed when
  the policy blocks it, audited once when it ends with its names, bytes
  each way and duration (scheme `tls`, `inspection`: why it was not
  decrypted).  It goes to the server whose certificate was read
  (certificates.py);
- refuse: a connection that is never decrypted but whose names block it,
  and, with `accessgate_refuse_ech`, one whose Encrypted Client Hello may
  hide another name (`hides_a_name`: a browser's decoy ECH under the name
  it asked for is an ordinary ClientHello).

While a passed-through tunnel stays open, `review` asks again every
second: a reload, `always_inspect` or `accessgate_inspect=all` that now
wants it decrypted closes it, and the client's next connection is decided
afresh.  `accessgate_tls_connections_total{site,inspection,why}` counts
every choice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable

from mitmproxy.proxy import layer, layers

from accessgate.decision import Decision, Identity, Request
from accessgate.errors import InvalidHost
from accessgate.policy.hosts import normalize_host
from accessgate.decision import inspection as insp
from accessgate.decision.inspection import Hello, Inspection, Server
from accessgate.oplog import get_logger
from accessgate.proxy import firstbytes, splice
from accessgate.proxy.certificates import Known, ServerCertificates, pin
from accessgate.proxy.flows import tunnel_request
from accessgate.proxy.gate import count_failure, refused
from accessgate.proxy.metrics import site_label
from accessgate.proxy.records import FlowState, connection_state
from accessgate.proxy.sessions import REVIEW_SECONDS, RawTunnel, Sessions, close_client

if TYPE_CHECKING:
    from accessgate.proxy.addon import AccessGate

log = get_logger("addon")

DECRYPTED, PASSED, REFUSED = "decrypted", "passed-through", "refused"
Replace = Callable[[layer.NextLayer, "layer.Layer | None"], None]  # tunnels.replace_layer
SCHEME = "tls"  # the audit record of a TLS connection passed through (or refused) unread
RULE_ECH = "encrypted-client-hello"


@dataclass(slots=True)
class Passing:
    """A tunnel passed through, with what it was passed on (for the review)."""

    hello: Hello
    identity: Identity
    server: Server | None
    tunnel: RawTunnel


class Inspector:
    """Decides, for each TLS tunnel mitmproxy would decrypt, whether it must be."""

    def __init__(self, gate: AccessGate, sessions: Sessions) -> None:
        self._gate = gate
        self._sessions = sessions
        self.mode = insp.NEEDED  # accessgate_inspect
        self.refuse_ech = False  # accessgate_refuse_ech
        self.certificates = ServerCertificates(lambda ip: gate.upstream.refusal(ip) is None)
        self.open: dict[str, Passing] = {}  # by client connection id

    def configure(self, mode: str, refuse_ech: bool) -> None:
        self.mode = mode
        self.refuse_ech = refuse_ech

    # -- a tunnel's ClientHello ------------------------------------------------------

    def tls_chosen(self, nextlayer: layer.NextLayer, names: list[str], identity: Identity,
                   replace: Replace) -> Awaitable[None] | None:
        """mitmproxy chose to decrypt the tunnel of `nextlayer`, which has `names` so far.

        Returns an awaitable when the server's certificate must be read
        first (mitmproxy waits for it), else None.
        """
        context = nextlayer.context
        if context.client.transport_protocol != "tcp" or _inside_tls(nextlayer):
            return None
        gate = self._gate
        policy = gate.require_policy()
        if self.mode != insp.NEEDED and not policy.never_inspect and not self.refuse_ech:
            # accessgate_inspect=all, with nothing to make an exception for: as before this feature.
            decision = gate.decide(tunnel_request(names), identity, policy, datetime.now(timezone.utc))
            self._count(decision, DECRYPTED, insp.EVERYTHING)
            return None
        data = nextlayer.data_client()
        read = firstbytes.read_hello(data)
        if read.state is firstbytes.Hello.PARTIAL and (
            not nextlayer.data_server() and len(data) < firstbytes.WAIT_LIMIT
            and len(nextlayer.events) < firstbytes.WAIT_PIECES
        ):  # fmt: skip
            replace(nextlayer, None)  # the rest of the ClientHello is still coming: decide on all of it
            return None
        hello = Hello(
            tunnel_request([*names, *read.names]).hosts,
            sni=bool(read.names),
            ech=read.ech and hides_a_name(read.names, self._asked(context)),
            readable=read.state is firstbytes.Hello.COMPLETE,
        )
        sni = read.names[0] if read.names else ""
        known = self.certificates.known(context, sni)
        result = self._inspect(hello, identity, known)
        if result.why == insp.SERVER_UNKNOWN and self.certificates.key(context, sni) is not None:
            return self._after_reading(nextlayer, hello, identity, sni, replace)
        self._apply(nextlayer, hello, identity, result, known, replace)
        return None

    async def _after_reading(self, nextlayer: layer.NextLayer, hello: Hello, identity: Identity, sni: str,
                             replace: Replace) -> None:
        try:
            known = await self.certificates.read(nextlayer.context, sni)
            self._apply(nextlayer, hello, identity, self._inspect(hello, identity, known), known, replace)
        except Exception as exc:
            self._gate.fail(None, "next_layer", exc)
            if self._gate.enforcing:
                from accessgate.proxy.tunnels import Refuse

                replace(nextlayer, Refuse(nextlayer.context))

    def _asked(self, context) -> list[str]:
        """The names the client asked the proxy for: CONNECT targets and their Host, the server's address."""
        asked = list(self._gate.connect_names.get(context.client.id, ()))
        if context.server.address:
            asked.append(str(context.server.address[0]))
        return asked

    def _inspect(self, hello: Hello, identity: Identity, known: Known | None) -> Inspection:
        gate = self._gate
        return insp.inspection(hello, identity, gate.require_policy(), datetime.now(timezone.utc), gate.ledger,
                               mode=self.mode, server=known.server if known is not None else None)

    def _apply(self, nextlayer: layer.NextLayer, hello: Hello, identity: Identity, result: Inspection,
               known: Known | None, replace: Replace) -> None:
        from accessgate.proxy.tunnels import Refuse, Relay

        gate = self._gate
        context = nextlayer.context
        decision, why = result.decision, result.why
        if hello.ech and self.refuse_ech:
            decision, why = _ech_refused(decision), insp.ECH
        elif result.decrypt:
            self._count(decision, DECRYPTED, why)
            return
        st = self._state(hello, identity, decision, why)
        if not decision.allowed and gate.enforcing:
            replace(nextlayer, Refuse(context))
            self._count(decision, REFUSED, why)
            gate.audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="tunnel refused")
            return
        # Passed through: a raw relay from here on, to the server whose certificate was read.
        if known is not None:
            pin(context, known)
        context.client.tls = context.server.tls = False  # set by the TLS layers mitmproxy made
        client = context.client
        tunnel = RawTunnel(("tcp", client.id), client, st)
        relay = self._take_over(context, tunnel, known) or Relay(context, True, tunnel, self._sessions.relayed)
        try:
            self._sessions.open_relay(tunnel, Request(insp.TUNNEL_METHOD, hello.names, "/"))
            self.open[client.id] = Passing(hello, identity, known.server if known is not None else None, tunnel)
        except BaseException:
            if tunnel.splice is not None:  # its sockets are accessgate's: closed here, not by mitmproxy
                tunnel.closed = "failed closed"
                tunnel.splice.close()
            raise
        replace(nextlayer, relay)
        self._count(decision, PASSED, why)

    def _take_over(self, context, tunnel: RawTunnel, known: Known | None) -> layer.Layer | None:
        """accessgate relays the tunnel itself (splice.py), to the address whose certificate was read."""
        if known is None or known.address is None or self._gate.upstream.refusal(known.address[0]) is not None:
            return None  # mitmproxy connects it, through every addon's server hooks (and refuses it there)
        sessions = self._sessions

        def on_data(from_client: bool, size: int) -> bool:
            return sessions.relayed(tunnel, from_client, size)

        def on_end(ended: splice.Splice) -> None:
            if tunnel.closed is None and ended.error is not None and ended.error != splice.IDLE:
                tunnel.closed = ended.error
            self.forget(tunnel.client.id)
            sessions.end_relay(tunnel)

        handoff = splice.take_over(context, known.address, on_data, on_end)
        if handoff is not None:
            tunnel.splice = handoff.splice
        return handoff

    def _state(self, hello: Hello, identity: Identity, decision: Decision, why: str) -> FlowState:
        return connection_state(self._gate, decision, identity, insp.TUNNEL_METHOD, SCHEME, hello.names,
                                names=hello.names, inspection=why)

    def _count(self, decision: Decision, inspection: str, why: str) -> None:
        try:
            self._gate.metrics.tls_connections.labels(site_label(decision), inspection, why).inc()
        except Exception:
            log.exception("ignored_error")

    # -- while it stays open ------------------------------------------------------------

    def forget(self, client_id: str) -> None:
        self.open.pop(client_id, None)

    async def review(self) -> None:
        """Every second: close the passed-through tunnels that must now be decrypted."""
        while True:
            await asyncio.sleep(REVIEW_SECONDS)
            try:
                self._review()
            except Exception as exc:  # the review must go on; the error is counted
                count_failure(self._gate.metrics, "inspection-review", exc)

    def _review(self) -> None:
        gate = self._gate
        if gate.policy is None or not gate.enforcing or not self.open:
            return
        now = datetime.now(timezone.utc)
        for client_id, passing in list(self.open.items()):
            tunnel = passing.tunnel
            if tunnel.closed is not None or self._sessions.relays.get(client_id) is not tunnel:
                del self.open[client_id]
                continue
            result = insp.inspection(passing.hello, passing.identity, gate.policy, now, gate.ledger,
                                     mode=self.mode, server=passing.server)
            if not result.decrypt or not result.decision.allowed:
                continue  # still passes, or blocked: then Sessions closes it, with the block's reason
            del self.open[client_id]
            tunnel.closed = f"closed: {result.why}"
            self._sessions.flows.untrack(tunnel.key)
            gate.audit_event(
                "flow_closed",
                request_id=tunnel.st.request_id,
                user=passing.identity.user,
                site=result.decision.site,
                reason=result.why,
                rule=result.decision.rule,
                policy=gate.policy.short_digest,
            )
            log.info("flow_closed", site=result.decision.site, reason=result.why)
            close_client(tunnel)


def hides_a_name(snis: tuple[str, ...] | list[str], asked: list[str]) -> bool:
    """Whether a ClientHello with an encrypted_client_hello extension may hide another server's name.

    Chromium and Firefox put a decoy ECH extension ("GREASE ECH", in the
    ECH draft) in every ClientHello when they have no ECH key for the server,
    which behind a proxy is always: the keys come from DNS records that
    only the proxy resolves.  That decoy carries the real name as its SNI,
    the name the client asked the proxy for.  Real ECH carries the public
    name of the server that decrypts it instead, which is no name asked
    for.  So ECH under an SNI that is one of `asked` is decided like any
    ClientHello: on every name, the certificate's too.  By design nobody
    but that server can tell a decoy from a real ECH under the same name:
    a client that hides another site's name behind the one it asked for is
    domain fronting, and is what docs/inspection.md says of that.
    """
    if not snis:
        return True
    wanted = {_host_name(name) for name in asked} - {None}
    return any(_host_name(sni) not in wanted for sni in snis)


def _host_name(raw: str) -> str | None:
    try:
        return normalize_host(raw).name
    except InvalidHost:
        return None


def _inside_tls(nextlayer: layer.NextLayer) -> bool:
    """The client speaks TLS to the proxy itself (an HTTPS proxy): its tunnels stay as mitmproxy made them."""
    stack = nextlayer.context.layers
    chosen = nextlayer.layer
    below = stack[: stack.index(chosen)] if chosen in stack else stack
    return any(isinstance(lay, layers.ClientTLSLayer) for lay in below)


def _ech_refused(decision: Decision) -> Decision:
    return refused(decision, RULE_ECH, "This connection hides the name of the site it is for (Encrypted Client "
                   "Hello), and the proxy is set to refuse such connections (accessgate_refuse_ech).")
