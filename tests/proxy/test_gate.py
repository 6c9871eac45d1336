"""A blocked request gets the block page or is killed; an exception in any hook blocks.

In-process: accessgate's addons in mitmproxy's test context, hooks called
as mitmproxy calls them (tests/support/inprocess.py).  The end-to-end tests
(tests/e2e, tests/faults) show the same through a real mitmdump.
"""

from __future__ import annotations

import pytest
from mitmproxy import flow as mflow
from mitmproxy import tls
from mitmproxy.proxy import events, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.test import tflow

import accessgate.decision as engine
import accessgate.proxy.addon as addon
import accessgate.proxy.hygiene as hygiene
from accessgate.proxy.tunnels import Refuse
from support.inprocess import connect, loaded, request, respond
from support.wire import client_hello

MiB = 1024 * 1024
POST = ("POST", "http://www.linkedin.com/voyager/api/post")  # zoe may only read LinkedIn


def outcome(flow) -> str | int:
    """What the client gets: the status accessgate answered with, "killed", or "passed"."""
    if flow.error is not None and flow.error.msg == mflow.Error.KILLED_MESSAGE:
        return "killed"
    return flow.response.status_code if flow.response is not None else "passed"


# -- block page or kill ---------------------------------------------------------------

LINKEDIN = ("Host", "www.linkedin.com")
BLOCKED = [
    # id, zoe's request (method, url, header fields, HTTP version), proxy options,
    # what the client gets, the audit record's (status, error)
    ("a-small-form-post-gets-the-page", (*POST, [LINKEDIN, ("Content-Length", "11")], 1), {}, 403, (403, None)),
    ("a-body-of-exactly-the-limit-gets-the-page", (*POST, [LINKEDIN, ("Content-Length", str(MiB))], 1), {},
     403, (403, None)),
    ("a-denied-get-gets-the-page", ("GET", "http://www.reddit.com/", [("Host", "www.reddit.com")], 1), {},
     403, (403, None)),
    ("a-body-over-the-limit-is-killed", (*POST, [LINKEDIN, ("Content-Length", str(MiB + 1))], 1), {},
     "killed", (None, "killed")),
    ("a-chunked-body-is-killed", (*POST, [LINKEDIN, ("Transfer-Encoding", "chunked")], 1), {},
     "killed", (None, "killed")),
    ("a-malformed-length-is-killed", (*POST, [LINKEDIN, ("Content-Length", "12x")], 1), {},
     "killed", (None, "killed")),
    ("an-h2-body-of-unknown-length-is-killed-where-it-may-stream-late", (*POST, [LINKEDIN], 2),
     {"stream_large_bodies": "1m"}, "killed", (None, "killed")),
    ("an-h2-body-of-unknown-length-gets-the-page-where-nothing-streams", (*POST, [LINKEDIN], 2), {},
     403, (403, None)),
]  # fmt: skip


@pytest.mark.parametrize("sent,options,gets,record", [c[1:] for c in BLOCKED], ids=[c[0] for c in BLOCKED])
def test_a_blocked_request_gets_the_page_unless_its_body_cannot_be_refused_unread(
    tmp_path, sent, options, gets, record
):
    method, url, headers, version = sent
    with loaded(tmp_path, proxy_options=True, **options) as proxy:
        flow = request(method, url, headers, user="zoe", http_version=f"HTTP/{version}.0" if version == 2 else "HTTP/1.1")
        proxy.hook("requestheaders", flow)
        assert outcome(flow) == gets
        [audited] = proxy.records()
        assert (audited["decision"], audited["status"], audited.get("error")) == ("block", *record)


def test_a_streamed_body_is_killed_before_a_byte_of_it_leaves(tmp_path):
    with loaded(tmp_path) as proxy:
        flow = request(*POST, [("Host", "www.linkedin.com"), ("Content-Length", "11")], user="zoe")
        flow.request.stream = True  # stream_large_bodies: mitmproxy forwards it as it comes
        proxy.hook("requestheaders", flow)
        assert outcome(flow) == "killed"


def test_a_blocked_connect_is_answered_not_killed(tmp_path):
    # ignore_hosts: the tunnel might go through unread, so its CONNECT is decided.
    with loaded(tmp_path, ignore_hosts=[r"^bank\.test"]) as proxy:
        flow = connect("www.reddit.com:443", user="zoe")
        proxy.hook("http_connect", flow)
        assert outcome(flow) == 403
        assert flow.response.headers["content-type"] == "application/json"


# -- fail closed on every hook ----------------------------------------------------------


class Boom(RuntimeError):
    """The fault each case injects."""


def _raise(*args, **kwargs):
    raise Boom("injected")


def _decide_fails_for_boom(monkeypatch) -> None:
    real = engine.decide

    def decide(request, *args, **kwargs):
        if any("boom.test" in host for host in request.hosts):
            raise Boom("injected")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(engine, "decide", decide)


def _allowed(proxy, flow=None):
    """`flow` (a GET of an unlisted site) decided and allowed, before anything fails."""
    flow = flow or request("GET", "http://www.example.org/", user="zoe")
    proxy.hook("requestheaders", flow)
    assert outcome(flow) == "passed"
    return flow


def requestheaders(proxy, monkeypatch):
    _decide_fails_for_boom(monkeypatch)
    flow = request("GET", "http://boom.test/", user="zoe")
    proxy.hook("requestheaders", flow)
    return outcome(flow)


def http_connect(proxy, monkeypatch):
    _decide_fails_for_boom(monkeypatch)
    proxy.configure(ignore_hosts=[r"^bank\.test"])  # a CONNECT is decided only then
    flow = connect("boom.test:443", user="zoe")
    proxy.hook("http_connect", flow)
    return outcome(flow)


def responseheaders_streamed(proxy, monkeypatch):
    respond(flow := _allowed(proxy))
    flow.response.stream = True  # a streamed response, whose counter the hook sets up
    monkeypatch.setattr(addon, "request_of", _raise)
    proxy.hook("responseheaders", flow)
    return outcome(flow)


def responseheaders_alt_svc(proxy, monkeypatch):
    respond(flow := _allowed(proxy), headers=[("Alt-Svc", 'h3=":443"')])
    monkeypatch.setattr(hygiene, "drop_alt_svc", _raise)
    proxy.hook("responseheaders", flow)
    return outcome(flow)


def response(proxy, monkeypatch):
    respond(flow := _allowed(proxy))
    monkeypatch.setattr(addon, "body_size", _raise)
    proxy.hook("response", flow)
    return outcome(flow)


def response_upgraded_to_raw(proxy, monkeypatch):
    flow = _allowed(proxy, request("GET", "http://www.example.org/", [("Host", "www.example.org"), ("Upgrade", "x")]))
    monkeypatch.setattr(engine, "decide", _raise)
    respond(flow, 101, [("Upgrade", "x")])  # mitmproxy relays what follows raw: decided again
    proxy.hook("response", flow)
    return outcome(flow)


def error(proxy, monkeypatch):
    flow = _allowed(proxy)
    flow.error = mflow.Error("the site went away")
    monkeypatch.setattr(addon, "body_size", _raise)
    proxy.hook("error", flow)
    return "counted"


def stream(proxy, monkeypatch):
    flow = request("POST", "http://www.example.org/", [("Host", "www.example.org"), ("Content-Length", "9")])
    flow.request.stream = True
    _allowed(proxy, flow)
    monkeypatch.setattr(engine, "decide", _raise)
    sent = flow.request.stream(b"body part")  # the first chunk: decided again, and failing
    return "killed, nothing sent" if sent == [] and outcome(flow) == "killed" else sent


def websocket_message(proxy, monkeypatch):
    flow = tflow.twebsocketflow()
    flow.metadata["proxyauth"] = ("zoe", "password")
    upgraded, flow.response = flow.response, None  # the 101 comes after the request is decided
    _allowed(proxy, flow)
    monkeypatch.setattr(engine, "decide", _raise)
    flow.response = upgraded
    proxy.hook("websocket_start", flow)
    proxy.hook("websocket_message", flow)
    return outcome(flow)


def next_layer(proxy, monkeypatch):
    _decide_fails_for_boom(monkeypatch)
    proxy.configure(tcp_hosts=[r"^boom\.test"])  # a tunnel mitmproxy relays unread
    nextlayer = NextLayer(_context(proxy, ("boom.test", 22)))
    nextlayer.layer = layers.TCPLayer(nextlayer.context)
    nextlayer.events.append(_data(nextlayer.context, b"SSH-2.0-OpenSSH_9.2\r\n"))
    last_word(proxy).next_layer(nextlayer)
    return "refused" if isinstance(nextlayer.layer, Refuse) else type(nextlayer.layer).__name__


def tls_clienthello(proxy, monkeypatch):
    _decide_fails_for_boom(monkeypatch)
    data = tls.ClientHelloData(_context(proxy, ("boom.test", 443)), parse_client_hello(client_hello(["boom.test"])))
    data.ignore_connection = True  # another addon asks for a passthrough
    last_word(proxy).tls_clienthello(data)
    return "passed unread" if data.ignore_connection else "intercepted"


def tcp_start(proxy, monkeypatch):
    _decide_fails_for_boom(monkeypatch)
    flow = tflow.ttcpflow()
    flow.server_conn.address = ("boom.test", 22)
    proxy.hook("tcp_start", flow)
    return "relay opened" if flow.client_conn.id in proxy.gate.sessions.relays else "not opened"


def last_word(proxy):
    return proxy.tctx.master.addons.get("accessgate_next_layer")


def _context(proxy, server: tuple[str, int]):
    """A client connection's context, its server `server` (a CONNECT target, say)."""
    context = Context(tflow.tclient_conn(), proxy.tctx.options)
    context.server = tflow.tserver_conn()
    context.server.address = server
    return context


def _data(context, data: bytes) -> events.DataReceived:
    return events.DataReceived(context.client, data)


HOOKS = [
    # id, stage counted, how it fails, what the client gets, the audit record's (status, error); None: no record
    ("requestheaders", "requestheaders", requestheaders, 403, (403, None)),
    ("http-connect", "http_connect", http_connect, 403, (403, None)),
    ("responseheaders-of-a-stream", "responseheaders", responseheaders_streamed, "killed", (None, "killed")),
    ("responseheaders-alt-svc", "responseheaders", responseheaders_alt_svc, "killed", (None, "killed")),
    ("response", "response", response, 403, (403, None)),
    ("response-101-to-a-raw-relay", "response", response_upgraded_to_raw, 403, (403, None)),
    ("error", "error", error, "counted", None),
    ("a-streamed-body", "stream", stream, "killed, nothing sent", None),
    ("websocket-message", "websocket_message", websocket_message, "killed", None),
    ("next-layer", "next_layer", next_layer, "refused", None),
    ("tls-clienthello-passthrough", "tls_clienthello", tls_clienthello, "intercepted", None),
    ("tcp-start", "tcp_start", tcp_start, "not opened", None),
]  # fmt: skip


@pytest.mark.parametrize("stage,fail,gets,record", [h[1:] for h in HOOKS], ids=[h[0] for h in HOOKS])
def test_an_exception_in_a_hook_blocks_is_counted_and_audited(tmp_path, monkeypatch, stage, fail, gets, record):
    with loaded(tmp_path, proxy_options=True) as proxy:
        assert fail(proxy, monkeypatch) == gets
        assert proxy.fail_closed(stage) == 1
        failed = [r for r in proxy.records() if r["rule"] == "internal-error"]
        if record is None:
            assert failed == []
        else:
            assert [(r["decision"], r["status"], r.get("error")) for r in failed] == [("block", *record)]


def test_the_block_page_calls_the_site_by_the_catalogs_display_name(tmp_path):
    # The example policy includes the catalog, which names tiktok "TikTok".
    with loaded(tmp_path) as proxy:
        flow = request("GET", "http://www.tiktok.com/", [("Host", "www.tiktok.com"), ("Accept", "text/html")], user="zoe")
        proxy.hook("requestheaders", flow)
        assert outcome(flow) == 403
        page = flow.response.get_text()
        assert "(part of TikTok) was blocked" in page and "TikTok is not available to your role everyone." in page
        assert "Tiktok" not in page
        [audited] = proxy.records()
        assert audited["site"] == "tiktok"  # the log and metrics keep the key
