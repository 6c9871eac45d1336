"""A request path as origin servers may read it, for `read_only_allow` rules.

A rule lets a write through on a read-only site, so it must match the path
the site will serve, not the bytes the client sent: `/login/../api/graphql`
is `/api/graphql` to a server that removes dot segments (RFC 3986 5.2.4).
Servers differ beyond that: some decode `%2e` before removing dot segments
and some do not, IIS takes `\\` for `/`, Tomcat drops `;` parameters (so
`/..;/` climbs), some decode `%2f` or decode twice, nginx merges `//`, and a
fragment is dropped by some and kept by others.

So a path is read every way a server may read it (as sent and with
unreserved escapes decoded, each with and without dot segments), and a rule
must match every reading.  A path that some server would read as other
segments than the rest do (anything beyond unreserved escapes and dot
segments: see `readings`) has no reading, and no rule matches it.  Only
writes consult rules, so reads never pay for this.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# Segments of pchar (RFC 3986) without ';' (a path parameter to Tomcat and
# Jetty), each non-empty, and `%XX` escapes; an optional trailing '/'.
_PATH = re.compile(r"(?:/(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})+)*/?\Z")
# The common case, which has only one reading: no escape, no segment that
# starts with a dot.
_PLAIN = re.compile(r"(?=/)(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)*/?\Z")
# A segment of three or more dots: a plain name to RFC 3986, `..` to some
# Windows servers.
_DOTS_ONLY = re.compile(r"/\.{3,}(?=/|\Z)")


def readings(path: str) -> tuple[str, ...]:
    """Every path a server may take `path` (a request target's path, without
    its query) to mean; () when servers may disagree on its segments.

    Readings: the path as sent, with unreserved escapes decoded (`%2e` is
    `.`, `%41` is `A`), and each of those with dot segments removed.  No
    reading at all for a path that does not start with `/`, has an empty
    segment (`//`) or one of dots only beyond `..`, or holds `\\`, `;`,
    `#`, `?`, a space, a control or non-ASCII character, or an escape of
    anything but an unreserved character (`%2f`, `%5c`, `%25`, `%00` ...).
    """
    if _PLAIN.match(path) is not None:
        return (path,)
    if not path.startswith("/") or _PATH.match(path) is None:
        return ()
    decoded = _decode_unreserved(path)
    if decoded is None or _DOTS_ONLY.search(decoded) is not None:
        return ()
    return tuple(dict.fromkeys((path, decoded, remove_dot_segments(path), remove_dot_segments(decoded))))


def _decode_unreserved(path: str) -> str | None:
    """`path` with its escapes of unreserved characters decoded; None if it
    escapes anything else.  `path` matched _PATH: every '%' starts an escape."""
    if "%" not in path:
        return path
    head, *rest = path.split("%")
    out = [head]
    for part in rest:
        char = chr(int(part[:2], 16))
        if char not in _UNRESERVED:
            return None
        out.append(char + part[2:])
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path: `.` goes, `..` takes the segment
    before it (none above the root)."""
    segments = path[1:].split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == ".":
            if i == last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)
