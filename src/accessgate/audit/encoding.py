"""One record as one line: key order, time text, JSON, escapes, the size bound, the chain.

Every line is valid UTF-8 JSON that every reader (the auditors' DuckDB
tools, jq, log shippers) reads the same: text that was not UTF-8 (lone
surrogates from mitmproxy's surrogateescape decoding) is written as visible
escapes and its field named in `escaped`, and no line is longer than
`MAX_RECORD_BYTES`: a larger record is written shortened, its cut fields
named in `truncated`.  Each line ends with `seq` and `prev` (sha256 of the
line before), which `Encoder` carries from one line to the next
(docs/audit-log.md), and, in a sealed log, with the seal that `seal` adds
(`accessgate.audit.sealing`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from datetime import date, datetime, timezone
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from itertools import combinations
from pathlib import Path
from typing import Callable

import orjson

from accessgate.audit.pseudonym import pseudonymize
from accessgate.audit.schema import ACCESS_ORDER, CHAIN_KEYS, MAX_RECORD_BYTES, SEAL_KEYS, SOMETIMES, ZERO_HASH

_ORDER_AFTER_EVENT = ACCESS_ORDER[1:]
# Key sequences already in that order: an access record, with and without each field it has only sometimes.
_IN_ORDER = frozenset(
    tuple(key for key in ACCESS_ORDER if key not in left_out)
    for n in range(len(SOMETIMES) + 1)
    for left_out in combinations(SOMETIMES, n)
)
_CHAIN_KEYS = frozenset(CHAIN_KEYS + SEAL_KEYS)  # the writer's to set: a caller's are left out


class Encoder:
    """Makes the lines of a chain: each `encode()` links to the line made before.

    `seq` and `prev` are where the chain stands (the writer sets them from
    the log when it opens it); `key` pseudonymizes `user` when given;
    `seal` (`Sealer.seal`) seals each line before it is hashed for the next.
    """

    __slots__ = ("seq", "prev", "_key", "_max_record", "_seal")

    def __init__(
        self,
        pseudonymize_key: bytes | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
        seal: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.seq = 0
        self.prev = ZERO_HASH
        self._key = pseudonymize_key
        # A seal adds about 60 bytes: a sealed line stays within the bound too.
        self._max_record = max_record_bytes - (_SEAL_ROOM if seal is not None else 0)
        self._seal = seal

    def encode(self, rec: dict) -> bytes:
        """The line of `rec` (a mapping of fields), newline included; the chain moves on by one."""
        keys = tuple(rec)
        if keys in _IN_ORDER and rec["event"]:
            out = rec  # the proxy's own records come in order; `rec` is write()'s copy or defer()'s own
        else:
            out = {"event": rec.get("event") or "access"}
            out |= {key: rec[key] for key in _ORDER_AFTER_EVENT if key in rec}
            if len(out) != len(rec) + ("event" not in rec):  # fields the order does not name
                for key, value in rec.items():
                    if key not in out and key not in _CHAIN_KEYS:
                        out[key] = value
        given = out.get("ts")
        out["ts"] = ts = _time_text(given)
        if ts is None:  # not a time: the tools could not place the record
            out["ts"] = format_ts(None)
            out["ts_given"] = _cut(_plain(given, False), 200)[0]
        if self._key is not None and isinstance(out.get("user"), str):
            out["user"] = _pseudonym(self._key, out["user"])
        out["seq"] = self.seq + 1
        out["prev"] = self.prev
        try:
            line = orjson.dumps(out, default=_json_default, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:  # lone surrogates, or what only the json module writes
            out = _readable(out)
            line = _dumps(out)
        if len(line) > self._max_record:
            line = _shortened(out, len(line), self._max_record)
        if self._seal is not None:
            line = self._seal(line)
        self.seq += 1
        self.prev = hashlib.sha256(line).hexdigest()
        return line + b"\n"


# -- the parts of a line ------------------------------------------------------------


def format_ts(value: object) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`: 2026-11-22T21:05:33.123Z.

    Accepts aware datetimes (naive ones are taken as UTC), epoch seconds, and
    RFC 3339 / ISO 8601 strings; a string that is none of these stays as given.
    """
    text = _time_text(value)
    if text is None:
        return value if isinstance(value, str) else str(value)
    return text


def _time_text(value: object) -> str | None:
    """format_ts's text, or None when `value` is no time (None: now)."""
    if type(value) is datetime and value.tzinfo is timezone.utc:  # the proxy's own
        if value.microsecond and value.year >= 1000:
            # orjson's text is cheaper than isoformat(timespec=...); the slice
            # keeps milliseconds, truncated as isoformat does.  It leaves out
            # a zero fraction, hence the test.
            return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:24].decode() + "Z"
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"
    if value is None:
        value = time.time()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, ValueError, OSError):
            return None
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    elif value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    # isoformat(), not strftime(), for speed; "+00:00" -> "Z".
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"


def _json_default(obj: object) -> object:
    if isinstance(obj, datetime):
        return format_ts(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (IPv4Address, IPv6Address, Path)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, bytes):  # bytes that are not UTF-8 are escaped as in text
        return obj.decode("utf-8", "surrogateescape")
    return str(obj)


# orjson writes the same compact JSON as the json module at a fraction of its
# cost; datetimes and dataclasses go through _json_default as with the json
# module.  It refuses lone surrogates (see _readable) and integers beyond 64
# bits; the json module writes those integers.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

# Built once: json.dumps() with options builds a new encoder on every call.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def _dumps(value: object) -> bytes:
    """Compact JSON of a value _readable() made: orjson, else the json module (big integers)."""
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _JSON_ENCODER.encode(value).encode("utf-8")


# -- text that was not UTF-8, and records over the size bound ---------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_TO_ESCAPE = re.compile(r"[\\" + "\ud800-\udfff]")  # a backslash, or a lone surrogate


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x5C:  # a backslash
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _escape(text: str) -> str:
    return _TO_ESCAPE.sub(_escape_char, text)


def _plain(value: object, escape: bool) -> object:
    """`value` as JSON types: text (escaped if `escape`), lists, objects with text keys,
    numbers (NaN and infinities as null, as orjson writes them), true, false, null."""
    if isinstance(value, str):
        return _escape(value) if escape else value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_plain(k if isinstance(k, str) else str(k), escape): _plain(v, escape) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, escape) for v in value]
    return _plain(_json_default(value), escape)


def has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(map(has_surrogate, value))
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    return False


def _readable(rec: dict) -> dict:
    """`rec` as valid UTF-8 JSON means it: lone surrogates (bytes that were not UTF-8)
    become visible escapes.

    In a field named in `escaped`, every text reads as Python's backslashreplace
    would show the bytes: a byte that is not UTF-8 as `\\xNN`, any other lone
    surrogate as `\\uNNNN`, and a backslash as two, so that no text is ambiguous.
    """
    out: dict = {}
    escaped: list[str] = []
    for key, value in rec.items():
        if key in _CHAIN_KEYS:
            continue
        plain = _plain(value, False)
        if has_surrogate(key) or has_surrogate(plain):
            key = _escape(key)
            plain = _plain(value, True)
            escaped.append(key)
        out[key] = plain
    if escaped:
        out["escaped"] = escaped
    out["seq"] = rec["seq"]
    out["prev"] = rec["prev"]
    return out


def _pseudonym(key: bytes, user: str) -> str:
    try:
        return pseudonymize(key, user)
    except UnicodeEncodeError:  # a name with bytes that were not UTF-8
        return pseudonymize(key, _escape(user))


def _cut(value: object, room: int) -> tuple[object, int]:
    """`value` (JSON types) shortened to about `room` bytes of JSON, and its length before:
    a list keeps its first items (items), a text its beginning (characters); anything
    else becomes the beginning of its JSON text (characters)."""
    if isinstance(value, list):
        kept: list = []
        used = 2
        for item in value:
            size = len(_dumps(item)) + 1
            if used + size > room:
                if isinstance(item, str) and room - used > 16:
                    kept.append(_cut(item, room - used - 1)[0])
                break
            kept.append(item)
            used += size
        return kept, len(value)
    text = value if isinstance(value, str) else _dumps(value).decode("utf-8")
    n = min(len(text), max(room - 2, 0))
    while n > 0:
        size = len(_dumps(text[:n]))
        if size <= room:
            break
        n = min(n - 1, n * room // size)
    return text[: max(n, 0)], len(text)


_MARK_ROOM = 512  # bytes kept free for `truncated` and the chain fields
_SEAL_ROOM = 128  # bytes kept free for a seal: `,"epoch":E,"mac":"…"`


def _shortened(rec: dict, size: int, limit: int) -> bytes:
    """The line of `rec` cut to at most `limit` bytes, the largest fields first.

    `truncated` maps each shortened field to its length before (see _cut).  If
    that is not enough (a record of countless small fields), only `event` and
    `ts` stay, and `truncated` says {"record": its size in bytes}.
    """
    body = {k: _plain(v, False) for k, v in rec.items() if k not in _CHAIN_KEYS}
    sizes = {k: len(_dumps(v)) for k, v in body.items()}
    over = size - limit + _MARK_ROOM + 32 * len(body)
    truncated: dict[str, int] = {}
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if over <= 0 or sizes[key] < 64:
            break
        if key in ("event", "ts"):
            continue
        body[key], truncated[key] = _cut(body[key], max(sizes[key] - over, 0))
        over -= sizes[key] - len(_dumps(body[key]))
    body["truncated"] = truncated
    body["seq"], body["prev"] = rec["seq"], rec["prev"]
    line = _dumps(body)
    if len(line) <= limit:
        return line
    event = rec.get("event")
    minimal = {
        "event": _cut(event, 64)[0] if isinstance(event, str) else "access",
        "ts": rec["ts"],
        "truncated": {"record": size},
        "seq": rec["seq"],
        "prev": rec["prev"],
    }
    return _dumps(minimal)
