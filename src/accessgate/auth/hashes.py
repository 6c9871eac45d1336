"""Password hashes as Apache's `htpasswd` writes them, checked without passlib.

    verify(b"secret", "$apr1$zkNvAMy2$t6FVPCILPpQtzUdCIqbTS.")   # -> True / False
    kind_of("$6$rounds=10000$...")                                  # -> "sha512-crypt"

Kinds: bcrypt (`-B`, `$2y$`/`$2b$`/`$2a$`), APR1-MD5 (`-m`, `$apr1$`),
SHA-crypt (`-2`/`-5`, `$5$`/`$6$`, optional `rounds=N$`) and `{SHA}` (`-s`).
DES crypt (`-d`) and plain text (`-p`) are refused: the first checks only
eight characters, the second is no hash.

passlib is not used: it is unmaintained, and with bcrypt 5 beside it its
backend self-test raises; Python's `crypt` module is gone in 3.13. bcrypt
comes from the `bcrypt` package; the others are written out here from their
specifications (PHK's md5crypt, Drepper's SHA-crypt) and tested against
files the real `htpasswd` wrote.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import bcrypt

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# bcrypt reads at most 72 bytes of a password; bcrypt 5 raises beyond that
# where 4 truncated, so truncate here and behave the same on both.
BCRYPT_MAX_PASSWORD = 72
SHA_CRYPT_DEFAULT_ROUNDS = 5000
SHA_CRYPT_MIN_ROUNDS = 1000
# Higher counts take seconds per check in Python; htpasswd's default is 5,000.
SHA_CRYPT_MAX_ROUNDS = 200_000

_BCRYPT = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
_APR1 = re.compile(r"\$apr1\$([^$]{1,8})\$[./0-9A-Za-z]{22}\Z")
_SHA_CRYPT = re.compile(r"\$([56])\$(?:rounds=(\d{1,9})\$)?([^$]{0,16})\$([./0-9A-Za-z]+)\Z")
_SHA1 = re.compile(r"\{SHA\}([A-Za-z0-9+/]{27}=)\Z")
_DES = re.compile(r"[./0-9A-Za-z]{13}\Z")


class UnsupportedHash(ValueError):
    """A stored hash accessgate does not check; the message says what to do."""


def kind_of(stored: str) -> str:
    """The kind of a stored hash, or UnsupportedHash naming what to use instead."""
    if _BCRYPT.match(stored):
        cost = int(stored[4:6])
        if not 4 <= cost <= 31:
            raise UnsupportedHash(f"bcrypt cost {cost} is out of range; re-create the entry with htpasswd -B")
        return "bcrypt"
    if _APR1.match(stored):
        return "apr1"
    m = _SHA_CRYPT.match(stored)
    if m:
        expected = 43 if m.group(1) == "5" else 86
        if len(m.group(4)) != expected:
            raise UnsupportedHash("a SHA-crypt hash of the wrong length; re-create the entry with htpasswd -5")
        rounds = int(m.group(2)) if m.group(2) else SHA_CRYPT_DEFAULT_ROUNDS
        if rounds > SHA_CRYPT_MAX_ROUNDS:
            raise UnsupportedHash(
                f"SHA-crypt with {rounds} rounds (more than {SHA_CRYPT_MAX_ROUNDS:,}) takes seconds per check; "
                "re-create the entry with htpasswd -5 (5,000 rounds) or -B")
        return "sha256-crypt" if m.group(1) == "5" else "sha512-crypt"
    if _SHA1.match(stored):
        return "sha1"
    if stored.startswith("$"):
        raise UnsupportedHash("an unknown hash scheme; re-create the entry with htpasswd -B")
    if _DES.match(stored):
        raise UnsupportedHash("a DES-crypt entry (htpasswd -d checks only 8 characters); "
                              "re-create it with htpasswd -B")
    raise UnsupportedHash("not a hash (plain text, htpasswd -p, is refused); re-create the entry with htpasswd -B")


def verify(password: bytes, stored: str) -> bool:
    """True if `password` matches `stored`; UnsupportedHash for a kind not checked."""
    kind = kind_of(stored)
    if kind == "bcrypt":
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored.encode("ascii"))
    if kind == "apr1":
        salt = stored[6:].split("$", 1)[0]
        computed = apr1(password, salt.encode("ascii"))
    elif kind == "sha1":
        computed = "{SHA}" + base64.b64encode(hashlib.sha1(password).digest()).decode("ascii")
    else:
        computed = sha_crypt(password, stored)
    return hmac.compare_digest(computed.encode("ascii"), stored.encode("ascii"))


# ---- APR1-MD5 (Apache's variant of PHK's md5crypt) -------------------------------

def apr1(password: bytes, salt: bytes, magic: bytes = b"$apr1$") -> str:
    salt = salt[:8]
    alternate = hashlib.md5(password + salt + password).digest()
    ctx = hashlib.md5(password + magic + salt)
    for remaining in range(len(password), 0, -16):
        ctx.update(alternate[:min(16, remaining)])
    i = len(password)
    while i:
        ctx.update(b"\0" if i & 1 else password[:1])
        i >>= 1
    final = _mix(hashlib.md5, 1000, ctx.digest(), salt, password)
    out = "".join(_b64_24(final[a], final[b], final[c], 4)
                  for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)))
    out += _b64_24(0, 0, final[11], 2)
    return f"{magic.decode('ascii')}{salt.decode('ascii')}${out}"


def _mix(new, rounds: int, digest: bytes, salt: bytes, password: bytes) -> bytes:
    """The rounds MD5-crypt and SHA-crypt share: each hashes the digest so far and `password`
    in turn, with `salt` in rounds not divisible by 3 and `password` again in those not by 7."""
    for r in range(rounds):
        step = new(password if r & 1 else digest)
        if r % 3:
            step.update(salt)
        if r % 7:
            step.update(password)
        step.update(digest if r & 1 else password)
        digest = step.digest()
    return digest


# ---- SHA-crypt ($5$ and $6$, Ulrich Drepper's specification) ----------------------

_SHA256_ORDER = ((0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
                 (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29))
_SHA512_ORDER = ((0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4),
                 (47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51),
                 (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35),
                 (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
                 (62, 20, 41))


def sha_crypt(password: bytes, setting: str) -> str:
    """The SHA-crypt string for `password` with the salt and rounds of `setting`."""
    m = _SHA_CRYPT.match(setting)
    if not m:
        raise UnsupportedHash("not a SHA-crypt setting")
    variant, rounds_text, salt_text = m.group(1), m.group(2), m.group(3)
    new = hashlib.sha256 if variant == "5" else hashlib.sha512
    rounds = int(rounds_text) if rounds_text else SHA_CRYPT_DEFAULT_ROUNDS
    rounds = min(max(rounds, SHA_CRYPT_MIN_ROUNDS), 999_999_999)
    salt = salt_text.encode("ascii")[:16]
    size = new().digest_size

    b = new(password + salt + password).digest()
    a = new(password + salt)
    n = len(password)
    while n > size:
        a.update(b)
        n -= size
    a.update(b[:n])
    n = len(password)
    while n:
        a.update(b if n & 1 else password)
        n >>= 1
    a_digest = a.digest()

    p = _stretch(new(password * len(password)).digest(), len(password))
    s = _stretch(new(salt * (16 + a_digest[0])).digest(), len(salt))

    c = _mix(new, rounds, a_digest, s, p)

    if variant == "5":
        out = "".join(_b64_24(c[x], c[y], c[z], 4) for x, y, z in _SHA256_ORDER)
        out += _b64_24(0, c[31], c[30], 3)
    else:
        out = "".join(_b64_24(c[x], c[y], c[z], 4) for x, y, z in _SHA512_ORDER)
        out += _b64_24(0, 0, c[63], 2)
    prefix = f"${variant}$" + (f"rounds={int(rounds_text)}$" if rounds_text else "")
    return f"{prefix}{salt_text[:16]}${out}"


def _stretch(digest: bytes, length: int) -> bytes:
    return (digest * (length // len(digest) + 1))[:length]


def _b64_24(b2: int, b1: int, b0: int, count: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    chars = []
    for _ in range(count):
        chars.append(_ITOA64[w & 0x3F])
        w >>= 6
    return "".join(chars)
