"""Host name normalization: every spelling of a host becomes one canonical name.

A request can spell the same host many ways (`FaceBook.COM.`, `facebook.com:443`,
fullwidth `ｆａｃｅｂｏｏｋ.com`, `2130706433` for 127.0.0.1).  The network stack
treats them all as one host, so the policy must too, or a spelling becomes a
bypass.  IPv4 follows the WHATWG URL host parser (what browsers and
`inet_aton` accept: decimal, hex, octal, one to four parts); names follow
IDNA 2008 with UTS-46 mapping and end in A-label form.  Normalization
happens once: a name that still differs after it (two root dots, one of
them a mapped full stop or not) is no host name.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

import idna

from accessgate.errors import InvalidHost
from accessgate.policy.model import IPAddress

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

# Plain ASCII names skip the (slow) IDNA codec: letters, digits, '-', '_', '.'.
_ASCII_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
# One label: letters, digits, '_' and '-', neither first nor last, at most
# 63 characters (checked on its own first, for its own message).
_LABEL_RE = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_LABEL = re.compile(rf"{_LABEL_RE}\Z")
_PORT = re.compile(r"[0-9]{1,64}\Z")


class NormalHost(NamedTuple):
    """A NamedTuple, not a frozen dataclass: cheaper to build, and a proxy
    builds one for every new host name it sees."""

    name: str  # canonical: A-label name, or the address as ipaddress prints it
    ip: IPAddress | None = None


def normalize_host(raw: str) -> NormalHost:
    """Canonical form of a host as written in a URL, Host header, SNI or CONNECT.

    Raises InvalidHost for anything that cannot be a host name.  Not cached:
    the engine caches what a host decides, per policy.
    """
    if not isinstance(raw, str):
        raise InvalidHost(f"host must be text, not {type(raw).__name__}")
    return _normalize(raw.lower() if raw.isascii() else raw)


def drop_root(name: str) -> str:
    """`name` without its trailing (root) dot, if it has one.

    The only place normalization removes a dot, and it removes one: a name
    that still ends in a dot after it (`a.test..`) has an empty label and
    names no host.  Both the full path and the engine's shortcut call this,
    so they cannot disagree on how many dots a name may end in.
    """
    return name[:-1] if name[-1:] == "." else name


def plain_name(name: str) -> str | None:
    """`name` itself when it is a plain host name (the common case, and the
    only one cheap enough to try first); else None, and `normalize_host`
    decides it.  `name` is lower case with its root dot already dropped
    (`drop_root`): one that still ends in a dot is not plain.  Never a name
    `normalize_host` would not give."""
    if len(name) > MAX_NAME_LENGTH or _PLAIN_NAME.match(name) is None:
        return None
    return name


# A whole plain name in one match: labels as _LABEL_RE, no trailing dot, and
# a last label that is not a number (WHATWG: then the name is an IPv4
# address in one of its spellings, for normalize_host).
_PLAIN_NAME = re.compile(rf"(?:{_LABEL_RE}\.)*(?![0-9]+\Z|0x[0-9a-f]*\Z){_LABEL_RE}\Z")


# Labels of 1-63 allowed characters by one simple regex; that no label starts
# or ends with '-' by substring tests (cheaper than a regex saying both at
# once).  Whatever fails here takes the full path.
_PLAIN_LABELS = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}\Z")


def plain_labels(prefix: str) -> bool:
    """Whether `prefix` (lower case, no trailing dot) is one or more labels a
    plain host name may have: a whole name, or what comes before a known
    domain in one."""
    if (
        len(prefix) <= MAX_LABEL_LENGTH
        and prefix.isascii()
        and prefix.isalnum()
        and (prefix.islower() or prefix.isdigit())
    ):
        return True  # one label of letters and digits: www, api, static ...
    return (
        _PLAIN_LABELS.match(prefix) is not None
        and prefix[0] != "-"
        and prefix[-1] != "-"
        and "-." not in prefix
        and ".-" not in prefix
    )


def _normalize(raw: str) -> NormalHost:
    plain = plain_name(drop_root(raw))
    if plain is not None:
        return NormalHost(plain)
    return _normalize_fully(raw)


def normalize_host_fully(raw: str) -> NormalHost:
    """normalize_host without the plain-name shortcut: what the shortcut must agree with."""
    return _normalize_fully(raw.lower() if raw.isascii() else raw)


def _normalize_fully(raw: str) -> NormalHost:
    host = _strip_port(raw)
    if not host:
        raise InvalidHost(f"{raw!r} names no host")
    if ":" in host:
        return _ipv6(host, raw)
    if not _ASCII_NAME.match(host):
        host = _map_unicode(host, raw)
    host = drop_root(host.lower())
    labels = host.split(".")
    if _ends_in_number(labels):
        return NormalHost(*_ipv4(labels, raw))
    _check_labels(labels, host, raw)
    return NormalHost(host)


def _strip_port(raw: str) -> str:
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise InvalidHost(f"{raw!r} opens an IPv6 address with '[' but never closes it")
        rest = raw[close + 1 :]
        if rest and not (rest.startswith(":") and _valid_port(rest[1:])):
            raise InvalidHost(f"{raw!r} has text after the IPv6 address that is not a port")
        return raw[1:close]
    if raw.count(":") == 1:
        host, port = raw.split(":")
        if not _valid_port(port):
            raise InvalidHost(f"{raw!r} has a port that is not a number from 0 to 65535")
        return host
    return raw


def _valid_port(port: str) -> bool:
    # An empty port ("host:") is allowed by RFC 3986 and means the default;
    # leading zeros ("00443") are accepted by every client, so we accept them too.
    return port == "" or (_PORT.match(port) is not None and int(port) <= 65535)


def _ipv6(host: str, raw: str) -> NormalHost:
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        raise InvalidHost(f"{raw!r} is neither a host name nor an IP address") from None
    if addr.ipv4_mapped is not None:
        # ::ffff:a.b.c.d reaches the IPv4 host, so it is that host.
        v4 = addr.ipv4_mapped
        return NormalHost(str(v4), v4)
    return NormalHost(str(addr), addr)


def _map_unicode(host: str, raw: str) -> str:
    """UTS-46 mapping and A-labels.  A trailing dot (a mapped full stop too)
    stays for `drop_root`, which removes one for every kind of name."""
    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        if _ASCII_NAME.match(mapped):
            return mapped
        # idna keeps one trailing dot and refuses an empty label before it.
        return idna.encode(mapped, uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise InvalidHost(f"{raw!r} is not a valid internationalized host name ({exc})") from None


def _ends_in_number(labels: list[str]) -> bool:
    last = labels[-1]
    if last.isdigit() and last.isascii():
        return True
    return last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])


def _ipv4(labels: list[str], raw: str) -> tuple[str, ipaddress.IPv4Address]:
    """WHATWG IPv4 parser: the forms `inet_aton` and browsers accept."""
    if len(labels) > 4 or any(not label for label in labels):
        raise InvalidHost(f"{raw!r} looks like an IPv4 address but is not one")
    numbers = []
    for label in labels:
        try:
            if label.startswith("0x"):
                numbers.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label.startswith("0"):
                numbers.append(int(label[1:], 8))
            else:
                numbers.append(int(label, 10))
        except ValueError:
            raise InvalidHost(f"{raw!r} looks like an IPv4 address but is not one") from None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise InvalidHost(f"{raw!r} is an IPv4 address out of range")
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    addr = ipaddress.IPv4Address(value)
    return str(addr), addr


def _check_labels(labels: list[str], host: str, raw: str) -> None:
    if len(host) > MAX_NAME_LENGTH:
        raise InvalidHost(f"host name is {len(host)} characters long; at most 253 are allowed")
    for label in labels:
        if not label:
            raise InvalidHost(f"{raw!r} has an empty label (two dots in a row, or a leading dot)")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidHost(f"{raw!r} has a label longer than 63 characters")
        if not _LABEL.match(label):
            raise InvalidHost(f"{raw!r} has a label that cannot be in a host name: {label!r}")
