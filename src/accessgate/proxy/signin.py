"""accessgate's own sign-in (`accessgate_auth`) and the directory's groups, in the running proxy.

`SignIn` is an addon just before `AccessGate` in mitmproxy's chain.  For
each CONNECT and each plain-HTTP request it finds who is asking and puts
it into `flow.metadata[SIGNED_IN]` (a `SignedIn`: the user, the method,
the directory's groups), where `identity.py` reads it; a client that did
not sign in, or failed to, gets a 407 with one `Proxy-Authenticate`
challenge per scheme, in the configured order, and AccessGate leaves a
flow so answered alone.

- Basic credentials are checked per request (a cached credential costs a
  keyed digest and a dictionary lookup); a Negotiate sign-in holds for its
  connection, as Kerberos means it to.  A CONNECT's sign-in holds for every
  request inside its tunnel: a Proxy-Authorization sent inside is the
  site's business and `hygiene.sanitize` strips it.
- Anything slow (bcrypt, an LDAP bind, a Kerberos token, a new user's first
  group lookup) runs in `accessgate.auth`'s thread pools.  The hook then
  returns a coroutine, which mitmproxy awaits for this flow alone
  (`addonmanager.invoke_addon` awaits whatever a hook returns, in the task
  `proxy/server.py` made for that one hook); the common case returns None.
- The user is the name the directory, the KDC or the file holds, case-folded
  once (`model.fold_user`), never the string the client typed.
- With `directory.ldap` in the policy, each user's groups come from
  `GroupResolver` (cached, refreshed in the background, the outage rule);
  that also holds for users mitmproxy's `proxyauth` signed in.

The hooks exist on an instance only while there is something to do
(`_activate`): mitmproxy looks each hook up by name on every event, so a
proxy without sign-in or directory pays nothing for this addon.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mitmproxy import exceptions, http
from mitmproxy.proxy import mode_specs

from accessgate.auth import (
    BUSY,
    LIMITED,
    Authenticator,
    Counters,
    Directory,
    GroupResolver,
    LdapSettings,
    Sample,
    SignIn as Answer,
    build_methods,
    parse_auth_option,
)
from accessgate.auth.authenticator import UNAVAILABLE_, Checking
from accessgate.oplog import get_logger
from accessgate.policy.model import fold_user
from accessgate.proxy.identity import SIGNED_IN, SignedIn, client_ip, user_from_proxyauth
from accessgate.proxy.pages import SECURITY_HEADERS

if TYPE_CHECKING:
    from accessgate.policy.model import Policy
    from accessgate.proxy.addon import AccessGate

_REPLY = "accessgate_signin_reply"  # flow.metadata key: the Negotiate mutual-auth token for the response
_EXPLICIT = (mode_specs.RegularMode, mode_specs.UpstreamMode)
_AUTH_OPTIONS = {"accessgate_auth", "accessgate_auth_cache_seconds", "accessgate_auth_realms",
                 "accessgate_auth_strip_realm", "proxyauth"}
_HOOKS = ("http_connect", "http_connected", "requestheaders", "responseheaders", "client_disconnected")
# A client the failure limit refuses gets its 407 after this delay: a script that retries at once
# would otherwise keep the event loop busy with refusals that cost it nothing.
TARPIT_SECONDS = 1.0
# The check pool's threads are this much nicer than the event loop: a flood of bcrypt checks
# competing with other processes for the cores leaves the proxy's own requests first in line.
CHECK_NICE = 10
TARPIT_MAX = 10_000  # refusals waiting at once; beyond, they are answered at once and the connection closed

log = get_logger("auth")


class _User(NamedTuple):
    user: str
    method: str


class SignIn:
    name = "accessgate_signin"

    def __init__(self, gate: AccessGate) -> None:
        self._gate = gate
        # Kept across rebuilds (an option or the directory changed), so counters only grow.
        self.counters = Counters()
        self.directory_counters = Counters()
        self.auth: Authenticator | None = None
        self.groups: GroupResolver | None = None
        self.directory: Directory | None = None
        self._ldap: Any = None  # the policy's directory.ldap the directory was built from
        self._ldap_dir: str | None = None
        self._tunnels: dict[str, _User] = {}     # connection id -> who signed in with its CONNECT
        self._negotiated: dict[str, _User] = {}  # connection id -> who Negotiate signed in (plain HTTP)
        self._active = False
        self._tarpitted = 0  # refusals waiting out TARPIT_SECONDS
        # One thread fewer than the cores, at most 4: a flood of wrong bcrypt passwords
        # (from many addresses, past the limit) leaves the event loop a core.
        self.workers = max(1, min(4, len(os.sched_getaffinity(0)) - 1)) if hasattr(os, "sched_getaffinity") else 2

    def __repr__(self) -> str:
        return f"SignIn(auth={self.auth!r}, groups={self.groups!r})"

    # ---- configuration ------------------------------------------------------------------

    def apply_options(self, options, updated: set[str]) -> None:
        """Apply the sign-in options (AccessGate.configure calls this once the policy is loaded)."""
        policy = self._gate.policy
        if not (updated & _AUTH_OPTIONS) and (policy is None or policy.ldap == self._ldap):
            return
        try:
            specs = parse_auth_option(options.accessgate_auth)
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        if specs and getattr(options, "proxyauth", None):
            raise exceptions.OptionsError(
                "accessgate_auth and mitmproxy's proxyauth are both set; use one: accessgate_auth "
                "(negotiate, ldap, htpasswd:PATH, checked off the event loop) or proxyauth, not both")
        if options.accessgate_auth_cache_seconds < 0:
            raise exceptions.OptionsError("accessgate_auth_cache_seconds must be 0 (no cache) or more seconds")
        try:
            directory = self._directory_for(policy) if policy is not None else None
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        realms = tuple(r.strip() for r in options.accessgate_auth_realms.split(",") if r.strip())
        try:
            methods = build_methods(specs, directory=directory[0] if directory else None,
                                    negotiate_realms=realms, strip_realm=options.accessgate_auth_strip_realm)
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        auth = (Authenticator(methods, cache_ttl=float(options.accessgate_auth_cache_seconds),
                              counters=self.counters, workers=self.workers, nice=CHECK_NICE) if methods else None)
        self._swap(auth, directory, policy)
        log.info("signin_configured", methods=[m.name for m in methods],
                 directory=self.directory.settings.url if self.directory else None)

    def use_policy(self, policy: Policy) -> None:
        """A new policy is in force: follow its directory.ldap if that changed."""
        if policy.ldap == self._ldap:
            return
        try:
            directory = self._directory_for(policy)
        except ValueError as exc:
            log.error("directory_settings_rejected", error=str(exc),
                      kept=self.directory.settings.url if self.directory else None)
            return
        auth = self.auth
        if auth is not None and any(m.name == "ldap" for m in auth.methods):
            if directory is None:
                log.error("directory_settings_rejected", kept=self.directory.settings.url if self.directory else None,
                          error="accessgate_auth names 'ldap', but the new policy has no directory.ldap; "
                                "sign-in keeps the directory it had")
                return
            methods = [_rebuilt(m, directory[0]) for m in auth.methods]
            auth = Authenticator(methods, cache_ttl=auth.cache.ttl, counters=self.counters, workers=self.workers,
                                 nice=CHECK_NICE)
        self._swap(auth, directory, policy)
        log.info("directory_configured", directory=self.directory.settings.url if self.directory else None)

    def _directory_for(self, policy: Policy) -> tuple[Directory, GroupResolver] | None:
        if policy.ldap is None:
            return None
        base = str(Path(policy.sources[0]).parent) if policy.sources else os.getcwd()
        settings = LdapSettings.from_policy(policy.ldap, base_dir=base)
        directory = Directory(settings)
        resolver = GroupResolver(directory.groups_of, ttl=settings.cache_seconds, stale=settings.stale_seconds,
                                 on_outage=settings.on_outage, first_wait=settings.first_lookup_seconds,
                                 counters=self.directory_counters)
        return directory, resolver

    def _swap(self, auth: Authenticator | None, directory: tuple[Directory, GroupResolver] | None,
              policy: Policy | None) -> None:
        old_auth, old_groups = self.auth, self.groups
        self.auth = auth
        self.directory, self.groups = directory if directory is not None else (None, None)
        self._ldap = policy.ldap if policy is not None else None
        for old, new in ((old_auth, auth), (old_groups, self.groups)):
            if old is not None and old is not new:
                _close_later(old.close, old_auth.timeout if old_auth is not None else 10.0)
        self._activate(auth is not None or self.groups is not None)

    def _activate(self, active: bool) -> None:
        if active == self._active:
            return
        self._active = active
        for hook in _HOOKS:
            if active:
                setattr(self, hook, getattr(self, "_" + hook))
            else:
                self.__dict__.pop(hook, None)

    def close(self) -> None:
        self._activate(False)
        for part in (self.auth, self.groups):
            if part is not None:
                part.close()
        self.auth = self.groups = self.directory = None

    # ---- who a connection is ------------------------------------------------------------

    def connection_user(self, client) -> SignedIn | None:
        """Who signed in with this connection's CONNECT (or Negotiate), with their groups now."""
        found = self._tunnels.get(client.id) or self._negotiated.get(client.id)
        if found is None:
            return None
        known = self.groups.known(found.user) if self.groups is not None else None
        return SignedIn(found.user, found.method, known.groups if known is not None else frozenset())

    # ---- hooks (bound by _activate) -----------------------------------------------------------

    def _http_connect(self, flow: http.HTTPFlow):
        try:
            if flow.response is not None or not isinstance(flow.client_conn.proxy_mode, _EXPLICIT):
                return None
            return self._sign_in(flow, connect=True)
        except Exception as exc:
            self._gate.fail(flow, "http_connect", exc)
            return None

    def _http_connected(self, flow: http.HTTPFlow) -> None:
        reply = flow.metadata.pop(_REPLY, None)
        if reply is not None and flow.response is not None:
            flow.response.headers["Proxy-Authenticate"] = reply

    def _requestheaders(self, flow: http.HTTPFlow):
        try:
            if flow.response is not None or flow.error is not None:
                return None
            tunnel = self._tunnels.get(flow.client_conn.id)
            if tunnel is not None:
                return self._with_groups(flow, tunnel)
            if not isinstance(flow.client_conn.proxy_mode, _EXPLICIT):
                return None
            return self._sign_in(flow, connect=False)
        except Exception as exc:
            self._gate.fail(flow, "requestheaders", exc)
            return None

    def _responseheaders(self, flow: http.HTTPFlow) -> None:
        reply = flow.metadata.pop(_REPLY, None)
        if reply is not None and flow.response is not None:
            flow.response.headers["Proxy-Authenticate"] = reply

    def _client_disconnected(self, client) -> None:
        self._tunnels.pop(client.id, None)
        self._negotiated.pop(client.id, None)

    # ---- signing in ---------------------------------------------------------------------------

    def _sign_in(self, flow: http.HTTPFlow, connect: bool):
        auth = self.auth
        if auth is None:  # groups only: for whom mitmproxy's proxyauth signed in
            user = user_from_proxyauth(flow.metadata.get("proxyauth"))
            if user is None:
                return None
            found = _User(user, "proxyauth")
            if connect:
                self._tunnels[flow.client_conn.id] = found
            return self._with_groups(flow, found)
        client = flow.client_conn
        header = flow.request.headers.get("proxy-authorization")
        if header is None and not connect:
            negotiated = self._negotiated.get(client.id)
            if negotiated is not None:
                return self._with_groups(flow, negotiated)
        ip = client_ip(client.peername)
        answer = auth.begin(header, str(ip) if ip is not None else None)
        if isinstance(answer, Checking):
            return self._checked(flow, answer, connect, auth)
        return self._answered(flow, answer, connect, auth)

    async def _checked(self, flow: http.HTTPFlow, checking: Checking, connect: bool, auth: Authenticator) -> None:
        try:
            answer = await checking.result()
            pending = self._answered(flow, answer, connect, auth)
            if pending is not None:
                await pending
        except Exception as exc:
            self._gate.fail(flow, "http_connect" if connect else "requestheaders", exc)

    def _answered(self, flow: http.HTTPFlow, answer: Answer, connect: bool, auth: Authenticator):
        client = flow.client_conn
        if not answer.ok or not answer.user:
            self._negotiated.pop(client.id, None)
            if answer.outcome == LIMITED:
                return self._tarpit(flow, refusal(answer, auth.challenges))
            flow.response = refusal(answer, auth.challenges)
            return None
        # Never towards the site (hygiene strips it as well) and never into a record.
        del flow.request.headers["proxy-authorization"]
        found = _User(fold_user(answer.user), answer.method or "")
        if connect:
            self._tunnels[client.id] = found
        elif answer.method == "negotiate":
            self._negotiated[client.id] = found
        if answer.reply:
            flow.metadata[_REPLY] = answer.reply
        return self._with_groups(flow, found)

    def _tarpit(self, flow: http.HTTPFlow, response: http.Response):
        if self._tarpitted >= TARPIT_MAX:
            response.headers["Connection"] = "close"
            flow.response = response
            return None
        return self._answer_later(flow, response)

    async def _answer_later(self, flow: http.HTTPFlow, response: http.Response) -> None:
        self._tarpitted += 1
        try:
            await asyncio.sleep(TARPIT_SECONDS)
        finally:
            self._tarpitted -= 1
            flow.response = response

    def _with_groups(self, flow: http.HTTPFlow, found: _User):
        resolver = self.groups
        if resolver is None:
            flow.metadata[SIGNED_IN] = SignedIn(found.user, found.method, frozenset())
            return None
        known = resolver.known(found.user)
        if known is not None:
            flow.metadata[SIGNED_IN] = SignedIn(found.user, found.method, known.groups)
            return None
        return self._first_lookup(flow, found, resolver)

    async def _first_lookup(self, flow: http.HTTPFlow, found: _User, resolver: GroupResolver) -> None:
        try:
            groups = (await resolver.groups_async(found.user)).groups
        except Exception as exc:  # no directory groups, as for a directory that is down
            log.error("directory_lookup_failed", error=type(exc).__name__)
            groups = frozenset()
        flow.metadata[SIGNED_IN] = SignedIn(found.user, found.method, groups)

    # ---- metrics ---------------------------------------------------------------------------------

    def samples(self) -> list[Sample]:
        """Sign-in and directory samples for the metrics collector (names without accessgate_)."""
        out = self.counters.samples() + self.directory_counters.samples()
        auth, groups = self.auth, self.groups
        if auth is not None:
            out += [s for s in auth.samples() if not s.name.endswith("_total")]
        if groups is not None:
            out += [s for s in groups.samples() if not s.name.endswith("_total")]
        return out


def refusal(answer: Answer, challenges: tuple[str, ...]) -> http.Response:
    """407 with the challenges for a missing or failed sign-in; 503 when it could not be checked."""
    headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k != "Content-Security-Policy"]
    headers.append((b"Content-Type", b"text/plain; charset=utf-8"))
    if answer.retry_after is not None:
        headers.append((b"Retry-After", str(max(1, round(answer.retry_after))).encode()))
    if answer.outcome in (UNAVAILABLE_, BUSY):
        if answer.retry_after is None:
            headers.append((b"Retry-After", b"5"))
        text = ("The proxy cannot check sign-ins right now (its directory or Kerberos does not answer). "
                "Try again in a moment; if this persists, tell your IT service desk.\n")
        return http.Response.make(503, text.encode(), headers)
    headers += [(b"Proxy-Authenticate", c.encode()) for c in challenges]
    if answer.outcome == "limited":
        text = "Too many failed sign-ins from this computer or for this name. Wait a minute, then sign in again.\n"
    else:
        text = "Sign in to the company proxy with your usual account to continue.\n"
    return http.Response.make(407, text.encode(), headers)


def _rebuilt(method, directory: Directory):
    """`method`, pointed at `directory` if it is the LDAP one."""
    from accessgate.auth import LdapMethod

    return LdapMethod(directory, realm=method.realm) if isinstance(method, LdapMethod) else method


def _close_later(close: Callable[[], None], delay: float) -> None:
    """Close a replaced part once the checks it may still run have ended."""
    try:
        asyncio.get_running_loop().call_later(delay + 1.0, close)
    except RuntimeError:  # no loop (start-up, tests): nothing of it can be running
        close()
