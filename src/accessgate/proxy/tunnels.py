"""Tunnels: CONNECT targets, TLS passthroughs, first bytes, and relays nothing reads.

- `http_connect`: the CONNECT target, decided as "may this client reach the
  site at all".  It is refused here only when the tunnel may go through
  uninspected (`ignore_hosts`, `allow_hosts`, `tcp_hosts` are set); otherwise
  it is let through so that the request inside gets a real block page.
- `tls_clienthello` (through `LastWord`, after every other addon): a
  passthrough that another addon asks for, decided as a write on every
  name; blocked, it is intercepted instead, so that each request inside is
  decided.
- `next_layer` (through `LastWord`, after mitmproxy's own choice): a TLS
  tunnel mitmproxy would decrypt is decrypted only when the policy needs to
  see inside it (`inspection.Inspector`), else passed through or refused;
  a tunnel whose first bytes could still become TLS or HTTP waits for more; one that
  is neither where every tunnel is meant to be read is refused; one that
  will be relayed unread (ignore_hosts, allow_hosts, tcp_hosts) is decided
  on every name it has, as a write, and closed before a byte reaches the
  server when blocked.
- `tcp_start` and `response`: a relay mitmproxy made without asking (an
  upgrade answered with 101 that it relays raw: any but a version-13
  WebSocket) is decided again, as a write.

An allowed relay is handed to `Sessions`, which keeps it decided while it
stays open and audits it when it ends.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable

from mitmproxy import ctx, http, tls
from mitmproxy.proxy import commands, events, layer, layers, mode_specs

from accessgate.decision import Decision, Identity
from accessgate.oplog import get_logger
from accessgate.proxy import firstbytes
from accessgate.proxy.flows import TUNNEL, connect_request, request_of, tunnel_request
from accessgate.proxy.gate import close_connection, count_failure, internal_error, quietly, refused
from accessgate.proxy.identity import identity_for_connection
from accessgate.proxy.records import FlowState, connection_state, flow_state
from accessgate.proxy.sessions import RawTunnel, Sessions

if TYPE_CHECKING:
    from accessgate.proxy.addon import AccessGate
    from accessgate.proxy.inspection import Inspector

_UNINSPECTED = (layers.TCPLayer, layers.UDPLayer)
_EXPLICIT_PROXY = (mode_specs.RegularMode, mode_specs.UpstreamMode)
# A tunnel that is neither TLS nor HTTP where the operator expects every
# tunnel to be read (no ignore_hosts/allow_hosts/tcp_hosts match): refused,
# as Squid's on_unsupported_protocol does by default.
UNREADABLE = "unreadable-tunnel"

log = get_logger("addon")


class Refuse(layer.Layer):
    """Closes a connection that must not be tunnelled, before any byte is relayed."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
            yield commands.CloseConnection(self.context.client)
        else:
            yield from ()


class Relay(layers.TCPLayer):
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


class LastWord:
    """accessgate's say on what other addons chose for a connection, after all of them.

    Script addons run before mitmproxy's own NextLayer addon, and before any
    script loaded after accessgate, but accessgate must see what they chose
    (a raw relay, a TLS passthrough) and be able to make mitmproxy wait for
    more bytes, which only works once no later addon will choose instead.
    So this small addon sits at the end of mitmproxy's chain and hands the
    choice to accessgate.
    """

    name = "accessgate_next_layer"

    def __init__(self, tunnels: Tunnels) -> None:
        self.tunnels: Tunnels | None = tunnels

    def next_layer(self, nextlayer: layer.NextLayer) -> Awaitable[None] | None:
        if self.tunnels is not None:
            return self.tunnels.next_layer_chosen(nextlayer)  # mitmproxy awaits what it returns
        return None

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if self.tunnels is not None:
            self.tunnels.passthrough_asked(data)


class Tunnels:
    """Decides every tunnel on its names, and hands allowed raw relays to `sessions`."""

    def __init__(self, gate: AccessGate, sessions: Sessions, inspector: Inspector | None = None) -> None:
        self._gate = gate
        self._sessions = sessions
        self._inspector = inspector

    # -- LastWord at the end of mitmproxy's chain ---------------------------------

    def claim_last_word(self) -> None:
        """Put LastWord at the end of mitmproxy's addon chain (once; a reloaded script takes it over)."""
        addons = ctx.master.addons if ctx.master is not None else None
        if addons is None:
            return
        last = addons.get(LastWord.name)
        if last is None:
            addons.add(LastWord(self))
        else:
            last.tunnels = self

    def release_last_word(self) -> None:
        last = ctx.master.addons.get(LastWord.name) if ctx.master is not None else None
        if last is not None and last.tunnels is self:
            last.tunnels = None

    # -- CONNECT -------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # proxyauth answered 407: leave it alone
        gate = self._gate
        policy = gate.require_policy()
        now = datetime.now(timezone.utc)
        started = time.perf_counter()
        request = connect_request(flow)
        identity = gate.identity(flow)
        if _may_be_uninspected():
            decision = gate.decide(request, identity, policy, now)
            if not decision.allowed and gate.enforcing:
                st = flow_state(flow, decision, identity, now, started, policy, True, gate.log_query)
                status = gate.block(flow, st, accept="application/json")
                gate.audit_flow(st, status=status, bytes_in=0, bytes_out=0)
                return
        # Let it through: the requests inside are decided with this name too.
        names = gate.connect_names
        client_id = flow.client_conn.id
        names[client_id] = names.get(client_id, ()) + request.hosts

    # -- a passthrough another addon asks for ----------------------------------------

    def passthrough_asked(self, data: tls.ClientHelloData) -> None:
        """Every addon has seen the ClientHello (called by LastWord, after them)."""
        try:
            if not data.ignore_connection:
                return
            # Another addon wants this connection relayed unread: a tunnel
            # like any other, decided as a write on every name it has.
            client = data.context.client
            names = [*self._names(data.context), *server_names(data.client_hello)]
            decision = self._decide_connection(client, names)
            if not decision.allowed and self._gate.enforcing:
                data.ignore_connection = False  # intercept, so that each request inside is decided
                return
            # mitmproxy relays it from inside its TLS layer, where no byte can be
            # counted: every minute it is open is charged.
            tunnel = RawTunnel(("tcp", client.id), client, self._state(client, decision, names), unseen=True)
            self._sessions.open_relay(tunnel, tunnel_request(names, TUNNEL))
        except Exception as exc:
            self._gate.fail(None, "tls_clienthello", exc)
            data.ignore_connection = False

    # -- the first bytes of a tunnel ---------------------------------------------------

    def next_layer_chosen(self, nextlayer: layer.NextLayer) -> Awaitable[None] | None:
        """mitmproxy has chosen the next layer of a connection (called by LastWord, after it).

        Returns an awaitable when the choice waits for something (a server's
        certificate, see inspection.py); mitmproxy waits for it.
        """
        try:
            if self._gate.balancers.claim(nextlayer):
                return  # a trusted balancer's PROXY header comes first (balancer.py)
            chosen = nextlayer.layer
            if isinstance(chosen, layers.ServerTLSLayer) and self._inspector is not None:
                names = self._names(nextlayer.context)
                if names and isinstance(nextlayer.context.client.proxy_mode, _EXPLICIT_PROXY):
                    identity = _connection_identity(self._gate, nextlayer.context.client)
                    return self._inspector.tls_chosen(nextlayer, names, identity, replace_layer)
                return None
            self._next_layer(nextlayer)
        except Exception as exc:
            self._gate.fail(None, "next_layer", exc)
            if self._gate.enforcing:
                replace_layer(nextlayer, Refuse(nextlayer.context))
        return None

    def _next_layer(self, nextlayer: layer.NextLayer) -> None:
        chosen = nextlayer.layer
        if not isinstance(chosen, _UNINSPECTED) or isinstance(chosen, Relay):
            return  # read by mitmproxy (TLS, HTTP, ...), or undecided yet, or ours
        context = nextlayer.context
        names = self._names(context)
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
            replace_layer(nextlayer, None)
            return
        passed = not tcp or _operator_passes(context, data, nextlayer.data_server())
        if not passed and may_wait and firstbytes.could_become_http(data):
            replace_layer(nextlayer, None)  # a request line still coming: mitmproxy will read it
            return
        names.extend(hello.names)
        if passed and data[:3].isalpha():
            names.extend(firstbytes.http_hosts(data))
        decision = self._decide_connection(context.client, names)
        if decision.allowed and (not passed or hello.state in (firstbytes.Hello.PARTIAL, firstbytes.Hello.INVALID)):
            # Neither TLS nor HTTP where every tunnel is meant to be read, or a
            # ClientHello nobody can read: what it carries cannot be decided.
            decision = unreadable(decision)
        enforcing = self._gate.enforcing
        log.info(
            "tunnel_uninspected",
            decision=decision.decision,
            reason=decision.reason,
            rule=decision.rule,
            site=decision.site,
            enforced=enforcing,
        )
        st = self._state(context.client, decision, names)
        if not decision.allowed and enforcing:
            replace_layer(nextlayer, Refuse(context))
            self._gate.audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="tunnel refused")
            return
        if not tcp:
            self._gate.audit_flow(st, status=None, bytes_in=0, bytes_out=0)
            return
        tunnel = RawTunnel(("tcp", context.client.id), context.client, st)
        replace_layer(nextlayer, Relay(context, chosen.flow is None, tunnel, self._sessions.relayed))
        self._sessions.open_relay(tunnel, tunnel_request(names, TUNNEL))

    # -- relays mitmproxy made without asking ---------------------------------------

    def tcp_start(self, flow) -> None:
        """A raw relay starts: one accessgate allowed already, or one mitmproxy made itself."""
        try:
            if flow.client_conn.id not in self._sessions.relays:
                self._undecided_relay(flow)
        except Exception as exc:
            count_failure(self._gate.metrics, "tcp_start", exc)
            quietly(lambda: close_connection(flow.client_conn))

    def _undecided_relay(self, flow) -> None:
        """A raw relay accessgate did not decide (an upgrade answered with 101 without a request
        hook to catch it, or one made by another addon): decided now, as a write."""
        client = flow.client_conn
        names = list(self._gate.connect_names.get(client.id, ()))
        if flow.server_conn.address:
            names.append(str(flow.server_conn.address[0]))
        if client.sni:
            names.append(client.sni)
        decision = self._decide_connection(client, names) if names else internal_error("no name")
        st = self._state(client, decision, names)
        if not decision.allowed and self._gate.enforcing:
            self._gate.audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="tunnel refused")
            close_connection(client)
            return
        self._sessions.open_relay(RawTunnel(("tcp", client.id), client, st, counted_by_hooks=True),
                                  tunnel_request(names, TUNNEL))

    def upgraded_to_raw(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """The site answered 101 to a protocol mitmproxy does not read (a WebSocket of another
        version than 13, any other Upgrade): the connection becomes a raw relay next.

        Decided again as a write on every name the request gave, whatever its
        method; allowed, it is kept like a WebSocket and its record waits for
        its end, with the bytes it carried.
        """
        gate = self._gate
        request = request_of(flow, gate.connect_names.get(flow.client_conn.id, ()))
        decision = gate.decide(tunnel_request(request.hosts, TUNNEL), st.identity, gate.require_policy(),
                               datetime.now(timezone.utc))
        if not decision.allowed:
            st.decision = decision
            if st.enforced:
                flow.kill()  # before the 101 reaches the client
                st.blocked_here = True
                gate.audit_flow(st, status=None, bytes_in=0, bytes_out=0, error="killed")
                return
        client = flow.client_conn
        tunnel = RawTunnel(("tcp", client.id), client, st, status=101, counted_by_hooks=True)
        self._sessions.open_relay(tunnel, tunnel_request(request.hosts, TUNNEL))

    # -- helpers ---------------------------------------------------------------

    def _decide_connection(self, client, names: list[str]) -> Decision:
        gate = self._gate
        return gate.decide(tunnel_request(names, TUNNEL), _connection_identity(gate, client), gate.require_policy(),
                           datetime.now(timezone.utc))

    def _names(self, context) -> list[str]:
        """The names a connection has before its bytes are read: CONNECT targets, server address, SNI."""
        names = list(self._gate.connect_names.get(context.client.id, ()))
        if context.server.address:
            names.append(str(context.server.address[0]))
        if context.client.sni:
            names.append(context.client.sni)
        return names

    def _state(self, client, decision: Decision, names: list[str]) -> FlowState:
        return connection_state(self._gate, decision, _connection_identity(self._gate, client), "CONNECT", "tcp", names)


def _may_be_uninspected() -> bool:
    o = ctx.options
    return bool(o.ignore_hosts or o.allow_hosts or o.tcp_hosts)


def _connection_identity(gate: AccessGate, client) -> Identity:
    proxyauth = ctx.master.addons.get("proxyauth")
    return identity_for_connection(client, getattr(proxyauth, "authenticated", None),
                                   gate.signin.connection_user(client))


def _operator_passes(context, data_client: bytes, data_server: bytes) -> bool:
    """The operator asked for this tunnel to be relayed (ignore_hosts, allow_hosts, tcp_hosts match)."""
    if not isinstance(context.client.proxy_mode, _EXPLICIT_PROXY):
        return True  # transparent and reverse modes relay what they do not know; decided on names
    if not _may_be_uninspected():
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


def replace_layer(nextlayer: layer.NextLayer, new: layer.Layer | None) -> None:
    """Put `new` where mitmproxy chose its layer (None: decide later, when more bytes came).

    A layer adds itself to its context's stack when it is made; the one
    mitmproxy made and we drop must leave it, with the layers it made (a
    TLS layer's client half), or the layers above would find them as their
    parent.
    """
    old = nextlayer.layer
    stack = nextlayer.context.layers
    if old is not None and old is not new and old in stack:
        for made in stack[stack.index(old):]:
            if made is not new:
                stack.remove(made)
    nextlayer.layer = new


def unreadable(decision: Decision) -> Decision:
    """A tunnel whose contents accessgate cannot read where every tunnel is meant to be read: blocked."""
    return refused(decision, UNREADABLE, "This connection is neither TLS nor HTTP that the proxy can read, so what "
                   "it carries cannot be checked; it is refused. Ask IT to list its host in tcp_hosts if it must pass.")


def server_names(hello: Any) -> list[str]:
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
