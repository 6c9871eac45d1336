""""Did you mean ...?": the nearest valid name for a misspelt one.

Bounded, since a policy may name thousands of sites: only names of about
the same length are compared, at most `LIMITS.suggestion_names` of them,
and only the first `LIMITS.suggestions` problems of a policy get a
suggestion at all (`nodes.Checker.suggest` counts them).
"""

from __future__ import annotations

import difflib
import heapq
from typing import Iterable
from zoneinfo import available_timezones

from accessgate.policy.limits import LIMITS, quoted


def closest(word: str, options: Iterable[str], intro: str) -> str:
    """'did you mean X?', else `intro` and the first few options."""
    options = options if isinstance(options, (list, tuple, dict, set, frozenset)) else list(options)
    if not options:
        return f"{intro} none defined"
    spread = max(3, len(word) // 3)
    near = [o for o in options if abs(len(o) - len(word)) <= spread][: LIMITS.suggestion_names]
    close = difflib.get_close_matches(word, near, n=1, cutoff=0.6)
    if close:
        return f"did you mean {quoted(close[0])}?"
    first = list(options[:13]) if isinstance(options, (list, tuple)) else heapq.nsmallest(13, options)
    shown = ", ".join(first[:12]) + (", ..." if len(first) > 12 else "")
    return f"{intro} {shown}"


def maybe(word: str, options: tuple[str, ...]) -> str:
    """'; did you mean X?' for a word close to one of a few fixed options, else ''."""
    close = difflib.get_close_matches(word[:64], options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def member_kind(kind: str) -> str | None:
    """The member kind ('user', 'group', 'net', 'all') closest to a misspelt `kind`, if any."""
    close = difflib.get_close_matches(kind, ("user", "group", "net", "all"), n=1, cutoff=0.5)
    return close[0] if close else None


_ZONE_NAMES: list[str] = []


def zone_names() -> list[str]:
    """Every IANA time zone name, sorted; read once."""
    if not _ZONE_NAMES:
        _ZONE_NAMES.extend(sorted(available_timezones()))
    return _ZONE_NAMES
