"""What a client sent in `Proxy-Authorization`, parsed once, never shown.

    parse("Basic YWxpY2U6c2VjcmV0")   # -> Basic(user="alice"), password hidden
    parse("Negotiate YIIC...")        # -> Negotiate(token=b"...")
    parse("Bearer x")                 # -> Malformed("unsupported-scheme", ...)

Neither kind has the secret in its repr or str, and no message built here
quotes the header: a password or a Kerberos token must never reach a log, an
exception or a status page.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

# A Windows Kerberos token with a large PAC can reach 48,000 bytes (MaxTokenSize).
MAX_HEADER = 65_536
# Longer user names are no one's; refuse them before any directory sees them.
MAX_USER_BYTES = 256
MAX_PASSWORD_BYTES = 1024

_B64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Basic:
    """`Basic` credentials: the user as typed (UTF-8) and the password bytes."""

    user: str
    password: bytes = field(repr=False)

    def __str__(self) -> str:
        return f"Basic credentials for {self.user!r}"


@dataclass(frozen=True, slots=True)
class Negotiate:
    """A SPNEGO token (`Negotiate`), decoded from base64."""

    token: bytes = field(repr=False)

    def __str__(self) -> str:
        return f"a Negotiate token of {len(self.token)} bytes"


@dataclass(frozen=True, slots=True)
class Malformed:
    """A header that cannot be a credential; `reason` is a short code, `detail` a sentence."""

    reason: str
    detail: str


Credentials = Basic | Negotiate


def parse(header: str | bytes | None) -> Credentials | Malformed | None:
    """Parse one `Proxy-Authorization` value; None when the client sent none."""
    if header is None:
        return None
    if isinstance(header, str):
        try:
            raw = header.encode("latin-1")
        except UnicodeEncodeError:
            return Malformed("malformed", "the header has characters outside Latin-1")
    else:
        raw = bytes(header)
    if len(raw) > MAX_HEADER:
        return Malformed("malformed", f"the header is longer than {MAX_HEADER} bytes")
    raw = raw.strip(b" \t")
    if not raw:
        return None
    scheme, _, rest = raw.partition(b" ")
    scheme_name = scheme.lower()
    rest = rest.strip(b" \t")
    if scheme_name == b"basic":
        return _basic(rest)
    if scheme_name == b"negotiate":
        return _negotiate(rest)
    return Malformed("unsupported-scheme", "the scheme is neither Basic nor Negotiate")


def _decode(rest: bytes) -> bytes | None:
    if not rest or not _B64.match(rest) or len(rest) % 4:
        return None
    try:
        return base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        return None


def _basic(rest: bytes) -> Basic | Malformed:
    decoded = _decode(rest)
    if decoded is None:
        return Malformed("malformed", "Basic credentials that are not base64")
    # RFC 7617: the user-id cannot contain a colon; the password can.
    user_bytes, colon, password = decoded.partition(b":")
    if not colon:
        return Malformed("malformed", "Basic credentials without a colon between user and password")
    if not user_bytes:
        return Malformed("malformed", "Basic credentials with an empty user name")
    if len(user_bytes) > MAX_USER_BYTES:
        return Malformed("malformed", f"a user name longer than {MAX_USER_BYTES} bytes")
    if len(password) > MAX_PASSWORD_BYTES:
        return Malformed("malformed", f"a password longer than {MAX_PASSWORD_BYTES} bytes")
    try:
        user = user_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed("malformed", "a user name that is not UTF-8")
    if _CONTROL.search(user):
        return Malformed("malformed", "a user name with control characters")
    if user != user.strip():
        return Malformed("malformed", "a user name with leading or trailing spaces")
    return Basic(user, password)


def _negotiate(rest: bytes) -> Negotiate | Malformed:
    decoded = _decode(rest)
    if decoded is None:
        return Malformed("malformed", "a Negotiate token that is not base64")
    return Negotiate(decoded)


def describe_user(user: str, limit: int = 64) -> str:
    """A typed user name as it may appear in a log line: quoted, escaped, bounded."""
    shown = user if len(user) <= limit else user[:limit] + "…"
    return repr(shown)
