"""Time windows: `DAYS HH:MM-HH:MM`, read on the wall clock of the policy's zone.

A window includes its start and excludes its end; `24:00` ends a day; a
window that ends before it starts crosses midnight and belongs to its
starting day (`fri 22:00-02:00` is open Friday night into Saturday).
Wall-clock reading means a window follows daylight-saving changes: a lunch
window is 12:00-13:00 local time in summer and in winter.  A start in an
hour the clock skips opens the window when the clock jumps past it; in an
hour the clock repeats, the wall clock shows a start twice, and a window
that the clock went back out of opens again.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Iterable

from accessgate.policy.model import Window

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_INDEX = {name: i for i, name in enumerate(DAY_NAMES)}
_WINDOW = re.compile(
    r"\s*(?P<days>[a-z,\-\s]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*\Z"
)


def parse_window(text: str) -> Window:
    """Parse `mon-fri 12:00-13:00`; ValueError says what is wrong and what is meant."""
    if not isinstance(text, str):
        raise ValueError(f"a window is text like 'mon-fri 12:00-13:00', not {text!r}")
    match = _WINDOW.match(text.lower())
    if match is None:
        raise ValueError(
            f"window {text!r} is not of the form 'DAYS HH:MM-HH:MM' "
            "(for example 'mon-fri 12:00-13:00' or 'sat,sun 10:00-18:00')"
        )
    days = _parse_days(match["days"], text)
    start = _parse_time(match["start"], text, may_be_24=False)
    assert start is not None  # only an end may be 24:00 (None)
    end = _parse_time(match["end"], text, may_be_24=True)
    if end is not None and end == start:
        raise ValueError(
            f"window {text!r} starts and ends at the same time, so it is never open; "
            "use 00:00-24:00 for a whole day"
        )
    return Window(days=days, start=start, end=end, text=text.strip())


def _parse_days(spec: str, text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        for name in (first, last) if last else (first,):
            if name not in _DAY_INDEX:
                raise ValueError(
                    f"window {text!r} names an unknown day {name!r}; "
                    "days are mon, tue, wed, thu, fri, sat, sun"
                )
        if last:
            i, j = _DAY_INDEX[first], _DAY_INDEX[last]
            # A range may wrap the week: fri-mon is fri, sat, sun, mon.
            days.update((i + k) % 7 for k in range((j - i) % 7 + 1))
        else:
            days.add(_DAY_INDEX[first])
    return frozenset(days)


def _parse_time(spec: str, text: str, *, may_be_24: bool) -> time | None:
    hours, minutes = (int(x) for x in spec.split(":"))
    if may_be_24 and hours == 24 and minutes == 0:
        return None
    if hours > 23 or minutes > 59:
        where = "end" if may_be_24 else "start"
        hint = " (24:00 may only end a window)" if hours == 24 else ""
        raise ValueError(f"window {text!r} has an impossible {where} time {spec!r}{hint}")
    return time(hours, minutes)


def in_window(window: Window, local: datetime) -> bool:
    """Whether the local wall-clock time `local` is inside `window`."""
    day = local.weekday()
    now = local.time().replace(tzinfo=None, fold=0)
    if window.end is None:
        return day in window.days and now >= window.start
    if window.end > window.start:
        return day in window.days and window.start <= now < window.end
    # Crosses midnight: the evening part on its day, the morning part on the next.
    return (day in window.days and now >= window.start) or (
        (day - 1) % 7 in window.days and now < window.end
    )


def in_any_window(windows: Iterable[Window], local: datetime) -> bool:
    return any(in_window(w, local) for w in windows)


def next_window_start(windows: Iterable[Window], after: datetime, tz: tzinfo) -> datetime | None:
    """The first moment strictly after `after` (aware) at which one of `windows` opens, in `tz`."""
    local = after.astimezone(tz)
    after_ts = after.timestamp()  # instants compare as instants, never as wall clocks
    best: datetime | None = None
    best_ts = 0.0
    windows = tuple(windows)
    for offset in range(8):
        day: date = local.date() + timedelta(days=offset)
        for window in windows:
            if day.weekday() not in window.days:
                continue
            for start in wall_clock_instants(day, window.start, tz):
                ts = start.timestamp()
                # A window wholly inside a skipped hour never shows on the clock that day.
                if ts > after_ts and (best is None or ts < best_ts) and in_window(window, start):
                    best, best_ts = start, ts
        if best is not None:
            return best
    return best


def start_of_next_day(after: datetime, tz: tzinfo) -> datetime:
    """Local midnight after `after`: when daily quotas start again."""
    local = after.astimezone(tz)
    return wall_clock_instants(local.date() + timedelta(days=1), time(0, 0), tz)[0]


def wall_clock_instants(day: date, at: time, tz: tzinfo) -> tuple[datetime, ...]:
    """The moments at which the clock of `tz` shows `at` on `day`, in `tz`.

    One as a rule; two, in order, when the clock goes back over `at`; and
    when it jumps over `at`, the moment of the jump.
    """
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=tz)  # fold 0: the earlier of two, or the offset before a jump
    second = first.replace(fold=1)
    if _wall(first, tz) == naive:
        return (first, second) if second.utcoffset() != first.utcoffset() else (first,)
    # Skipped: read with the offset after the jump it is an instant before it,
    # with the offset before the jump one after it; the jump lies between.
    low, high = int(second.timestamp()), int(first.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if _wall(datetime.fromtimestamp(middle, timezone.utc), tz) >= naive:
            high = middle
        else:
            low = middle
    return (datetime.fromtimestamp(high, tz),)


def _wall(moment: datetime, tz: tzinfo) -> datetime:
    """What the clock of `tz` shows at `moment`, as a naive datetime."""
    return moment.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None)
