"""The bypass table: every way we know to name a host, a method or a tunnel so as to slip past.

Each case is one real request through a real mitmdump with accessgate, from
user zoe (tests/adversarial/policy.yaml: facebook=deny, linkedin=read-only,
everything else unlisted and allowed; facebook also owns 127.0.0.0/8 and
::1 so that IP literals are governed).  A case says which rule it checks,
what the client must get back, and whether the origin may see it.  The
origin's own record is the proof: a blocked case never reaches it.

SECURITY.md lists every case id; tests/adversarial/test_security_md.py
keeps the two in sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from support.mitmlines import REPEATED_HOST_REFUSED
from support.wire import Reply, basic, client_hello, h2, hello_then_read, pipelined, plain, request, tunnel

AUTH = basic()
FB, LI, FREE = "facebook.test", "linkedin.test", "example.test"
IGNORED = "bank.test"  # matched by ignore_hosts in the "passthrough" proxy

# Expected outcomes, as the client sees them.
OK, BLOCKED, BAD_REQUEST, AUTH_REQUIRED, TOO_LONG, CLOSED = 200, 403, 400, 407, 414, 0


@dataclass(frozen=True)
class Case:
    id: str
    rule: str  # the rule it checks, in one line
    proxy: str  # "plain" (proxyauth), "passthrough" (+ignore_hosts), "streaming" (+stream_large_bodies),
    #             "inspect" (policy-inspect.yaml: TLS may pass through unread), "inspect-refuse-ech" (+refuse ECH)
    #             "balanced" (+accessgate_trusted_proxies naming another address than the client's)
    send: Callable[[object], Reply]
    status: int  # what the client gets; CLOSED: the connection ends without a response
    reason: str | None = None  # X-Accessgate-Reason of a block
    reaches_origin: bool = False
    tunnel: str | None = None  # for uninspected tunnels: the audited decision ("allow"/"block")
    origin_lacks: str | None = None  # a header the origin must not receive
    tls_answer: bool = False  # the proxy answered the ClientHello itself: intercepted, not relayed
    # Refused by mitmproxy's HTTP/2 library before any hook where it does so
    # (support.mitmlines: h2 4.2+, mitmproxy 12): the connection closes, the
    # origin sees nothing, and mitmproxy's log holds this text.
    refused_first: str | None = None
    certificate: str | None = None  # whose certificate the client saw: "proxy" (decrypted) or "origin" (not)
    inspection: str | None = None  # how the proxy counted the TLS connection: decrypted, passed-through, refused

    @property
    def refused_by_mitmproxy(self) -> bool:
        """This mitmproxy line refuses the request itself, before accessgate sees it."""
        from support.mitmlines import h2_refuses_repeated_host

        return self.refused_first is not None and h2_refuses_repeated_host()

    @property
    def decision(self) -> str:
        if self.tunnel is not None:
            return self.tunnel
        return "allow" if self.reaches_origin else "block"


def get(url: str, *, host: str | None | bytes = "", method: str = "GET", headers=(), body=b"",
        version: str = "HTTP/1.1", auth: str | None = AUTH):
    """A proxy request in absolute form; host '' = the URL's host, None = no Host header."""
    if host == "":
        host = url.split("//", 1)[1].split("/", 1)[0]
    hdrs = ([("Host", host)] if host is not None else []) + list(headers)
    return lambda p: plain(p, request(method, url, hdrs, body, version, auth=auth))


def raw(data: bytes):
    return lambda p: plain(p, data)


def inside(connect: str, host: str | None, *, sni: str | None = "", method: str = "GET", path: str = "/",
           headers=(), body=b"", tls: bool = True, version: str = "HTTP/1.1"):
    """CONNECT `connect`, TLS with `sni` ('' = the CONNECT host), then one HTTP/1 request."""
    hdrs = ([("Host", host)] if host is not None else []) + list(headers)
    return lambda p: tunnel(p, connect, request(method, path, hdrs, body, version), sni=sni, tls=tls)


def h2req(connect: str, headers, body=b"", sni: str | None = ""):
    return lambda p: h2(p, connect, headers, body, sni=sni)


def hello(connect: str, snis=(), ech: bool = False):
    return lambda p: hello_then_read(p, connect, client_hello(list(snis), ech=ech))


def pseudo(method: str, authority: str | None, path: str = "/") -> list[tuple[str, str]]:
    head = [(":method", method), (":scheme", "https")]
    if authority is not None:
        head.append((":authority", authority))
    return head + [(":path", path)]


FOLDED_HOST = (
    b"GET http://example.test/ HTTP/1.1\r\nProxy-Authorization: " + AUTH.encode()
    + b"\r\nHost: example.test\r\n facebook.test\r\n\r\n"
)  # fmt: skip
FOLDED_OTHER = (
    b"GET http://example.test/ HTTP/1.1\r\nProxy-Authorization: " + AUTH.encode()
    + b"\r\nHost: example.test\r\nX-Note: a\r\n\tHost: facebook.test\r\n\r\n"
)  # fmt: skip
SPACE_BEFORE_COLON = (
    b"GET http://example.test/ HTTP/1.1\r\nProxy-Authorization: " + AUTH.encode()
    + b"\r\nHost : facebook.test\r\n\r\n"
)  # fmt: skip
WS = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
      ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]  # fmt: skip
# A client's own PROXY headers (v1 text, v2 binary) naming another address, before a request it may make.
PROXY_V1 = b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 3128\r\n"
PROXY_V2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([10, 1, 2, 3, 127, 0, 0, 1])
            + (40000).to_bytes(2, "big") + (3128).to_bytes(2, "big"))
ALLOWED_GET = (b"GET http://example.test/ HTTP/1.1\r\nProxy-Authorization: " + AUTH.encode()
               + b"\r\nHost: example.test\r\n\r\n")
SMUGGLED = b"0\r\n\r\nPOST /feed HTTP/1.1\r\nHost: linkedin.test\r\nContent-Length: 1\r\n\r\nx"
BIG = b"x" * 5000  # above the streaming proxy's stream_large_bodies=1k
# 20,000 different Host headers, each with fullwidth dots (UTS-46 maps them): issue 14, hole 7.
MANY_HOSTS = [("Host", f"h{i}\uff0eexample\uff0etest") for i in range(20_000)]

CASES: list[Case] = [
    # -- host spellings ------------------------------------------------------
    Case("host-upper-case", "host names are case-insensitive", "plain",
         get("http://FACEBOOK.TEST/"), BLOCKED, "denied"),
    Case("host-trailing-dot", "a trailing dot names the same host", "plain",
         get("http://facebook.test./"), BLOCKED, "denied"),
    Case("host-port-with-leading-zeros", "a port (even :00080) is not part of the host", "plain",
         get("http://facebook.test:00080/"), BLOCKED, "denied"),
    Case("connect-port-00443", "a CONNECT port with leading zeros names the same host", "plain",
         inside("facebook.test:00443", FREE, sni=FREE), BLOCKED, "denied"),
    Case("idn-unicode-host-header", "an IDN in Unicode is its A-label", "plain",
         get("http://example.test/", host="фейсбук.test"), BLOCKED, "denied"),
    Case("idn-upper-case-unicode", "Unicode case folds before matching", "plain",
         get("http://example.test/", host="ФЕЙСБУК.test"), BLOCKED, "denied"),
    Case("idn-a-label-url", "the A-label of a governed IDN is governed", "plain",
         get("http://xn--90ahmf7anc.test/"), BLOCKED, "denied"),
    Case("idn-unicode-in-request-line", "mitmproxy refuses a non-ASCII request target", "plain",
         get("http://фейсбук.test/", host=None), BAD_REQUEST),
    Case("homoglyph-is-another-host", "a homoglyph (Cyrillic o) is a different, unlisted name", "plain",
         get("http://example.test/", host="facebооk.test"), OK, reaches_origin=True),
    Case("homoglyph-host-cannot-hide-connect", "the CONNECT target still decides beside a homoglyph", "plain",
         inside("facebook.test:443", "facebооk.test", sni=FREE), BLOCKED, "denied"),
    Case("fullwidth-unicode-host", "fullwidth letters map (UTS-46) to ASCII", "plain",
         get("http://example.test/", host="ｆａｃｅｂｏｏｋ.test"), BLOCKED, "denied"),
    Case("ideographic-full-stop", "U+3002 is a label separator", "plain",
         get("http://example.test/", host="facebook\u3002test"), BLOCKED, "denied"),
    Case("zero-width-space-in-host", "UTS-46 deletes zero-width characters", "plain",
         get("http://example.test/", host="face\u200bbook.test"), BLOCKED, "denied"),
    Case("whitespace-around-host", "optional whitespace around a Host value is trimmed", "plain",
         get("http://example.test/", host="  facebook.test\t"), BLOCKED, "denied"),
    Case("space-inside-host", "a name that cannot be a host is blocked", "plain",
         get("http://example.test/", host="face book.test"), BLOCKED, "denied"),
    Case("space-before-colon", "a header name with a space is a bad request", "plain",
         raw(SPACE_BEFORE_COLON), BAD_REQUEST),
    Case("obs-folded-host", "a folded Host value is decided whole (and is no host)", "plain",
         raw(FOLDED_HOST), BLOCKED, "denied"),
    Case("obs-fold-hides-host-line", "an obs-fold is unfolded before the site sees it", "plain",
         raw(FOLDED_OTHER), OK, reaches_origin=True),
    Case("duplicate-host-http1", "every Host header is decided", "plain",
         get("http://example.test/", host=None, headers=[("Host", FREE), ("Host", FB)]), BLOCKED, "denied"),
    Case("duplicate-host-http1-reversed", "every Host header is decided, in any order", "plain",
         get("http://example.test/", host=None, headers=[("Host", FB), ("Host", FREE)]), BLOCKED, "denied"),
    Case("missing-host-absolute-form", "the absolute-form URL names the host", "plain",
         get("http://facebook.test/", host=None), BLOCKED, "denied"),
    Case("missing-host-origin-form", "a proxy request with no host at all is a bad request", "plain",
         get("/", host=None), BAD_REQUEST),
    Case("missing-host-in-tunnel", "the CONNECT target names the host", "plain",
         inside("facebook.test:443", None, sni=FREE), BLOCKED, "denied"),
    Case("missing-host-sni-decides", "the SNI names the host", "plain",
         inside("example.test:443", None, sni=FB), BLOCKED, "denied"),
    Case("http-1.0-no-host", "HTTP/1.0 without Host is decided on its URL", "plain",
         get("http://facebook.test/", host=None, version="HTTP/1.0"), BLOCKED, "denied"),
    Case("http-1.0-in-tunnel", "HTTP/1.0 inside a tunnel is decided on CONNECT and SNI", "plain",
         inside("facebook.test:443", None, sni=FREE, version="HTTP/1.0"), BLOCKED, "denied"),
    Case("non-utf8-host-bytes", "Latin-1 bytes in Host cannot be a host name", "plain",
         get("http://example.test/", host=b"faceb\xf6ok.test"), BLOCKED, "denied"),
    Case("very-long-host-label", "a label over 63 characters is no host name", "plain",
         get("http://example.test/", host="a" * 300 + ".facebook.test"), BLOCKED, "denied"),
    Case("very-long-host-name", "a name over 253 characters is no host name", "plain",
         get("http://example.test/", host=".".join(["a" * 60] * 5) + ".facebook.test"), BLOCKED, "denied"),
    Case("host-with-userinfo-at", "'user@host' in Host is no host name", "plain",
         get("http://example.test/", host="example.test@facebook.test"), BLOCKED, "denied"),
    Case("host-with-path", "'host/path' in Host is no host name", "plain",
         get("http://example.test/", host="facebook.test/x"), BLOCKED, "denied"),
    Case("host-header-name-odd-case", "a header named hOsT is a Host header", "plain",
         get("http://example.test/", host=None, headers=[("hOsT", FB)]), BLOCKED, "denied"),
    Case("https-absolute-form-on-plain-proxy", "https:// in a plain proxy request is decided the same", "plain",
         get("https://facebook.test/"), BLOCKED, "denied"),
    Case("pipelined-second-request", "each request on a keep-alive connection is decided", "plain",
         lambda p: pipelined(p, request("GET", "http://example.test/1", [("Host", FREE)], auth=AUTH),
                             request("GET", "http://facebook.test/2", [("Host", FB)], auth=AUTH)),
         BLOCKED, "denied", reaches_origin=True),
    Case("pipelined-in-tunnel", "each request inside a tunnel is decided, not only the first", "plain",
         lambda p: pipelined(p, request("GET", "/1", [("Host", FREE)]), request("GET", "/2", [("Host", FB)]),
                             connect="example.test:443"),
         BLOCKED, "denied", reaches_origin=True),
    # -- IP literals (facebook owns 127.0.0.0/8 and ::1) ---------------------
    Case("ip-dotted", "an IP literal matches the site's networks", "plain",
         get("http://127.0.0.1/"), BLOCKED, "denied"),
    Case("ip-decimal", "2130706433 is 127.0.0.1", "plain", get("http://2130706433/"), BLOCKED, "denied"),
    Case("ip-hex-dotted", "0x7f.0x0.0x0.0x1 is 127.0.0.1", "plain",
         get("http://0x7f.0x0.0x0.0x1/"), BLOCKED, "denied"),
    Case("ip-hex-single", "0x7f000001 is 127.0.0.1", "plain", get("http://0x7f000001/"), BLOCKED, "denied"),
    Case("ip-octal", "0177.0.0.1 is 127.0.0.1", "plain", get("http://0177.0.0.1/"), BLOCKED, "denied"),
    Case("ip-short", "127.1 is 127.0.0.1", "plain", get("http://127.1/"), BLOCKED, "denied"),
    Case("ip-v6", "an IPv6 literal matches IPv6 networks", "plain", get("http://[::1]/"), BLOCKED, "denied"),
    Case("ip-v4-mapped-v6", "::ffff:127.0.0.1 reaches 127.0.0.1", "plain",
         get("http://[::ffff:127.0.0.1]/"), BLOCKED, "denied"),
    Case("ip-v4-mapped-v6-hex", "::ffff:7f00:1 reaches 127.0.0.1", "plain",
         get("http://[::ffff:7f00:1]/"), BLOCKED, "denied"),
    Case("ip-in-host-header", "an IP literal in Host is decided too", "plain",
         get("http://example.test/", host="[::1]:80"), BLOCKED, "denied"),
    Case("ip-connect-target", "an IP literal CONNECT target is decided", "plain",
         inside("2130706433:443", FREE, sni=FREE), BLOCKED, "denied"),
    # -- userinfo and absolute-form ----------------------------------------
    Case("userinfo-before-denied-host", "userinfo in a proxy request is a bad request", "plain",
         get("http://example.test@facebook.test/", host=FB), BAD_REQUEST),
    Case("userinfo-naming-denied-host", "userinfo never names the host (refused outright)", "plain",
         get("http://facebook.test@example.test/", host=FREE), BAD_REQUEST),
    Case("absolute-form-harmless-host-denied", "the Host header decides beside the URL", "plain",
         get("http://example.test/", host=FB), BLOCKED, "denied"),
    Case("absolute-form-denied-host-harmless", "the URL decides beside the Host header", "plain",
         get("http://facebook.test/", host=FREE), BLOCKED, "denied"),
    # -- CONNECT, SNI and the inner Host (domain fronting) -------------------
    Case("fronting-inner-host", "the inner Host decides in a harmless tunnel", "plain",
         inside("example.test:443", FB, sni=FREE), BLOCKED, "denied"),
    Case("fronting-sni", "the SNI decides in a harmless tunnel", "plain",
         inside("example.test:443", FREE, sni=FB), BLOCKED, "denied"),
    Case("fronting-connect", "the CONNECT target decides under harmless SNI and Host", "plain",
         inside("facebook.test:443", FREE, sni=FREE), BLOCKED, "denied"),
    Case("missing-sni-inner-host", "without SNI the inner Host still decides", "plain",
         inside("example.test:443", FB, sni=None), BLOCKED, "denied"),
    Case("missing-sni-harmless", "without SNI a harmless request passes", "plain",
         inside("example.test:443", FREE, sni=None), OK, reaches_origin=True),
    Case("connect-nested-in-tls-tunnel", "a CONNECT inside a tunnel is refused", "plain",
         inside("example.test:443", "facebook.test:443", method="CONNECT", path="facebook.test:443"),
         BAD_REQUEST),
    Case("connect-nested-in-plain-tunnel", "a CONNECT inside a plain tunnel is refused", "plain",
         inside("example.test:80", "facebook.test:443", method="CONNECT", path="facebook.test:443", tls=False),
         BAD_REQUEST),
    Case("plain-http-after-connect", "HTTP without TLS after CONNECT is decided like any request", "plain",
         inside("example.test:443", FB, tls=False), BLOCKED, "denied"),
    Case("raw-bytes-after-connect-to-denied", "an unreadable tunnel to a denied site is closed", "plain",
         inside("facebook.test:443", None, tls=False, method="\x00\x01", path="x"), CLOSED, tunnel="block"),
    Case("ech-hello-in-intercepted-tunnel", "an ECH ClientHello is intercepted, not relayed", "plain",
         hello("example.test:443", [FB], ech=True), CLOSED, tls_answer=True),
    Case("connect-without-port", "a CONNECT target without a port is a bad request", "plain",
         raw(b"CONNECT facebook.test HTTP/1.1\r\nHost: facebook.test\r\nProxy-Authorization: "
             + AUTH.encode() + b"\r\n\r\n"), BAD_REQUEST),
    Case("connect-with-userinfo", "a CONNECT target with userinfo is a bad request", "plain",
         raw(b"CONNECT x@facebook.test:443 HTTP/1.1\r\nHost: facebook.test:443\r\nProxy-Authorization: "
             + AUTH.encode() + b"\r\n\r\n"), BAD_REQUEST),
    # -- HTTP/2 -------------------------------------------------------------
    Case("h2-authority-denied", ":authority decides", "plain",
         h2req("example.test:443", pseudo("GET", FB)), BLOCKED, "denied"),
    Case("h2-host-without-authority", "an HTTP/2 host header decides", "plain",
         h2req("example.test:443", pseudo("GET", None) + [("host", FB)]), BLOCKED, "denied"),
    Case("h2-authority-vs-host", "a host that disagrees with :authority is refused", "plain",
         h2req("example.test:443", pseudo("GET", FREE) + [("host", FB)]), CLOSED),
    Case("h2-duplicate-host-last-matches", "every HTTP/2 host header is decided, not only the last", "plain",
         h2req("example.test:443", pseudo("GET", FREE) + [("host", FB), ("host", FREE)]), BLOCKED, "denied",
         refused_first=REPEATED_HOST_REFUSED),
    Case("h2-duplicate-host-first-matches", "a last host that disagrees is refused", "plain",
         h2req("example.test:443", pseudo("GET", FREE) + [("host", FREE), ("host", FB)]), CLOSED),
    Case("h2-authority-upper-case-trailing-dot", "an HTTP/2 :authority is normalized", "plain",
         h2req("example.test:443", pseudo("GET", "FACEBOOK.test.")), BLOCKED, "denied"),
    Case("h2-lowercase-post", "an HTTP/2 post is POST", "plain",
         h2req("linkedin.test:443", pseudo("post", LI), b"x"), BLOCKED, "read-only"),
    Case("h2-write-to-read-only", "HTTP/2 POST on read-only is a write", "plain",
         h2req("linkedin.test:443", pseudo("POST", LI), b"x"), BLOCKED, "read-only"),
    Case("h2-read-on-read-only", "HTTP/2 GET on read-only passes", "plain",
         h2req("linkedin.test:443", pseudo("GET", LI)), OK, reaches_origin=True),
    Case("h2-extended-connect-websocket", "HTTP/2 extended CONNECT (WebSocket) is refused", "plain",
         h2req("linkedin.test:443", [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                     (":authority", LI), (":path", "/ws")]), CLOSED),
    Case("h2-connect-in-tunnel", "an HTTP/2 CONNECT inside a tunnel is refused", "plain",
         h2req("example.test:443", [(":method", "CONNECT"), (":authority", "facebook.test:443")]), CLOSED),
    # -- methods on read-only -----------------------------------------------
    Case("lowercase-post", "methods are case-insensitive: post is POST", "plain",
         get("http://linkedin.test/feed", method="post", body=b"x"), BLOCKED, "read-only"),
    Case("lowercase-get-is-a-read", "get is GET, a read", "plain",
         get("http://linkedin.test/feed", method="get"), OK, reaches_origin=True),
    Case("unknown-method", "an unknown method is a write", "plain",
         get("http://linkedin.test/", method="PURGE"), BLOCKED, "read-only"),
    Case("made-up-method", "a made-up method is a write", "plain",
         get("http://linkedin.test/", method="FROB"), BLOCKED, "read-only"),
    Case("override-x-http-method-override", "X-HTTP-Method-Override naming a write is a write", "plain",
         get("http://linkedin.test/", headers=[("X-HTTP-Method-Override", "DELETE")]), BLOCKED, "read-only"),
    Case("override-x-http-method", "X-HTTP-Method naming a write is a write", "plain",
         get("http://linkedin.test/", headers=[("X-HTTP-Method", "put")]), BLOCKED, "read-only"),
    Case("override-x-method-override", "X-Method-Override naming a write is a write", "plain",
         get("http://linkedin.test/", headers=[("x-method-override", "POST")]), BLOCKED, "read-only"),
    Case("override-duplicate-headers", "every override header is decided", "plain",
         get("http://linkedin.test/", headers=[("X-HTTP-Method-Override", "GET"),
                                               ("X-HTTP-Method-Override", "DELETE")]), BLOCKED, "read-only"),
    Case("override-non-utf8", "an override that is not a read method is a write", "plain",
         get("http://linkedin.test/", headers=[("X-HTTP-Method", b"DEL\xffETE")]), BLOCKED, "read-only"),
    Case("get-with-body", "GET with a body is still a read (spec 2.6); the body passes", "plain",
         get("http://linkedin.test/feed", body=b"hello"), OK, reaches_origin=True),
    Case("chunked-post", "a chunked POST is a write, killed before its body is read", "plain",
         get("http://linkedin.test/", method="POST", headers=[("Transfer-Encoding", "chunked")],
             body=b"5\r\nhello\r\n0\r\n\r\n"), CLOSED),
    Case("expect-100-continue-write", "a write that waits for 100 Continue is still blocked", "plain",
         get("http://linkedin.test/", method="POST", headers=[("Expect", "100-continue")], body=b"hello"),
         BLOCKED, "read-only"),
    Case("smuggled-request-cl-te", "Content-Length with Transfer-Encoding is a bad request", "plain",
         get("http://linkedin.test/feed", headers=[("Content-Length", str(len(SMUGGLED))),
                                                   ("Transfer-Encoding", "chunked")], body=SMUGGLED), BAD_REQUEST),
    # -- upgrades on read-only ---------------------------------------------
    Case("websocket-upgrade", "a WebSocket upgrade is a write", "plain",
         get("http://linkedin.test/ws", headers=WS), BLOCKED, "read-only"),
    Case("websocket-upgrade-in-tunnel", "a WebSocket upgrade over TLS is a write", "plain",
         inside("linkedin.test:443", LI, path="/ws", headers=WS), BLOCKED, "read-only"),
    Case("upgrade-without-connection", "an Upgrade header alone is a write", "plain",
         get("http://linkedin.test/", headers=[("Upgrade", "websocket")]), BLOCKED, "read-only"),
    Case("upgrade-h2c", "an h2c upgrade is a write", "plain",
         get("http://linkedin.test/", headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                                               ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")]),
         BLOCKED, "read-only"),
    # -- long requests and bytes -------------------------------------------
    Case("very-long-path-denied", "a 70 kB path to a denied site is blocked", "plain",
         get("http://facebook.test/" + "a" * 70_000), BLOCKED, "denied"),
    Case("very-long-path-read-only", "mitmproxy refuses a 70 kB request line", "plain",
         get("http://linkedin.test/" + "a" * 70_000), TOO_LONG),
    # -- proxy credentials --------------------------------------------------
    Case("proxy-auth-not-base64", "malformed credentials get 407", "plain",
         get("http://example.test/", auth="Basic !!!not-base64"), AUTH_REQUIRED),
    Case("proxy-auth-without-colon", "credentials without a password get 407", "plain",
         get("http://example.test/", auth="Basic em9l"), AUTH_REQUIRED),
    Case("proxy-auth-wrong-scheme", "a non-Basic scheme gets 407", "plain",
         get("http://example.test/", auth="Bearer abc"), AUTH_REQUIRED),
    Case("proxy-auth-twice", "two Proxy-Authorization headers get 407", "plain",
         get("http://example.test/", headers=[("Proxy-Authorization", basic("alice"))]), AUTH_REQUIRED),
    Case("proxy-auth-missing", "no credentials get 407", "plain",
         get("http://example.test/", auth=None), AUTH_REQUIRED),
    Case("second-proxy-auth-in-tunnel", "a Proxy-Authorization inside a tunnel never reaches the site", "plain",
         inside("linkedin.test:443", LI, headers=[("Proxy-Authorization", basic("alice"))]), OK,
         reaches_origin=True, origin_lacks="proxy-authorization"),
    Case("second-proxy-auth-cannot-write", "the tunnel's user decides, whatever the inner credentials", "plain",
         inside("linkedin.test:443", LI, method="POST", body=b"x",
                headers=[("Proxy-Authorization", basic("alice"))]), BLOCKED, "read-only"),
    Case("accessgate-header-spoof", "X-Accessgate-* headers from the client never reach the site", "plain",
         get("http://example.test/", headers=[("X-Accessgate-Decision", "allow")]), OK,
         reaches_origin=True, origin_lacks="x-accessgate-decision"),
    # -- uninspected tunnels (ignore_hosts: ^bank\.test) --------------------
    Case("passthrough-spoofed-sni", "only CONNECT is known: a denied CONNECT is refused", "passthrough",
         hello("facebook.test:443", [IGNORED]), BLOCKED, "denied"),
    Case("passthrough-ech-outer-sni", "ECH hides nothing from the CONNECT check", "passthrough",
         hello("facebook.test:443", [IGNORED], ech=True), BLOCKED, "denied"),
    Case("passthrough-denied-sni", "a denied SNI closes an uninspected tunnel", "passthrough",
         hello("bank.test:443", [FB]), CLOSED, tunnel="block"),
    Case("passthrough-denied-sni-with-ech", "a denied outer SNI with ECH closes it too", "passthrough",
         hello("bank.test:443", [FB], ech=True), CLOSED, tunnel="block"),
    Case("passthrough-duplicate-sni-denied-first", "the first SNI name (what servers use) decides", "passthrough",
         hello("bank.test:443", [FB, IGNORED]), CLOSED, tunnel="block"),
    Case("passthrough-duplicate-sni-denied-last", "every SNI name decides", "passthrough",
         hello("bank.test:443", [IGNORED, FB]), CLOSED, tunnel="block"),
    Case("passthrough-missing-sni", "without SNI the CONNECT target decides", "passthrough",
         hello("bank.test:443", []), CLOSED, tunnel="allow"),
    Case("passthrough-ip-literal", "an IP CONNECT target is decided before passthrough", "passthrough",
         hello("127.0.0.1:443", [IGNORED]), BLOCKED, "denied"),
    Case("passthrough-raw-tcp", "a raw TCP tunnel is decided on its CONNECT target", "passthrough",
         inside("facebook.test:443", None, tls=False, method="\x00", path="x"), BLOCKED, "denied"),
    # -- stream_large_bodies ------------------------------------------------
    Case("streamed-write-to-read-only", "a streamed write is killed before its body leaves", "streaming",
         get("http://linkedin.test/", method="POST", body=BIG), CLOSED),
    Case("streamed-chunked-write", "a streamed chunked write is killed", "streaming",
         get("http://linkedin.test/", method="POST", headers=[("Transfer-Encoding", "chunked")],
             body=b"1388\r\n" + BIG + b"\r\n0\r\n\r\n"), CLOSED),
    Case("streamed-write-to-denied", "a streamed request to a denied site is killed", "streaming",
         get("http://facebook.test/", method="POST", body=BIG), CLOSED),
    Case("streamed-write-in-tunnel", "a streamed write inside TLS is killed", "streaming",
         inside("linkedin.test:443", LI, method="POST", body=BIG), CLOSED),
    Case("streamed-upload-to-unlisted", "a streamed upload to an unlisted site passes whole", "streaming",
         get("http://example.test/echo", method="POST", body=BIG), OK, reaches_origin=True),
    # -- issue 14, holes 1, 3 and 7 (fix/hosts) ---------------------------------
    # Hole 1: a name is normalized once; what still differs after it is no host name.
    Case("host-two-trailing-dots", "two trailing dots make no host name", "plain",
         get("http://example.test/", host="www.facebook.test.."), BLOCKED, "denied"),
    Case("host-two-trailing-dots-in-tunnel", "two trailing dots make no host name inside a tunnel", "plain",
         inside("example.test:443", "www.facebook.test..", sni=FREE), BLOCKED, "denied"),
    Case("h2-host-two-trailing-dots", "two trailing dots make no HTTP/2 host", "plain",
         h2req("example.test:443", pseudo("GET", None) + [("host", "www.facebook.test..")]), BLOCKED, "denied"),
    Case("host-two-trailing-dots-read-only-write", "two trailing dots cannot carry a write past read-only",
         "plain", get("http://example.test/", host="linkedin.test..", method="POST", body=b"x"), BLOCKED, "denied"),
    Case("host-ideographic-stop-then-dot", "a dot after a mapped full stop is a second trailing dot", "plain",
         get("http://example.test/", host="example.test\u3002."), BLOCKED, "denied"),
    Case("host-fullwidth-stop-then-dot", "a dot after a fullwidth full stop is a second trailing dot", "plain",
         get("http://example.test/", host="\uff45xample.test\uff0e."), BLOCKED, "denied"),
    # Hole 3: a read_only_allow rule matches the path as the server resolves it.
    Case("rule-path-allows-its-write", "a read_only_allow rule lets its own write through", "plain",
         get("http://linkedin.test/login/submit", method="POST", body=b"x"), OK, reaches_origin=True),
    Case("rule-path-dot-segment-kept-inside", "a dot segment that stays inside the rule still matches", "plain",
         get("http://linkedin.test/login/a/../submit", method="POST", body=b"x"), OK, reaches_origin=True),
    Case("rule-path-dot-segments", "dot segments are removed before a rule matches", "plain",
         get("http://linkedin.test/login/../feed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-encoded-dot-segments", "%2e%2E is a dot segment too", "plain",
         get("http://linkedin.test/login/%2e%2E/feed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-dot-segments-climb-back", "a path that leaves the rule and climbs back in matches no rule",
         "plain", get("http://linkedin.test/feed/%2e%2e/login/x", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-encoded-slash", "an encoded slash matches no rule", "plain",
         get("http://linkedin.test/login/..%2ffeed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-backslash", "a backslash (a slash to IIS) matches no rule", "plain",
         get("http://linkedin.test/login/..\\feed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-encoded-backslash", "an encoded backslash matches no rule", "plain",
         get("http://linkedin.test/login/..%5Cfeed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-semicolon", "a ';' path parameter (Tomcat's /..;/) matches no rule", "plain",
         get("http://linkedin.test/login/..;/feed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-double-encoded", "a double-encoded dot matches no rule", "plain",
         get("http://linkedin.test/login/%252e%252e/feed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-nul", "an encoded NUL matches no rule", "plain",
         get("http://linkedin.test/login/x%00/../../feed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-empty-segment", "an empty segment (merged by some servers) matches no rule", "plain",
         get("http://linkedin.test/login//../feed", method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("rule-path-fragment", "a fragment in the request target matches no rule", "plain",
         get("http://linkedin.test/i/api/graphql/abc/CreateTweet#/HomeTimeline", method="POST", body=b"x"),
         BLOCKED, "read-only"),
    Case("rule-path-in-tunnel", "dot segments are removed inside a tunnel too", "plain",
         inside("linkedin.test:443", LI, method="POST", path="/login/../feed", body=b"x"), BLOCKED, "read-only"),
    Case("h2-rule-path-dot-segments", "an HTTP/2 :path is resolved before a rule matches", "plain",
         h2req("linkedin.test:443", pseudo("POST", LI, "/login/%2e%2e/feed"), b"x"), BLOCKED, "read-only"),
    Case("h2-rule-path-not-absolute", "an HTTP/2 :path that does not start with / matches no rule", "plain",
         h2req("linkedin.test:443", pseudo("POST", LI, "login/x"), b"x"), BLOCKED, "read-only"),
    # Hole 7: the work per request is bounded, however many names it gives.
    Case("many-host-headers", "a request may name its host at most 8 times", "plain",
         get("http://example.test/", host=None, headers=MANY_HOSTS), BLOCKED, "denied"),
    Case("many-equal-host-headers", "repeating one Host header counts too", "plain",
         get("http://example.test/", host=None, headers=[("Host", FREE)] * 20_000), BLOCKED, "denied"),
    Case("nine-host-headers", "nine Host headers are one too many", "plain",
         get("http://example.test/", host=None, headers=[("Host", FREE)] * 9), BLOCKED, "denied"),
    Case("many-host-headers-in-tunnel", "the cap holds inside a tunnel", "plain",
         inside("example.test:443", None, sni=FREE, headers=MANY_HOSTS), BLOCKED, "denied"),
    Case("h2-many-host-headers", "the cap holds for HTTP/2 host headers", "plain",
         h2req("example.test:443", pseudo("GET", FREE) + [("host", FREE)] * 50), BLOCKED, "denied",
         refused_first=REPEATED_HOST_REFUSED),
    # -- audit records every auditors' tool can read (fix/audittools, issue 14.6) --------
    # test_audit_records.py runs `accessgate audit` on the proxy's log after this case.
    Case("non-utf8-method-audited", "a method with a byte that is not UTF-8 is a write, audited readably", "plain",
         raw(b"P\xffST http://linkedin.test/ HTTP/1.1\r\nProxy-Authorization: " + AUTH.encode()
             + b"\r\nHost: linkedin.test\r\nContent-Length: 0\r\n\r\n"), BLOCKED, "read-only"),
]  # fmt: skip


# -- tunnels mitmproxy would relay unread (issue 14: holes 2 and 5) ---------------------
# mitmproxy picks what a tunnel carries from the first bytes it has: a
# ClientHello whose first bytes come alone, an odd record version or a cut
# request line made it relay the tunnel as raw TCP, decided on the CONNECT
# target alone.  Every tunnel here goes to example.test (unlisted, allowed);
# what it carries names a denied, a read-only or a used-up (video) site.
# The proxies route an unread relay to the origin too, which speaks TLS.

from support.wire import split_tunnel  # noqa: E402

VIDEO = "video.test"  # one minute a day, already spent (conftest.py)
ODD_VERSION = b"\x03\x04"  # a record version no TLS stack writes, which servers ignore


def split_hello(host: str, *, sni: str | None = None, split: int = 1, method: str = "GET", body: bytes = b"",
                record_version: bytes | None = None, split_data: int | None = None):
    """CONNECT example.test:443, a ClientHello cut after `split` bytes, then one request for `host`."""
    data = request(method, "/", [("Host", host)], body)
    return lambda p: split_tunnel(p, "example.test:443", data, tls=True, sni=sni or host, split=split,
                                  record_version=record_version, split_data=split_data)


def split_http(host: str, *, split: int = 1, method: str = "GET", body: bytes = b"", lead: bytes = b""):
    """CONNECT example.test:80, then one plain request for `host`, cut after `split` bytes."""
    data = lead + request(method, "/", [("Host", host)], body)
    return lambda p: split_tunnel(p, "example.test:80", data, tls=False, split=split)


CASES += [
    Case("split-hello-denied", "a ClientHello whose first byte comes alone is intercepted all the same", "plain",
         split_hello(FB), BLOCKED, "denied"),
    Case("split-hello-two-bytes-denied", "so is one whose first two bytes come alone", "plain",
         split_hello(FB, split=2), BLOCKED, "denied"),
    Case("split-hello-read-only", "a write inside a split-hello tunnel is a write", "plain",
         split_hello(LI, method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("split-hello-quota", "a request inside a split-hello tunnel spends quota", "plain",
         split_hello(VIDEO), BLOCKED, "quota-exhausted"),
    Case("split-hello-harmless", "a split ClientHello to an allowed site still works", "plain",
         split_hello(FREE), OK, reaches_origin=True),
    Case("split-request-in-tls-denied", "a request cut after its first byte inside TLS is still read", "plain",
         split_hello(FB, sni=FREE, split=0, split_data=1), BLOCKED, "denied"),
    Case("split-http-denied", "a plain request whose first byte comes alone is read all the same", "plain",
         split_http(FB), BLOCKED, "denied"),
    Case("split-http-request-line-denied", "a request line that comes without its line end is waited for",
         "plain", split_http(FB, split=len("GET / HTTP/1.1")), BLOCKED, "denied"),
    Case("split-http-read-only", "a write cut after its first byte is a write", "plain",
         split_http(LI, method="POST", body=b"x"), BLOCKED, "read-only"),
    Case("split-http-quota", "a request cut after its first byte spends quota", "plain",
         split_http(VIDEO), BLOCKED, "quota-exhausted"),
    Case("split-http-harmless", "a split request to an allowed site still works", "plain",
         split_http(FREE), OK, reaches_origin=True),
    Case("tls-record-version-0304-denied", "a ClientHello the proxy cannot read is refused", "plain",
         split_hello(FB, split=0, record_version=ODD_VERSION), CLOSED, tunnel="block"),
    Case("tls-record-version-0304-read-only", "an unreadable hello to a read-only site is refused", "plain",
         split_hello(LI, split=0, record_version=ODD_VERSION, method="POST", body=b"x"), CLOSED, tunnel="block"),
    Case("tls-record-version-0304-quota", "an unreadable hello to a used-up site is refused", "plain",
         split_hello(VIDEO, split=0, record_version=ODD_VERSION), CLOSED, tunnel="block"),
    Case("tls-record-version-0304-harmless", "an unreadable hello is refused whatever it names", "plain",
         split_hello(FREE, split=0, record_version=ODD_VERSION), CLOSED, tunnel="block"),
    Case("crlf-before-request-in-tunnel", "bytes that are neither TLS nor HTTP are refused in a tunnel", "plain",
         split_http(FB, split=0, lead=b"\r\n"), CLOSED, tunnel="block"),
    Case("binary-in-tunnel-to-unlisted", "a tunnel that is neither TLS nor HTTP is refused, even to "
         "an allowed site", "plain", inside("example.test:443", None, tls=False, method="\x00\x01", path="x"),
         CLOSED, tunnel="block"),
    Case("passthrough-split-hello-denied-sni", "an uninspected tunnel waits for the whole ClientHello and "
         "decides its SNI", "passthrough",
         lambda p: split_tunnel(p, "bank.test:443", request("GET", "/", [("Host", FB)]), tls=True, sni=FB),
         CLOSED, tunnel="block"),
    Case("passthrough-odd-version-denied-sni", "an uninspected tunnel decides the SNI of an odd-version hello",
         "passthrough",
         lambda p: split_tunnel(p, "bank.test:443", request("GET", "/", [("Host", FB)]), tls=True, sni=FB,
                                split=0, record_version=ODD_VERSION), CLOSED, tunnel="block"),
    # -- a forged client address (feat/mitm12, issue 17.4): the "balanced" proxy trusts a
    # balancer at 127.0.0.9 alone, so a client's own PROXY header is not read as one ----------
    Case("proxy-header-v1-from-a-client", "a PROXY header from a peer not in accessgate_trusted_proxies is not "
         "believed", "balanced", raw(PROXY_V1 + ALLOWED_GET), BAD_REQUEST),
    Case("proxy-header-v2-from-a-client", "a binary PROXY header from a peer not in accessgate_trusted_proxies "
         "is not believed", "balanced", raw(PROXY_V2 + ALLOWED_GET), CLOSED),
]  # fmt: skip


# -- decrypt only what the policy needs to see (issue 18) ------------------------------
# The "inspect" proxies run accessgate_inspect=needed under policy-inspect.yaml,
# where the origin's address belongs to no site: a TLS tunnel to an unlisted or
# full-access name passes through to the origin unread, and the client sees the
# origin's own certificate.  Every other tunnel must still be decrypted and each
# request decided; never-inspected names are never decrypted, and refused when
# their names block them.  The origin's certificate for edge.test also names
# facebook.test (tests/support/origin.py), like a CDN's shared certificate.

MAIL, EDGE, BANK = "mail.test", "edge.test", "online.bank.test"
ECH_PUBLIC = "ech-public.test"  # the public name of a server that decrypts real ECH: unlisted, not asked for
PAYROLL, INTRANET = "payroll.bank.test", "intranet.test"


def unread(connect: str, host: str | None, *, sni: str | None = "", method: str = "GET", body: bytes = b""):
    """`inside`, with a client that takes any certificate and keeps it (to tell who answered)."""
    hdrs = [("Host", host)] if host is not None else []
    return lambda p: tunnel(p, connect, request(method, "/", hdrs, body), sni=sni, verify=False)


def garbled_hello() -> bytes:
    """A whole handshake record whose ClientHello nobody can parse: its last extension claims to run past its end."""
    hello = bytearray(client_hello([FREE]))
    assert hello[-6:] == b"\x00\x0b\x00\x02\x01\x00"  # ec_point_formats, 2 bytes long
    hello[-4:-2] = b"\x00\xff"
    return bytes(hello)


CASES += [
    Case("inspect-unlisted-passes-through", "an unlisted HTTPS site is passed through: the client sees its own "
         "certificate", "inspect", unread("example.test:443", FREE), OK, reaches_origin=True, tunnel="allow",
         certificate="origin", inspection="passed-through"),
    Case("inspect-full-access-passes-through", "a site with full access is passed through", "inspect",
         unread("mail.test:443", MAIL, method="POST", body=b"x"), OK, reaches_origin=True, tunnel="allow",
         certificate="origin", inspection="passed-through"),
    Case("inspect-read-only-is-decrypted", "a read-only site is decrypted and its writes blocked", "inspect",
         unread("linkedin.test:443", LI, method="POST", body=b"x"), BLOCKED, "read-only", certificate="proxy",
         inspection="decrypted"),
    Case("inspect-read-only-reads-pass", "a read on a decrypted read-only site passes", "inspect",
         unread("linkedin.test:443", LI), OK, reaches_origin=True, certificate="proxy", inspection="decrypted"),
    Case("inspect-denied-is-decrypted-for-its-block-page", "a denied site is decrypted to show its block page",
         "inspect", unread("facebook.test:443", FB), BLOCKED, "denied", certificate="proxy",
         inspection="decrypted"),
    Case("inspect-spent-quota-is-decrypted", "a site whose minutes are spent is decrypted to say so", "inspect",
         unread("video.test:443", VIDEO), BLOCKED, "quota-exhausted", certificate="proxy", inspection="decrypted"),
    Case("inspect-denied-sni-behind-unlisted-connect", "every name decides: a denied SNI is decrypted and "
         "blocked", "inspect", unread("example.test:443", FREE, sni=FB), BLOCKED, "denied", certificate="proxy",
         inspection="decrypted"),
    Case("inspect-fronting-shared-certificate", "a server whose certificate also names a governed site is "
         "decrypted: fronting is blocked", "inspect", unread("edge.test:443", FB), BLOCKED, "denied",
         certificate="proxy", inspection="decrypted"),
    Case("inspect-h2-reuse-shared-certificate", "HTTP/2 reuse of a shared-certificate connection for a "
         "governed name is decided", "inspect", h2req("edge.test:443", pseudo("GET", FB)), BLOCKED, "denied",
         inspection="decrypted"),
    Case("inspect-fronting-unrelated-certificate", "known limit: a server that serves a governed Host under "
         "another name's certificate is reached", "inspect", unread("example.test:443", FB), OK,
         reaches_origin=True, tunnel="allow", certificate="origin", inspection="passed-through"),
    Case("inspect-no-sni-is-decrypted", "without SNI the Host inside decides: decrypted", "inspect",
         unread("example.test:443", FB, sni=None), BLOCKED, "denied", certificate="proxy",
         inspection="decrypted"),
    Case("inspect-no-sni-harmless", "without SNI a harmless request is decrypted and passes", "inspect",
         unread("example.test:443", FREE, sni=None), OK, reaches_origin=True, certificate="proxy",
         inspection="decrypted"),
    Case("inspect-ech-is-decrypted", "an Encrypted Client Hello under a name not asked for is decrypted, "
         "decided on its outer name", "inspect", hello("example.test:443", [ECH_PUBLIC], ech=True), CLOSED,
         tls_answer=True, inspection="decrypted"),
    Case("inspect-ech-denied-outer-name", "an Encrypted Client Hello with a denied outer name is not passed "
         "through", "inspect", hello("example.test:443", [FB], ech=True), CLOSED, tls_answer=True,
         inspection="decrypted"),
    Case("inspect-ech-refused", "with accessgate_refuse_ech an Encrypted Client Hello under a name not asked "
         "for is refused", "inspect-refuse-ech", hello("example.test:443", [ECH_PUBLIC], ech=True), CLOSED,
         tunnel="block", inspection="refused"),
    Case("inspect-unparseable-hello", "a ClientHello nobody can parse is never passed through", "inspect",
         lambda p: hello_then_read(p, "example.test:443", garbled_hello()), CLOSED, inspection="decrypted"),
    Case("inspect-split-hello-passes-through", "a ClientHello cut into pieces is decided whole, then passed "
         "through", "inspect", lambda p: split_tunnel(p, "example.test:443", request("GET", "/", [("Host", FREE)]),
                                                      tls=True, sni=FREE),
         OK, reaches_origin=True, tunnel="allow", certificate="origin", inspection="passed-through"),
    Case("inspect-split-hello-denied-sni", "a ClientHello cut into pieces with a denied SNI is decrypted",
         "inspect", lambda p: split_tunnel(p, "example.test:443", request("GET", "/", [("Host", FREE)]),
                                           tls=True, sni=FB),
         BLOCKED, "denied", certificate="proxy", inspection="decrypted"),
    Case("inspect-never-inspect-passes-through", "a never-inspected name is passed through", "inspect",
         unread("online.bank.test:443", BANK, method="POST", body=b"x"), OK, reaches_origin=True,
         tunnel="allow", certificate="origin", inspection="passed-through"),
    Case("inspect-never-inspect-denied-is-refused", "a never-inspected denied site is refused, not decrypted",
         "inspect", unread("payroll.bank.test:443", PAYROLL), CLOSED, tunnel="block", inspection="refused"),
    Case("inspect-never-inspect-read-only-is-refused", "a never-inspected site that is read-only for the user "
         "is refused, not decrypted", "inspect", unread("intranet.test:443", INTRANET), CLOSED, tunnel="block",
         inspection="refused"),
    Case("inspect-never-inspect-cannot-carry-a-denied-sni", "a denied SNI behind a never-inspected CONNECT is "
         "refused", "inspect", unread("online.bank.test:443", FB, sni=FB), CLOSED, tunnel="block",
         inspection="refused"),
]  # fmt: skip

# Browsers put a decoy ECH extension (GREASE) under the name they asked the
# proxy for into every ClientHello: that is an ordinary ClientHello.
CASES += [
    Case("inspect-ech-decoy-passes-through", "a decoy Encrypted Client Hello under the name asked for passes "
         "through like any hello", "inspect", hello("example.test:443", [FREE], ech=True), CLOSED, tunnel="allow",
         inspection="passed-through"),
    Case("inspect-ech-decoy-denied-is-decrypted", "a decoy Encrypted Client Hello under a denied name is "
         "decrypted for its block page", "inspect", hello("facebook.test:443", [FB], ech=True), CLOSED,
         tls_answer=True, inspection="decrypted"),
    Case("inspect-ech-decoy-not-refused", "accessgate_refuse_ech does not refuse a browser's decoy Encrypted "
         "Client Hello", "inspect-refuse-ech", hello("example.test:443", [FREE], ech=True), CLOSED,
         tunnel="allow", inspection="passed-through"),
]  # fmt: skip


# -- issue 21: writes that say they read (operation rules) ---------------------------
# meta.test is read-only with the catalog's kind of rule: POST /api/graphql/
# passes when X-FB-Friendly-Name and the form field fb_api_req_friendly_name
# name the same query; graph.test reads a GraphQL document in a JSON body.
import gzip  # noqa: E402
import json  # noqa: E402

META, GRAPH = "meta.test", "graph.test"
READ, WRITE = "CometNewsFeedPaginationQuery", "ComposerStoryCreateMutation"
FORM_TYPE = ("Content-Type", "application/x-www-form-urlencoded")
H2_FORM_TYPE = ("content-type", "application/x-www-form-urlencoded")  # HTTP/2 names are lower case


def said(header: str | None, body: bytes, *, more=(), path: str = "/api/graphql/", tls: bool = True,
         content_type=FORM_TYPE):
    """A POST to meta.test naming `header` in X-FB-Friendly-Name, `body` as its form, inside TLS or not."""
    headers = [h for h in (content_type, ("X-FB-Friendly-Name", header) if header else None) if h] + list(more)
    if tls:
        return inside(f"{META}:443", META, method="POST", path=path, headers=headers, body=body)
    return get(f"http://{META}{path}", method="POST", headers=headers, body=body)


def field(*names: str, extra: bytes = b"") -> bytes:
    return b"&".join([b"av=1", *(f"fb_api_req_friendly_name={n}".encode() for n in names), b"doc_id=1"]) + extra


def graphql(document: str, operation: str | None = None, *, raw_body: bytes | None = None):
    body = raw_body if raw_body is not None else json.dumps(
        {"query": document, **({"operationName": operation} if operation else {})}).encode()
    return inside(f"{GRAPH}:443", GRAPH, method="POST", path="/graphql",
                  headers=[("Content-Type", "application/json")], body=body)


CASES += [
    Case("operation-read-passes", "a query named alike in header and form field passes read-only", "plain",
         said(READ, field(READ)), OK, reaches_origin=True),
    Case("operation-read-passes-plain-http", "so it does in plain HTTP", "plain",
         said(READ, field(READ), tls=False), OK, reaches_origin=True),
    Case("operation-read-passes-h2", "and over HTTP/2 with a Content-Length", "plain",
         h2req(f"{META}:443", pseudo("POST", META, "/api/graphql/") + [H2_FORM_TYPE, ("x-fb-friendly-name", READ),
               ("content-length", str(len(field(READ))))], field(READ)), OK, reaches_origin=True),
    Case("operation-read-with-expect-100-continue", "a read that waits for 100 Continue is read, then decided",
         "plain", said(READ, field(READ), more=[("Expect", "100-continue")]), OK, reaches_origin=True),
    Case("operation-mutation", "a mutation's name is a write", "plain",
         said(WRITE, field(WRITE)), BLOCKED, "read-only"),
    Case("operation-mislabelled", "a name that is not a query's is a write", "plain",
         said("CometQueryish", field("CometQueryish")), BLOCKED, "read-only"),
    Case("operation-header-missing", "a name in the form alone is a write", "plain",
         said(None, field(READ)), BLOCKED, "read-only"),
    Case("operation-field-missing", "a name in the header alone is a write", "plain",
         said(READ, field()), BLOCKED, "read-only"),
    Case("operation-header-and-field-disagree", "a header and form field that disagree are a write", "plain",
         said(READ, field(WRITE)), BLOCKED, "read-only"),
    Case("operation-two-reads-disagree", "they must agree even when both name queries", "plain",
         said(READ, field("CometPhotoRootContentQuery")), BLOCKED, "read-only"),
    Case("operation-two-headers", "a name given in two headers is a write", "plain",
         said(READ, field(READ), more=[("X-FB-Friendly-Name", WRITE)]), BLOCKED, "read-only"),
    Case("operation-field-twice", "a form field given twice is a write", "plain",
         said(READ, field(READ, WRITE)), BLOCKED, "read-only"),
    Case("operation-field-php-spelling", "a second spelling of the field (fb.api..., PHP merges it) is a write",
         "plain", said(READ, field(READ, extra=f"&fb.api.req.friendly.name={WRITE}".encode())), BLOCKED, "read-only"),
    Case("operation-field-as-array", "the field as an array (name[]) beside it is a write", "plain",
         said(READ, field(READ, extra=f"&fb_api_req_friendly_name[]={WRITE}".encode())), BLOCKED, "read-only"),
    Case("operation-field-in-query-string", "the field in the URL's query string as well is a write", "plain",
         said(READ, field(READ), path=f"/api/graphql/?fb_api_req_friendly_name={WRITE}"), BLOCKED, "read-only"),
    Case("operation-name-not-a-graphql-name", "a name that is not a GraphQL name is a write", "plain",
         said(f"{WRITE}, {READ}", field(f"{WRITE}%2C+{READ}")), BLOCKED, "read-only"),
    Case("operation-body-over-limit", "a body over 64 KiB is a write", "plain",
         said(READ, field(READ, extra=b"&pad=" + b"x" * 66_000)), BLOCKED, "read-only"),
    Case("operation-body-not-utf8", "a body that does not decode is a write", "plain",
         said(READ, field(READ, extra=b"&x=%FF")), BLOCKED, "read-only"),
    Case("operation-body-compressed", "a compressed body is a write", "plain",
         said(READ, gzip.compress(field(READ)), more=[("Content-Encoding", "gzip")]), BLOCKED, "read-only"),
    Case("operation-body-multipart", "a multipart body is a write", "plain",
         said(READ, b'--b\r\nContent-Disposition: form-data; name="fb_api_req_friendly_name"\r\n\r\n'
              + READ.encode() + b"\r\n--b--\r\n", content_type=("Content-Type", "multipart/form-data; boundary=b")),
         BLOCKED, "read-only"),
    Case("operation-body-without-content-type", "a body of no stated type is a write", "plain",
         said(READ, field(READ), content_type=None), BLOCKED, "read-only"),
    Case("operation-body-chunked", "a chunked body is a write, killed before it is read", "plain",
         said(READ, f"{len(field(READ)):x}\r\n".encode() + field(READ) + b"\r\n0\r\n\r\n",
              more=[("Transfer-Encoding", "chunked")]), CLOSED),
    Case("operation-h2-body-without-length", "an HTTP/2 body of no stated length is a write", "plain",
         h2req(f"{META}:443", pseudo("POST", META, "/api/graphql/") + [H2_FORM_TYPE, ("x-fb-friendly-name", READ)],
               field(READ)), BLOCKED, "read-only"),
    Case("operation-body-streamed", "a body mitmproxy streams is a write, killed before it leaves", "streaming",
         said(READ, field(READ, extra=b"&pad=" + BIG)), CLOSED),
    Case("operation-rule-path-dot-segments", "dot segments are resolved before an operation rule matches", "plain",
         said(READ, field(READ), path="/static/../api/graphql/"), BLOCKED, "read-only"),
    Case("operation-method-override", "an override to another write needs a rule of its own", "plain",
         said(READ, field(READ), more=[("X-HTTP-Method-Override", "DELETE")]), BLOCKED, "read-only"),
    Case("graphql-query-passes", "a GraphQL document with queries only passes read-only", "plain",
         graphql("query Feed { viewer { id } }", "Feed"), OK, reaches_origin=True),
    Case("graphql-mutation-named-query", "a mutation is a write whatever its name says", "plain",
         graphql("mutation FeedQuery { post(text: \"x\") { id } }", "FeedQuery"), BLOCKED, "read-only"),
    Case("graphql-mutation-beside-query", "a document holding any mutation is a write", "plain",
         graphql("query Feed { a } mutation M { b }", "Feed"), BLOCKED, "read-only"),
    Case("graphql-subscription", "a subscription is a write", "plain",
         graphql("subscription Feed { a }", "Feed"), BLOCKED, "read-only"),
    Case("graphql-name-not-in-document", "an operationName the document lacks is a write", "plain",
         graphql("query Other { a }", "Feed"), BLOCKED, "read-only"),
    Case("graphql-unparseable", "a document that does not parse is a write", "plain",
         graphql("query Feed { a", "Feed"), BLOCKED, "read-only"),
    Case("graphql-json-duplicate-key", "a JSON key given twice is a write", "plain",
         graphql("", raw_body=b'{"query": "query Feed { a }", "operationName": "Feed", "query": "mutation Feed { b }"}'),
         BLOCKED, "read-only"),
    Case("graphql-batch", "a batch of documents is a write", "plain",
         graphql("", raw_body=b'[{"query": "query Feed { a }", "operationName": "Feed"}]'), BLOCKED, "read-only"),
]  # fmt: skip


def said_slowly(header: str, body: bytes, pause: float):
    """A plain-HTTP POST to meta.test whose body stops after 10 bytes for `pause` seconds, then ends."""
    import socket
    import time

    from support.wire import _read_response

    data = request("POST", f"http://{META}/api/graphql/", [("Host", META), FORM_TYPE, ("X-FB-Friendly-Name", header)],
                   body, "HTTP/1.1", auth=AUTH)
    head, _, _ = data.partition(b"\r\n\r\n")

    def send(proxy) -> Reply:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=pause + 10) as sock:
            sock.sendall(head + b"\r\n\r\n" + body[:10])
            time.sleep(pause)
            sock.sendall(body[10:])
            return Reply(_read_response(sock, 10.0))

    return send


from accessgate.proxy.operations import BODY_WAIT  # noqa: E402

CASES += [
    Case("operation-body-too-slow", "a read whose body comes after the 10 s deadline is a write", "plain",
         said_slowly(READ, field(READ), BODY_WAIT + 1), BLOCKED, "read-only"),
]  # fmt: skip
