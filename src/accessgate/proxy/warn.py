"""Warn grants in the proxy: the page that asks for a reason, and the form that continues.

A request that the engine blocks with `justification-required` gets, when
it is a page load (GET or HEAD that prefers HTML), the warn page: the
policy in a sentence and a form asking why.  Anything else gets the JSON
block answer with that reason code.  The form posts to CONTINUE_PATH on the
same origin as the page, which the proxy answers itself (plain HTTP and
intercepted HTTPS alike: the path is never forwarded to a site).  A reason
accepted there opens the site for that user for the grant's
`continue_minutes` (kept in the state store, which proxies behind a
balancer share) and redirects back to the page first asked for.

The form is a one-time token: an HMAC (the `accessgate_warn_key`, shared by
proxies behind a balancer; else a random key per start) over the user, the
site, the time it was issued, a nonce and the address to return to.  It is
refused when the MAC is wrong, when it is older than TOKEN_SECONDS, when
another user sends it, when it is sent for another site than the one it
names, when its nonce was spent already (replay; nonces live in the state
store until the token expires), and unless the request comes from the
site's own origin (Origin, else Referer; Sec-Fetch-Site when sent) with
the nonce also in a SameSite=Strict cookie scoped to CONTINUE_PATH.  A
browser that sends Fetch Metadata (Sec-Fetch-Mode, Sec-Fetch-Dest) gets the
page and its token only for a top-level navigation, and its post counts
only as one: a script on the site's own origin (the site's, or one injected
into it) can neither read a token with fetch() nor post the form for the
user.  The page also cuts itself off from any window that opened it
(Cross-Origin-Opener-Policy).  The reason is length-limited, kept only in the audit record, and HTML-escaped
wherever it is shown.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
import urllib.parse
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from accessgate import decision as engine
from accessgate.audit.pseudonym import key_bytes
from accessgate.decision import Decision, Identity
from accessgate.errors import InvalidHost, StateStoreError
from accessgate.oplog import get_logger
from accessgate.policy.hosts import normalize_host
from accessgate.policy.model import Grant, Level, Policy
from accessgate.proxy import pages
from accessgate.proxy.gate import declares_large_body, request_length_unknown
from accessgate.proxy.records import ip_text

if TYPE_CHECKING:
    from accessgate.proxy.addon import AccessGate
    from accessgate.proxy.records import FlowState

log = get_logger("addon")

CONTINUE_PATH = "/__accessgate/continue"  # answered by the proxy on every origin, never forwarded
COOKIE = "accessgate_warn"
TOKEN_SECONDS = 600  # a warn page's form is good for ten minutes
CLOCK_SKEW = 30  # seconds a token may seem to come from the future (proxies behind a balancer)
REASON_MAX = 500  # characters of a reason
BODY_MAX = 16 * 1024  # bytes of a continue form; a larger one is not read
URL_MAX = 2048  # a longer address to return to is replaced by the site's front page
META_CONTINUE = "accessgate_continue"  # flow.metadata key: a continue form to answer in `request`

WARN_EVENT = "warn_continued"
REFUSED_EVENT = "warn_refused"

TITLE = "Tell us why you need {site}"
WHY = (
    "Your organization's web access policy lets you use {site} when you need it for your work: "
    "say why, and it opens for you for {minutes} minutes."
)
_WARN_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def read_key(path: str) -> bytes:
    """The form key at `path` (at least 16 bytes, private to its owner); a fresh random key when empty."""
    if not path:
        return secrets.token_bytes(32)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise ValueError(
            f"warn form key {path} can be read or changed by other users of this machine "
            f"(mode {stat.S_IMODE(mode):04o}), and whoever reads it can forge continue forms; "
            f"make it private: chmod 600 {path}"
        )
    return key_bytes(path, "warn form key")


def warn_grant(decision: Decision, policy: Policy) -> Grant | None:
    """The warn grant that decided `decision`, or None."""
    if decision.role is None or decision.site is None:
        return None
    role = policy.roles.get(decision.role)
    if role is None:
        return None
    grant = role.access.get(decision.site) or role.access.get("*")
    return grant if grant is not None and grant.level is Level.WARN else None


# -- the token ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(key: bytes, subject: str, site: str, issued: int, nonce: str, back: str) -> str:
    payload = json.dumps({"v": 1, "s": subject, "site": site, "t": issued, "n": nonce, "u": back},
                         separators=(",", ":"), ensure_ascii=True).encode("ascii")
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


class Refused(Exception):
    """A continue form that is not honoured; the message says why (audited, shown to the user)."""


def read_token(key: bytes, token: str) -> dict[str, Any]:
    """The token's fields if its MAC is right; else Refused."""
    try:
        payload_text, mac_text = token.split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, TypeError):
        raise Refused("the form's token is malformed") from None
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise Refused("the form's token was not issued by this proxy (or was altered)")
    fields = json.loads(payload)
    if not isinstance(fields, dict) or fields.get("v") != 1:
        raise Refused("the form's token is of an unknown version")
    return fields


# -- the origin checks ----------------------------------------------------------------


def _origin_of(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.rstrip(".").lower(), port or (443 if parts.scheme == "https" else 80)


def same_origin(flow: http.HTTPFlow) -> str | None:
    """Why the form post does not come from the page's own origin, or None when it does."""
    rq = flow.request
    headers = rq.headers
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() != "same-origin":
        return f"the form was sent from another site (Sec-Fetch-Site: {fetch_site[:40]})"
    ours = (rq.scheme, rq.pretty_host.rstrip(".").lower(), rq.port)
    origins = headers.get_all("origin")
    if origins:
        if len(origins) > 1 or _origin_of(origins[0]) != ours:
            return "the form was sent from another origin (Origin header)"
        return None
    referers = headers.get_all("referer")
    if referers:
        if len(referers) > 1 or _origin_of(referers[0]) != ours:
            return "the form was sent from another origin (Referer header)"
        return None
    return "the form post names no origin (neither Origin nor Referer)"


def not_navigation(headers: http.Headers) -> str | None:
    """Why a request is not a browser's top-level navigation (by its Fetch Metadata), or None.

    Clients that send no Fetch Metadata (older browsers, command-line tools)
    are taken at their word: the token, the cookie and the origin checks still hold.
    """
    mode = headers.get("sec-fetch-mode")
    if mode is not None and mode.strip().lower() != "navigate":
        return f"it was sent by a script, not by the page (Sec-Fetch-Mode: {mode[:40]})"
    dest = headers.get("sec-fetch-dest")
    if dest is not None and dest.strip().lower() != "document":
        return f"it was not sent as a page of its own (Sec-Fetch-Dest: {dest[:40]})"
    return None


def _cookie(flow: http.HTTPFlow) -> list[str]:
    values = []
    for header in flow.request.headers.get_all("cookie"):
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                values.append(value)
    return values


# -- the page and the form ---------------------------------------------------------


class WarnForms:
    """Serves warn pages and answers their forms, for one AccessGate."""

    def __init__(self, gate: AccessGate) -> None:
        self._gate = gate
        self.key = secrets.token_bytes(32)

    def use_key(self, key: bytes) -> None:
        self.key = key

    # The page ------------------------------------------------------------------------

    def page(self, flow: http.HTTPFlow, st: FlowState, contact: str) -> tuple[int, dict[str, str], bytes] | None:
        """The warn page for a page load blocked with justification-required; None for anything else
        (a script's request, a write), which gets the JSON or block page with the reason code."""
        d = st.decision
        rq = flow.request
        policy = self._gate.policy
        if policy is None or d.site is None or rq.method not in ("GET", "HEAD"):
            return None
        if not pages.prefers_html(rq.headers.get("accept", "")):
            return None
        if not_navigation(rq.headers) is not None:
            return None  # a script's fetch, a frame: no token for it to read
        grant = warn_grant(d, policy)
        if grant is None:
            return None
        now = int(time.time())
        nonce = secrets.token_urlsafe(16)
        back = rq.pretty_url
        if len(back) > URL_MAX:
            back = f"{rq.scheme}://{rq.pretty_host}/"
        token = make_token(self.key, st.identity.subject, d.site, now, nonce, back)
        site = d.site
        host = d.host or rq.pretty_host
        page = pages.template("warn.html").substitute(
            title=pages.esc(TITLE.format(site=site)),
            site_or_host=pages.esc(site),
            site=pages.esc(site),
            accent="#d69e2e",
            what=f"<strong>{pages.esc(host)}</strong> (part of {pages.esc(site)}) asks for a reason first.",
            why=pages.esc(WHY.format(site=site, minutes=grant.continue_minutes)),
            action=pages.esc(CONTINUE_PATH),
            token=pages.esc(token),
            reason_max=str(REASON_MAX),
            contact=f"Questions? Contact {pages.esc(contact or 'your IT service desk')}.",
            request_id=pages.esc(st.request_id),
            reason=pages.esc(d.reason),
            rule=pages.esc(d.rule),
            time=pages.esc(pages.stamp(st.ts, policy.timezone)),
            url=pages.esc(back if len(back) <= 300 else back[:300] + "\u2026"),
        )
        secure = "; Secure" if rq.scheme == "https" else ""
        headers = {
            **pages.SECURITY_HEADERS,
            "Content-Security-Policy": _WARN_CSP,
            # Same-origin: the form post then carries Origin and Referer for the check.
            "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY",
            # A window of the site that opened this page cannot reach into it for the token.
            "Cross-Origin-Opener-Policy": "same-origin",
            "Content-Type": pages.HTML_TYPE,
            "Set-Cookie": f"{COOKIE}={nonce}; Path={CONTINUE_PATH}; Max-Age={TOKEN_SECONDS}; HttpOnly; "
                          f"SameSite=Strict{secure}",
        }
        self._count("warn_pages", d)
        return 403, headers, page.encode("utf-8", "replace")

    # The form ------------------------------------------------------------------------

    def intercept(self, flow: http.HTTPFlow, st: FlowState, policy: Policy) -> None:
        """`flow` is for CONTINUE_PATH: never forwarded.  Answered here when it cannot be a form
        post; else its body is read and `answer` (the request hook) decides."""
        st.blocked_here = True  # its access record says so; a warn event adds what became of the form
        rq = flow.request
        if rq.method != "POST":
            self._refuse(flow, st, "only the warn page's form (a POST) may be sent here", status=405)
            return
        if rq.stream or declares_large_body(rq) or request_length_unknown(rq) or _length(rq) > BODY_MAX:
            self._audit_refused(st, "the form is larger than a reason can be")
            self._count("warn_refused", st.decision)
            flow.kill()
            self._gate.audit_flow(st, None, 0, 0, "killed")
            return
        # Until `answer` replaces it: whatever happens, nothing goes to the site.
        flow.response = http.Response.make(400, b"", {"Cache-Control": "no-store"})
        flow.metadata[META_CONTINUE] = (st, policy)

    def answer(self, flow: http.HTTPFlow) -> None:
        st, policy = flow.metadata.pop(META_CONTINUE)
        try:
            location, until, reason, grant = self._check(flow, st, policy)
        except Refused as why:
            self._refuse(flow, st, str(why))
            return
        d = st.decision
        self._audit(
            WARN_EVENT,
            st,
            role=d.role,
            rule=grant.continued_rule,
            justification=reason,
            until=datetime.fromtimestamp(until, timezone.utc),
            policy=st.policy,
        )
        self._count("warn_continues", d)
        log.info("warn_continued", request_id=st.request_id, site=d.site, minutes=grant.continue_minutes)
        flow.response = http.Response.make(303, b"", {
            "Location": location,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "Set-Cookie": f"{COOKIE}=; Path={CONTINUE_PATH}; Max-Age=0; HttpOnly; SameSite=Strict",
            "X-Accessgate-Decision": "allow",
            "X-Accessgate-Request-Id": st.request_id,
        })

    def _check(self, flow: http.HTTPFlow, st: FlowState, policy: Policy) -> tuple[str, float, str, Grant]:
        """(where to go back, until when, the reason, the grant) for a form that is honoured; else Refused."""
        rq = flow.request
        why = same_origin(flow)
        if why is not None:
            raise Refused(why)
        why = not_navigation(rq.headers)
        if why is not None:
            raise Refused(f"the form was not sent from the warn page: {why}")
        content_type = rq.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise Refused("the form must be sent as application/x-www-form-urlencoded")
        try:
            form = urllib.parse.parse_qs(rq.get_content(strict=True).decode("utf-8"), keep_blank_values=True,
                                         strict_parsing=True, max_num_fields=8)
        except (ValueError, UnicodeDecodeError):
            raise Refused("the form could not be read") from None
        tokens, reasons = form.get("token", []), form.get("reason", [])
        if len(tokens) != 1 or len(reasons) != 1:
            raise Refused("the form must carry one token and one reason")
        fields = read_token(self.key, tokens[0])
        now = time.time()
        issued = fields.get("t")
        if not isinstance(issued, int) or issued > now + CLOCK_SKEW:
            raise Refused("the form's token has an impossible time")
        if now - issued > TOKEN_SECONDS:
            raise Refused(f"the form is older than {TOKEN_SECONDS // 60} minutes; reload the page and try again")
        if fields.get("s") != st.identity.subject:
            raise Refused("the form was issued to someone else")
        d = st.decision
        grant = warn_grant(d, policy)
        if grant is None or (d.reason != engine.JUSTIFICATION_REQUIRED and d.rule != grant.continued_rule):
            raise Refused(f"the policy does not ask for a reason for {d.site or 'this site'} now")
        site = fields.get("site")
        if not isinstance(site, str) or site != d.site:
            raise Refused("the form was issued for another site than the one it was sent to")
        back = fields.get("u")
        if not isinstance(back, str) or _site_of_url(back, policy) != site:
            raise Refused("the form would return to another site than its own")
        nonce = fields.get("n")
        if not isinstance(nonce, str) or _cookie(flow) != [nonce]:
            raise Refused("the form's cookie is missing or does not match (was it sent from the warn page?)")
        reason = clean_reason(reasons[0])
        store = self._gate.ledger
        try:
            if not store.claim_nonce(nonce, issued + TOKEN_SECONDS + CLOCK_SKEW, now):
                raise Refused("the form was sent already (a form is good once)")
            assert grant.continue_minutes is not None
            until = now + grant.continue_minutes * 60
            store.continue_until(st.identity.subject, site, until, now)
        except StateStoreError:
            raise Refused("the proxy's state store cannot be reached; try again in a minute") from None
        return back, until, reason, grant

    def _refuse(self, flow: http.HTTPFlow, st: FlowState, why: str, status: int = 403) -> None:
        self._audit_refused(st, why)
        self._count("warn_refused", st.decision)
        accept = flow.request.headers.get("accept", "")
        headers = {
            **pages.SECURITY_HEADERS,
            "X-Accessgate-Decision": "block",
            "X-Accessgate-Reason": engine.JUSTIFICATION_REQUIRED,
            "X-Accessgate-Request-Id": st.request_id,
        }
        if pages.prefers_html(accept):
            headers["Content-Type"] = pages.HTML_TYPE
            body = (
                "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not continued</title></head>"
                f"<body><h1>Not continued</h1><p>{pages.esc(why[:1].upper() + why[1:])}.</p>"
                "<p>Go back, reload the page and give your reason again.</p>"
                f"<p>Request ID: {pages.esc(st.request_id)}</p></body></html>"
            ).encode("utf-8")
        else:
            headers["Content-Type"] = pages.JSON_TYPE
            body = pages.json_bytes({"decision": "block", "reason": engine.JUSTIFICATION_REQUIRED,
                                     "error": why, "request_id": st.request_id})
        flow.response = http.Response.make(status, body, headers)

    def _audit_refused(self, st: FlowState, why: str) -> None:
        log.warning("warn_refused", request_id=st.request_id, site=st.decision.site, why=why)
        self._audit(REFUSED_EVENT, st, note=why, policy=st.policy)

    def _audit(self, event: str, st: FlowState, **fields: Any) -> None:
        """An audit event about `st`'s request: who asked, from where, for which host and site, then `fields`."""
        self._gate.audit_event(event, request_id=st.request_id, user=st.identity.user,
                               client_ip=ip_text(st.identity.client_ip), host=st.host, site=st.decision.site,
                               **fields)

    def _count(self, name: str, d: Decision) -> None:
        try:
            getattr(self._gate.metrics, name)(d)
        except Exception:
            log.exception("ignored_error")


def clean_reason(text: str) -> str:
    """The reason as recorded: whitespace runs made one space, controls dropped, 1 to REASON_MAX characters."""
    reason = "".join(ch for ch in " ".join(text.split()) if ch.isprintable())
    if not reason:
        raise Refused("the reason is empty; say in a few words why you need the site")
    if len(reason) > REASON_MAX:
        raise Refused(f"the reason is longer than {REASON_MAX} characters; say it in fewer words")
    return reason


def _length(rq: http.Request) -> int:
    try:
        return int(rq.headers.get("content-length", "0"))
    except ValueError:
        return BODY_MAX + 1


def _site_of_url(url: str, policy: Policy) -> str | None:
    origin = _origin_of(url)
    if origin is None:
        return None
    try:
        host = normalize_host(origin[1])
    except (InvalidHost, ValueError):
        return None
    return engine.site_for(host, policy)
