"""A log file's lines in bounded memory, and the chain fields of each.

`items()` yields a line whole only up to a limit (a longer one is hashed as
it streams by), and counts a run of blank or non-JSON lines without
splitting it, so that what a file holds never decides how much memory
reading it takes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from accessgate.audit.schema import CHAIN_TAIL, SEAL_TAIL

JUNK_RUN, LONG = 1, 2  # the first field of what items() yields for a run of junk, a long line
# The writer puts the chain last; reading it from the line's end avoids a
# full JSON parse per record.  Anything else takes the slow, exact path.
# A sealed line has its epoch and MAC after the chain.
TAIL = re.compile(CHAIN_TAIL + rb"(?:" + SEAL_TAIL + rb")?\}\s*$")
TAIL_BYTES = 200  # enough for the longest tail TAIL matches


@contextmanager
def opened(path: Path) -> Iterator[tuple]:
    """(buffered reader, its compressed file object for progress) of a plain or gzip file."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            yield fh, fh.fileobj
    else:
        with open(path, "rb", buffering=1 << 16) as fh:
            yield fh, fh


def items(fh, limit: int) -> Iterator[bytes | tuple]:
    """What a file holds, line by line, in bounded memory:

    a line as bytes, with its newline (the last line may have none);
    (JUNK_RUN, number of lines, bytes) for two or more blank or non-JSON lines;
    (LONG, length, sha256 hex, last TAIL_BYTES bytes, had a newline) for a line over `limit`.
    """
    peek, readline, read = fh.peek, fh.readline, fh.read
    while line := readline(limit + 1):
        if line[-1:] == b"\n":
            if line[:1] == b"{" or line.lstrip(b" \t\r")[:1] == b"{":
                yield line
                continue
            # A line that cannot be a record.  The whole lines that follow without
            # a `{` anywhere cannot be records either: count them at C speed.
            count, size = 1, len(line)
            while head := peek(1):
                brace = head.find(b"{")
                end = head.rfind(b"\n", 0, len(head) if brace < 0 else brace) + 1
                if end == 0:
                    break
                count += head.count(b"\n", 0, end)
                size += end
                read(end)
            yield (JUNK_RUN, count, size) if count > 1 else line
        elif len(line) <= limit:
            yield line  # the last line, without a newline
        else:
            digest = hashlib.sha256(line)
            tail, length, newline = line[-TAIL_BYTES:], len(line), False
            while more := readline(1 << 20):
                if more.endswith(b"\n"):
                    more, newline = more[:-1], True
                digest.update(more)
                length += len(more)
                tail = (tail + more)[-TAIL_BYTES:]
                if newline:
                    break
            yield LONG, length, digest.hexdigest(), tail, newline


def chain_fields(line: bytes) -> tuple[int, str, dict | None] | None:
    """(seq, prev, parsed record or None) of a chained record; None if it is not one."""
    match = TAIL.search(line[-TAIL_BYTES:])
    if match:
        return int(match.group(1)), match.group(2).decode(), None
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict):
        return None
    seq, prev = rec.get("seq"), rec.get("prev")
    if type(seq) is int and isinstance(prev, str):
        return seq, prev, rec
    return None
