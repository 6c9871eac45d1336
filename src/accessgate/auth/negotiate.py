"""`negotiate`: Kerberos single sign-on (SPNEGO, `Proxy-Authorization: Negotiate ...`).

    method = NegotiateMethod(keytab="/etc/accessgate/http.keytab")
    method.check(Negotiate(token))   # Verdict(ok, user="alice", reply="Negotiate oYG...")

The token is accepted with the keytab's keys (the `gssapi` package over MIT
Kerberos); the ticket's expiry, the authenticator's clock skew and the
integrity of both are Kerberos's checks.  The user is the client principal:
`alice@CORP.EXAMPLE` becomes `alice` when CORP.EXAMPLE is the default realm
(the first of `realms`, or the service principal's own realm) and
`strip_realm` is on; principals of the other realms in `realms` keep their
realm; any other realm, and anonymous principals, are refused.

Replays: MIT's replay cache (1.20, measured) refuses a replayed AP-REQ
only when the client did not ask for mutual authentication, and every
browser does.  So this method keeps its own: the SHA-256 of each accepted
authenticator's ciphertext (what MIT's cache keys on too), for
`replay_window` seconds, which is at least twice Kerberos's clock skew so
that an authenticator can never outlive its record.  A token that carries
no Kerberos AP-REQ accessgate can find is refused before it is accepted.
The cache is per process: several proxy processes do not share it.

Negotiate authenticates a connection, not a request: the adapter should
check a client's token once per connection and keep the user for it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import ClassVar

from accessgate.auth.base import OK, REFUSED, UNAVAILABLE, UNKNOWN_USER, Verdict
from accessgate.auth.credentials import Basic, Negotiate

SPNEGO_OID = "1.3.6.1.5.5.2"
_KRB5_OIDS = {"1.2.840.113554.1.2.2", "1.2.840.48018.1.2.2", "1.3.5.1.5.2", "1.3.6.1.5.2.5"}
ANONYMOUS = "WELLKNOWN/ANONYMOUS@WELLKNOWN:ANONYMOUS"

# MIT minor status codes (com_err krb5 table) for reasons worth telling apart.
_KRB5_BASE = -1765328384  # ERROR_TABLE_BASE_krb5; protocol error N is base + N
_MINOR_REASONS = {
    _KRB5_BASE + 31: "bad-integrity",         # KRB_AP_ERR_BAD_INTEGRITY
    _KRB5_BASE + 32: "ticket-expired",        # KRB_AP_ERR_TKT_EXPIRED
    _KRB5_BASE + 33: "ticket-not-yet-valid",  # KRB_AP_ERR_TKT_NYV
    _KRB5_BASE + 34: "replayed",              # KRB_AP_ERR_REPEAT
    _KRB5_BASE + 35: "wrong-service",         # KRB_AP_ERR_NOT_US
    _KRB5_BASE + 36: "wrong-service",         # KRB_AP_ERR_BADMATCH
    _KRB5_BASE + 37: "clock-skew",            # KRB_AP_ERR_SKEW
    _KRB5_BASE + 45: "no-key",                # KRB_AP_ERR_NOKEY
    _KRB5_BASE + 154: "wrong-service",        # KRB5KRB_AP_WRONG_PRINC
}


class _Der:
    """Just enough DER to find the authenticator inside a SPNEGO/Kerberos token."""

    @staticmethod
    def read(data: bytes, pos: int) -> tuple[int, int, int]:
        """(tag byte, start of content, end of content); ValueError if malformed."""
        if pos + 2 > len(data):
            raise ValueError("truncated")
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise ValueError("multi-byte tag")
        length = data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or pos + count > len(data):
                raise ValueError("bad length")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        end = pos + length
        if end > len(data):
            raise ValueError("truncated")
        return tag, pos, end

    @classmethod
    def children(cls, data: bytes, start: int, end: int) -> Iterable[tuple[int, int, int]]:
        pos = start
        while pos < end:
            tag, cstart, cend = cls.read(data, pos)
            if cend > end:
                raise ValueError("child overruns parent")
            yield tag, cstart, cend
            pos = cend


def _oid(data: bytes) -> str:
    if not data:
        raise ValueError("empty OID")
    parts = [data[0] // 40, data[0] % 40]
    value = 0
    for byte in data[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def authenticator_tag(token: bytes) -> bytes:
    """SHA-256 of the AP-REQ authenticator's ciphertext; ValueError if there is none."""
    der = _Der
    tag, start, end = der.read(token, 0)
    if tag != 0x60:  # [APPLICATION 0] InitialContextToken
        raise ValueError("not a GSS token")
    otag, ostart, oend = der.read(token, start)
    if otag != 0x06:
        raise ValueError("no mechanism OID")
    mech = _oid(token[ostart:oend])
    if mech == SPNEGO_OID:
        ntag, nstart, nend = der.read(token, oend)
        if ntag != 0xA0:  # [0] NegTokenInit
            raise ValueError("not a NegTokenInit")
        stag, sstart, send = der.read(token, nstart)
        if stag != 0x30:
            raise ValueError("NegTokenInit is not a sequence")
        for ctag, cstart, cend in der.children(token, sstart, send):
            if ctag == 0xA2:  # [2] mechToken
                itag, istart, iend = der.read(token, cstart)
                if itag != 0x04:
                    raise ValueError("mechToken is not an octet string")
                return authenticator_tag(token[istart:iend])
        raise ValueError("SPNEGO without an optimistic mechanism token")
    if mech not in _KRB5_OIDS:
        raise ValueError("not a Kerberos mechanism")
    pos = oend
    if token[pos:pos + 2] != b"\x01\x00":  # TOK_ID of an AP-REQ
        raise ValueError("not an AP-REQ")
    atag, astart, aend = der.read(token, pos + 2)
    if atag != 0x6E:  # [APPLICATION 14] AP-REQ
        raise ValueError("not an AP-REQ")
    stag, sstart, send = der.read(token, astart)
    for ctag, cstart, cend in der.children(token, sstart, send):
        if ctag == 0xA4:  # [4] authenticator EncryptedData
            etag, estart, eend = der.read(token, cstart)
            for ftag, fstart, fend in der.children(token, estart, eend):
                if ftag == 0xA2:  # [2] cipher
                    ctag2, c2start, c2end = der.read(token, fstart)
                    if ctag2 != 0x04 or c2end == c2start:
                        raise ValueError("bad cipher")
                    return hashlib.sha256(token[c2start:c2end]).digest()
    raise ValueError("AP-REQ without an authenticator")


class ReplayCache:
    """Authenticators seen in the last `window` seconds; reserve, then confirm or release."""

    def __init__(self, window: float = 600.0, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # tag -> expiry, oldest first
        self._lock = threading.Lock()

    def reserve(self, tag: bytes) -> str | None:
        """None if the tag is new (now reserved), else 'replayed' or 'replay-cache-full'."""
        now = self._clock()
        with self._lock:
            while self._seen:
                first, expiry = next(iter(self._seen.items()))
                if expiry > now:
                    break
                del self._seen[first]
            expiry = self._seen.get(tag)
            if expiry is not None and expiry > now:
                return "replayed"
            if len(self._seen) >= self.max_entries:
                # Forgetting a live tag would let it be replayed: refuse instead.
                return "replay-cache-full"
            self._seen[tag] = now + self.window
            return None

    def release(self, tag: bytes) -> None:
        """Forget a reservation whose token Kerberos refused (garbage fills nothing)."""
        with self._lock:
            self._seen.pop(tag, None)

    def __len__(self) -> int:
        return len(self._seen)


_SHARED: list[ReplayCache] = []
_SHARED_LOCK = threading.Lock()


def _shared_replays() -> ReplayCache:
    with _SHARED_LOCK:
        if not _SHARED:
            _SHARED.append(ReplayCache())
        return _SHARED[0]


def split_principal(principal: str) -> tuple[str, str]:
    """('alice', 'CORP.EXAMPLE') from 'alice@CORP.EXAMPLE'; an escaped '\\@' stays in the name."""
    i = len(principal) - 1
    while i >= 0:
        if principal[i] == "@":
            backslashes = 0
            j = i - 1
            while j >= 0 and principal[j] == "\\":
                backslashes += 1
                j -= 1
            if backslashes % 2 == 0:
                return principal[:i], principal[i + 1:]
        i -= 1
    return principal, ""


class NegotiateMethod:
    name = "negotiate"
    scheme: ClassVar[str] = "negotiate"
    generation = 0

    def __init__(self, keytab: str | os.PathLike[str] | None = None, *, principal: str | None = None,
                 realms: Iterable[str] = (), strip_realm: bool = True, replay_window: float = 600.0,
                 max_replay_entries: int = 200_000, rcache: str | None = None,
                 replays: ReplayCache | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        try:
            import gssapi
        except ImportError:
            raise ValueError("sign-in method 'negotiate' needs the gssapi package "
                             "(pip install gssapi; it builds against MIT Kerberos: apt-get install libkrb5-dev)") from None
        self._gssapi = gssapi
        self.keytab = str(keytab) if keytab else os.environ.get("KRB5_KTNAME", "")
        self.principal = principal
        self.realms = tuple(realms)
        self.strip_realm = strip_realm
        # Shared by every method built with the defaults in this process, so that
        # rebuilding the method (a changed option) does not forget what was seen.
        if replays is None:
            replays = (_shared_replays() if (replay_window, max_replay_entries, clock)
                       == (600.0, 200_000, time.monotonic) else ReplayCache(replay_window, max_replay_entries, clock))
        self.replays = replays
        store = {}
        if self.keytab:
            store["keytab"] = self.keytab.removeprefix("FILE:")
            if not os.path.exists(store["keytab"]):
                raise ValueError(f"keytab {store['keytab']} does not exist; make one with ktpass or msktutil "
                                 "(see docs/identity.md)")
        if rcache:
            store["rcache"] = rcache
        self._store = store
        self._creds = self._acquire()

    def __repr__(self) -> str:
        return f"NegotiateMethod(keytab={self.keytab!r}, realms={self.realms!r})"

    def _acquire(self):
        gssapi = self._gssapi
        name = None
        if self.principal:
            name = gssapi.Name(self.principal, gssapi.NameType.kerberos_principal)
        try:
            return gssapi.Credentials(name=name, usage="accept", store=self._store or None)
        except gssapi.exceptions.GSSError as exc:
            raise ValueError(f"cannot use keytab {self.keytab or '(default)'}: {exc.gen_message()}; "
                             "check that it holds the HTTP/ principal and is readable") from None

    def challenge(self) -> str:
        return "Negotiate"

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass

    def check(self, credentials: Basic | Negotiate) -> Verdict:
        if not isinstance(credentials, Negotiate):
            return Verdict(UNKNOWN_USER, reason="not-negotiate")
        token = credentials.token
        try:
            tag = authenticator_tag(token)
        except (ValueError, IndexError):
            return Verdict(REFUSED, reason="garbage")
        held = self.replays.reserve(tag)
        if held is not None:
            return Verdict(REFUSED if held == "replayed" else UNAVAILABLE, reason=held)
        gssapi = self._gssapi
        ctx = gssapi.SecurityContext(creds=self._creds, usage="accept")
        try:
            reply = ctx.step(token)
            # SPNEGO answers a failure with a reject token and raises on the next look.
            complete = ctx.complete
        except gssapi.exceptions.GSSError as exc:
            self.replays.release(tag)
            return Verdict(REFUSED, reason=_reason(exc))
        if not complete:
            # One round trip is all Kerberos needs; a mechanism that wants more (NTLM) is not offered.
            return Verdict(REFUSED, reason="more-legs-needed")
        principal = str(ctx.initiator_name)
        if principal == ANONYMOUS or gssapi.RequirementFlag.anonymity in ctx.actual_flags:
            return Verdict(REFUSED, reason="anonymous")
        local, realm = split_principal(principal)
        _, service_realm = split_principal(str(ctx.target_name))
        accepted = self.realms or (service_realm,)
        if not local or realm not in accepted:
            return Verdict(REFUSED, reason="wrong-realm")
        user = local if (self.strip_realm and realm == accepted[0]) else principal
        header = "Negotiate " + base64.b64encode(reply).decode("ascii") if reply else None
        return Verdict(OK, user=user, reply=header)


def _signed(code: int) -> int:
    return code - (1 << 32) if code >= 1 << 31 else code


_MESSAGE_REASONS = (
    ("ticket expired", "ticket-expired"),
    ("clock skew", "clock-skew"),
    ("replay", "replayed"),
    ("not yet valid", "ticket-not-yet-valid"),
    ("not found in keytab", "wrong-service"),
    ("wrong principal", "wrong-service"),
    ("integrity", "bad-integrity"),
    ("decrypt", "bad-integrity"),
)


def _reason(exc) -> str:
    """A short code for a Kerberos refusal (SPNEGO hides MIT's minor codes, so read the text too)."""
    found = _MINOR_REASONS.get(_signed(exc.min_code or 0))
    if found:
        return found
    try:
        text = " ".join(exc.gen_message().split()).lower()
    except Exception:
        text = str(exc).lower()
    for needle, reason in _MESSAGE_REASONS:
        if needle in text:
            return reason
    return "refused-by-kerberos"
