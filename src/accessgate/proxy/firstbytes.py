"""What the first bytes of a tunnel are, read as a server would read them.

mitmproxy chooses how to handle a tunnel from the bytes it has when the
client first writes: a TLS record start, an HTTP request line, or else a
raw relay that nothing reads.  A client that sends a ClientHello's first
byte alone, writes an odd record version, or cuts its request line made
it relay tunnels unread.  accessgate asks these questions instead:

- could the bytes so far still become a TLS record or a request line that
  mitmproxy reads?  Then it waits for more (`tls_prefix`, `could_become_http`);
- if they are a ClientHello, which names does it carry, whatever its record
  version (`read_hello`)?  Servers ignore the record version, so the names
  must not depend on it;
- if they are an HTTP request head, which hosts does it name (`http_hosts`)?
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple

# Bytes waited for before a tunnel is decided: far above a ClientHello
# (a few kB, even with post-quantum key shares) and an ordinary request line.
WAIT_LIMIT = 64 * 1024
# Pieces waited for: each one makes mitmproxy join and read all the bytes so
# far again, so a client trickling single bytes must not get 64 Ki of them.
WAIT_PIECES = 64

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_ENCRYPTED_CLIENT_HELLO = 0xFE0D  # draft-ietf-tls-esni: the outer hello's extension


class Hello(Enum):
    NONE = "none"  # not a TLS handshake record
    PARTIAL = "partial"  # a handshake record start; the ClientHello is not complete yet
    COMPLETE = "complete"  # a whole ClientHello, parsed
    INVALID = "invalid"  # starts like a handshake record, but is no ClientHello anyone could read


class HelloRead(NamedTuple):
    state: Hello
    names: tuple[str, ...] = ()  # every name in every server_name extension
    ech: bool = False  # it carries an encrypted_client_hello extension: its real server name is hidden


def tls_prefix(data: bytes) -> bool:
    """The bytes could be the start of a TLS handshake record (0x16 0x03 ...) but say too little yet."""
    return 0 < len(data) < 3 and data[0] == _HANDSHAKE and (len(data) < 2 or data[1] == 0x03)


def read_hello(data: bytes) -> HelloRead:
    """Read a ClientHello from the handshake records at the start of `data`, any record version.

    Records are joined until the handshake message is whole, as a server
    does; the minor record version is ignored (servers ignore it), the major
    must be 3.
    """
    if tls_prefix(data):
        return HelloRead(Hello.PARTIAL)
    if len(data) < 3 or data[0] != _HANDSHAKE or data[1] != 0x03:
        return HelloRead(Hello.NONE)
    message = b""
    offset = 0
    while True:
        header = data[offset : offset + 5]
        if len(header) < 5:
            return HelloRead(Hello.PARTIAL)
        if header[0] != _HANDSHAKE or header[1] != 0x03:
            return HelloRead(Hello.INVALID)
        size = int.from_bytes(header[3:5], "big")
        if size == 0:
            return HelloRead(Hello.INVALID)
        body = data[offset + 5 : offset + 5 + size]
        if len(body) < size:
            return HelloRead(Hello.PARTIAL)
        message += body
        offset += 5 + size
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return HelloRead(Hello.INVALID)
            length = int.from_bytes(message[1:4], "big")
            if len(message) >= 4 + length:
                return _parse_hello(message[4 : 4 + length])


def _parse_hello(body: bytes) -> HelloRead:
    from mitmproxy.tls import ClientHello

    try:
        hello = ClientHello(body)
        names = [hello.sni] if hello.sni else []
        ech = False
        for ext in hello._client_hello.extensions.extensions:
            if ext.type == 0x00:  # server_name; mitmproxy reports none when it lists two
                for entry in ext.body.server_names:
                    names.append(bytes(entry.host_name).decode("utf-8", "surrogateescape"))
            elif ext.type == _ENCRYPTED_CLIENT_HELLO:
                ech = True
    except Exception:
        return HelloRead(Hello.INVALID)
    return HelloRead(Hello.COMPLETE, tuple(dict.fromkeys(names)), ech)


def could_become_http(data: bytes) -> bool:
    """The bytes could still grow into a request line that mitmproxy reads as HTTP.

    mitmproxy takes a tunnel for HTTP only once it has the first line end,
    a space before it and three letters at the start; until the line end
    comes, a request line looks like anything else.
    """
    return b"\n" not in data and data[:3].isalpha() and not data.startswith(b"SSH")


_HOST = re.compile(rb"\r?\nhost[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_ABSOLUTE = re.compile(rb"^[A-Za-z]+[ \t]+[A-Za-z][A-Za-z0-9+.-]*://([^/ \t?#]*)")


def http_hosts(data: bytes) -> list[str]:
    """Every host the first request head in `data` names (absolute-form URL, each Host header)."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    hosts = [m.group(1) for m in _ABSOLUTE.finditer(head)]
    hosts += [m.group(1).strip() for m in _HOST.finditer(head)]
    return [h.decode("utf-8", "surrogateescape") for h in hosts]
