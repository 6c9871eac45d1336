"""Clients that send exactly the bytes an attacker would, where curl cannot.

Every function opens its own socket to the proxy on 127.0.0.1, sends, reads
until the peer closes or the answer is complete, and returns what came
back.  Nothing here interprets a decision: tests compare what the client
got with what the origin saw.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from support.clients import PASSWORD

USER = "zoe"  # facebook=deny, linkedin=read-only under tests/adversarial/policy.yaml


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Reply:
    """The first HTTP response on a connection (status 0: none, the peer just closed)."""

    raw: bytes
    connect_status: int | None = None  # the proxy's answer to CONNECT, when there was one
    certificate: bytes | None = None  # DER of the certificate a TLS client saw, when it did not verify it

    @property
    def issuer(self) -> str | None:
        """The common name of the issuer of `certificate` ('mitmproxy' when the proxy decrypted)."""
        if self.certificate is None:
            return None
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_der_x509_certificate(self.certificate)
        return ",".join(str(a.value) for a in cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME))

    @property
    def status(self) -> int:
        if not self.raw.startswith(b"HTTP/"):
            return 0
        try:
            return int(self.raw.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return 0

    def header(self, name: str) -> str | None:
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def _read_response(conn, timeout: float, buf: bytes = b"", head_only: bool = False) -> bytes:
    """Read one response: headers, then Content-Length bytes, or until close."""
    conn.settimeout(timeout)
    try:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return buf
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if head_only:
            return buf
        length = None
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value.strip())
        if head.split(b" ", 2)[1:2] in ([b"304"], [b"204"]) or length == 0:
            return buf
        while length is None or len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    except (OSError, ssl.SSLError):
        return buf


def plain(proxy, data: bytes, timeout: float = 10.0) -> Reply:
    """Send `data` as it is to the proxy's port (a proxy request in absolute form, usually)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        early = _send_like_a_client(sock, data)
        return Reply(_read_response(sock, timeout, early))


def _send_like_a_client(conn, data: bytes) -> bytes:
    """Headers first; the body only if the proxy has not answered yet.  Returns what it answered.

    A proxy that blocks answers at the headers and may close the connection
    without reading the body; a body sent into that close turns it into a
    reset, which would swallow the answer.  Browsers send the same way.
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    conn.sendall(head + sep)
    if not body:
        return b""
    conn.settimeout(0.2)
    try:
        early = conn.recv(65536)  # TLS: a real read, not just a session ticket
    except (TimeoutError, socket.timeout):
        early = None
    except (OSError, ssl.SSLError):
        return b""
    if early is None:
        conn.sendall(body)
        return b""
    if early.startswith(b"HTTP/1.1 100"):  # Expect: 100-continue: the body is wanted
        conn.sendall(body)
        return early.partition(b"\r\n\r\n")[2]
    return early


def pipelined(proxy, first: bytes, second: bytes, *, connect: str | None = None, timeout: float = 10.0) -> Reply:
    """Two requests in one write on one connection (inside a TLS tunnel to `connect`, if given).

    Returns the second response: a decision must be made per request, not
    per connection.
    """
    if connect is None:
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
        status = None
    else:
        sock, status, answer = _connect(proxy, connect, basic(), timeout)
        if status != 200:
            sock.close()
            return Reply(answer, connect_status=status)
        conn = _tls(sock, proxy, connect.rsplit(":", 1)[0], None)
    with conn:
        conn.sendall(first + second)
        one = _read_response(conn, timeout)
        rest = one.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in one else b""
        length = Reply(one).header("content-length")
        extra = rest[int(length):] if length else b""
        return Reply(_read_response(conn, timeout, extra), connect_status=status)


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str | bytes]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
    auth: str | None = None,
) -> bytes:
    """An HTTP/1 request as bytes; header values may be bytes to carry non-UTF-8."""
    lines = [f"{method} {target} {version}".encode("utf-8")]
    if auth is not None:
        lines.append(b"Proxy-Authorization: " + auth.encode())
    for name, value in headers:
        value = value if isinstance(value, bytes) else value.encode("utf-8")
        lines.append(name.encode() + b": " + value)
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _connect(proxy, target: str, auth: str | None, timeout: float) -> tuple[socket.socket, int, bytes]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth is not None:
        head += f"Proxy-Authorization: {auth}\r\n"
    sock.sendall((head + "\r\n").encode())
    answer = _read_response(sock, timeout, head_only=True)
    return sock, Reply(answer).status, answer


def _tls(sock, proxy, sni: str | None, alpn: list[str] | None, verify: bool = True):
    context = ssl.create_default_context(cafile=str(proxy.ca))
    context.check_hostname = False  # the point is to send names that do not match
    if not verify:  # whoever answers: the proxy (decrypted) or the site itself (passed through)
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(sock, server_hostname=sni)


def tunnel(
    proxy,
    target: str,
    data: bytes,
    *,
    sni: str | None = "",
    tls: bool = True,
    auth: str | None = None,
    timeout: float = 10.0,
    verify: bool = True,
) -> Reply:
    """CONNECT `target`, then TLS with `sni` ('' = the CONNECT host, None = no SNI), then `data`.

    `verify=False` takes any certificate and returns it in the reply: the
    proxy's (it decrypted the tunnel) or the site's own (it passed it through).
    """
    auth = basic() if auth is None else auth
    sock, status, answer = _connect(proxy, target, auth, timeout)
    with sock:
        if status != 200:
            return Reply(answer, connect_status=status)
        conn = sock
        certificate = None
        if tls:
            name = target.rsplit(":", 1)[0].strip("[]") if sni == "" else sni
            try:
                conn = _tls(sock, proxy, name, None, verify)
            except (ssl.SSLError, OSError):
                return Reply(b"", connect_status=status)
            certificate = None if verify else conn.getpeercert(binary_form=True)
        try:
            early = _send_like_a_client(conn, data)
        except OSError:
            return Reply(b"", connect_status=status, certificate=certificate)
        return Reply(_read_response(conn, timeout, early), connect_status=status, certificate=certificate)


PAUSE = 0.3  # between the pieces of a split first write: long enough to arrive as a segment of its own


class BioTLS:
    """A TLS client over a plain socket that sends its ClientHello as an attacker chooses.

    `split`: send only the first `split` bytes of the first record, pause,
    then the rest (a hello whose first bytes arrive in their own segment).
    `record_version`: the two bytes written over the first record's version
    (e.g. b"\\x03\\x04"), which servers ignore.  The server's certificate is
    not checked: the point is what the proxy lets through, not whom we reach.
    Offers sendall/recv/settimeout like a socket, for the helpers here.
    """

    def __init__(self, sock: socket.socket, sni: str | None, *, split: int | None = None,
                 record_version: bytes | None = None, alpn: list[str] | None = None) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(alpn)
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=sni)
        first = True
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = self._out.read()
                if first and data:
                    first = False
                    if record_version is not None:
                        data = data[:1] + record_version + data[3:]
                    if split:
                        sock.sendall(data[:split])
                        time.sleep(PAUSE)
                        data = data[split:]
                if data:
                    sock.sendall(data)
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the proxy closed the connection during the handshake")
                self._in.write(chunk)
        self._flush()
        self.certificate = self._tls.getpeercert(binary_form=True)

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def sendall(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self._tls.read(size)
            except ssl.SSLWantReadError:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b""
                self._in.write(chunk)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""


def split_tunnel(
    proxy,
    target: str,
    data: bytes,
    *,
    tls: bool,
    sni: str | None = None,
    split: int | None = 1,
    record_version: bytes | None = None,
    split_data: int | None = None,
    timeout: float = 10.0,
) -> Reply:
    """CONNECT `target`, then send `data` with its first bytes cut off into a segment of their own.

    With `tls`, it is the ClientHello that is cut after `split` bytes (or
    its record version rewritten), and `data` follows inside TLS, cut after
    `split_data` bytes if given; without `tls`, `data` itself is cut after
    `split` bytes.  mitmproxy chooses what a tunnel carries from the first
    bytes it has; what it cannot classify from them it may relay unread.
    """
    sock, status, answer = _connect(proxy, target, basic(), timeout)
    with sock:
        if status != 200:
            return Reply(answer, connect_status=status)
        conn = sock
        certificate = None
        try:
            if tls:
                conn = BioTLS(sock, sni, split=split, record_version=record_version)
                certificate = conn.certificate
                if split_data:
                    conn.sendall(data[:split_data])
                    time.sleep(PAUSE)
                    data = data[split_data:]
            elif split:
                sock.sendall(data[:split])
                time.sleep(PAUSE)
                data = data[split:]
            early = _send_like_a_client(conn, data)
        except (OSError, ssl.SSLError):
            return Reply(b"", connect_status=status, certificate=certificate)
        return Reply(_read_response(conn, timeout, early), connect_status=status, certificate=certificate)


def hello_then_read(proxy, target: str, hello: bytes, timeout: float = 5.0) -> Reply:
    """CONNECT, send a hand-made ClientHello, return the raw bytes the proxy answered with.

    A TLS answer (0x16 handshake or 0x15 alert) means the proxy intercepted
    the connection itself; an empty reply means it relayed or closed it.
    """
    sock, status, answer = _connect(proxy, target, basic(), timeout)
    with sock:
        if status != 200:
            return Reply(answer, connect_status=status)
        sock.sendall(hello)
        sock.settimeout(timeout)
        data = b""
        try:
            data = sock.recv(65536)
        except OSError:
            pass
        return Reply(data, connect_status=status)


def client_hello(snis: list[str] = (), ech: bool = False) -> bytes:
    """A TLS 1.2/1.3 ClientHello with the given server names and, optionally, an ECH extension.

    `snis` with two names puts both in one server_name extension, which RFC
    6066 forbids; ECH (0xfe0d) carries random bytes where the encrypted
    inner hello would be: the proxy cannot read it either way.
    """
    ext = b""
    if snis:
        names = b"".join(b"\x00" + struct.pack("!H", len(n)) + n.encode() for n in snis)
        body = struct.pack("!H", len(names)) + names
        ext += struct.pack("!HH", 0x0000, len(body)) + body
    groups = struct.pack("!HHH", 4, 0x001D, 0x0017)
    ext += struct.pack("!HH", 0x000A, len(groups)) + groups
    sigs = struct.pack("!HHHH", 6, 0x0403, 0x0804, 0x0401)
    ext += struct.pack("!HH", 0x000D, len(sigs)) + sigs
    ext += struct.pack("!HHB", 0x000B, 2, 1) + b"\x00"  # ec_point_formats: uncompressed
    if ech:
        # outer ClientHello ECH: type 0 (outer), HPKE suite, config id, enc, payload
        payload = os.urandom(32)
        enc = os.urandom(32)
        echbody = (
            b"\x00" + struct.pack("!HH", 0x0001, 0x0001) + b"\x2a"
            + struct.pack("!H", len(enc)) + enc + struct.pack("!H", len(payload)) + payload
        )  # fmt: skip
        ext += struct.pack("!HH", 0xFE0D, len(echbody)) + echbody
    ciphers = struct.pack("!HHHHH", 0xC02F, 0xC030, 0xC02B, 0xC02C, 0x009C)
    hello = (
        b"\x03\x03" + os.urandom(32) + b"\x00"
        + struct.pack("!H", len(ciphers)) + ciphers + b"\x01\x00"
        + struct.pack("!H", len(ext)) + ext
    )  # fmt: skip
    handshake = b"\x01" + struct.pack("!I", len(hello))[1:] + hello
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


@dataclass(frozen=True)
class H2Reply:
    connect_status: int
    status: int  # 0: no response (stream reset or connection closed)
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def h2(
    proxy,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    sni: str | None = "",
    timeout: float = 10.0,
) -> H2Reply:
    """One HTTP/2 request inside a CONNECT tunnel, headers sent exactly as given.

    h2's own checks are off, so a test can send what a hostile client would:
    two `host` headers, an `:authority` that disagrees with `host`.
    """
    import h2.config
    import h2.connection
    import h2.events

    sock, status, _ = _connect(proxy, target, basic(), timeout)
    with sock:
        if status != 200:
            return H2Reply(status, 0, {})
        name = target.rsplit(":", 1)[0] if sni == "" else sni
        conn = _tls(sock, proxy, name, ["h2"])
        config = h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
            header_encoding="utf-8",
        )  # fmt: skip
        h = h2.connection.H2Connection(config)
        h.initiate_connection()
        h.send_headers(1, headers, end_stream=not body)
        if body:
            h.send_data(1, body, end_stream=True)
        conn.sendall(h.data_to_send())
        conn.settimeout(timeout)
        got: dict[str, str] = {}
        code = 0
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                for event in h.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                        got = {k.lower(): v for k, v in event.headers}
                        code = int(got.get(":status", 0))
                    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == 1:
                        return H2Reply(status, code, got)
                    if isinstance(event, h2.events.ConnectionTerminated):
                        return H2Reply(status, code, got)
                out = h.data_to_send()
                if out:
                    conn.sendall(out)
        except (OSError, ssl.SSLError):
            pass
        return H2Reply(status, code, got)
