"""Windows, from a table (cases/windows.yaml): edges, midnight, DST, errors."""

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from accessgate.policy.windows import in_window, next_window_start, parse_window, start_of_next_day

BERLIN = ZoneInfo("Europe/Berlin")
CASES = yaml.safe_load((Path(__file__).parent / "cases" / "windows.yaml").read_text("utf-8"))
VALID = [c for c in CASES if "error" not in c]
INVALID = [c for c in CASES if "error" in c]


def local(text: str) -> datetime:
    """Berlin time: wall-clock text, or an instant given with its offset (for the hour DST repeats)."""
    moment = datetime.fromisoformat(text)
    return moment.astimezone(BERLIN) if moment.tzinfo else moment.replace(tzinfo=BERLIN)


@pytest.mark.parametrize("case", VALID, ids=[c["id"] for c in VALID])
def test_window(case):
    window = parse_window(case["window"])
    for t in case["inside"]:
        assert in_window(window, local(t)), f"{t} should be inside {case['window']}"
    for t in case["outside"]:
        assert not in_window(window, local(t)), f"{t} should be outside {case['window']}"


@pytest.mark.parametrize("case", INVALID, ids=[c["id"] for c in INVALID])
def test_invalid_window(case):
    with pytest.raises(ValueError, match=case["error"]):
        parse_window(case["window"])


@pytest.mark.parametrize(
    "window, now, expected",
    [
        ("mon-fri 12:00-13:00", "2026-11-23T09:00", "2026-11-23T12:00"),
        ("mon-fri 12:00-13:00", "2026-11-23T13:00", "2026-11-24T12:00"),
        ("mon-fri 12:00-13:00", "2026-11-27T14:00", "2026-11-30T12:00"),
        ("sat 09:00-10:00", "2026-11-28T09:30", "2026-12-05T09:00"),
        # Across the autumn DST change the next lunch is still 12:00 local.
        ("mon-fri 12:00-13:00", "2026-10-23T13:30", "2026-10-26T12:00"),
        # 2026-03-29: 02:00 CET jumps to 03:00 CEST.  2026-10-25: 03:00 CEST goes back to 02:00 CET.
        ("sun 02:30-04:00", "2026-03-29T01:59:00+01:00", "2026-03-29T03:00:00+02:00"),
        ("sun 02:15-02:45", "2026-03-29T01:30:00+01:00", "2026-04-05T02:15:00+02:00"),
        ("sun 02:30-03:30", "2026-10-25T01:00:00+02:00", "2026-10-25T02:30:00+02:00"),
        ("sun 02:30-03:30", "2026-10-25T02:10:00+01:00", "2026-10-25T02:30:00+01:00"),
    ],
    ids=[
        "later-today",
        "tomorrow-after-todays-window",
        "skips-the-weekend",
        "next-week-when-only-day-is-today-and-started",
        "after-dst-change-still-local-noon",
        "start-in-skipped-hour-opens-when-the-clock-jumps",
        "window-inside-skipped-hour-opens-next-week",
        "start-in-repeated-hour-first-pass",
        "start-in-repeated-hour-second-pass-after-clock-went-back",
    ],
)
def test_next_window_start(window, now, expected):
    opening = next_window_start([parse_window(window)], local(now), BERLIN)
    assert opening == local(expected)
    assert opening.utcoffset() == local(expected).utcoffset()


def test_next_window_start_compares_real_instants():
    # 11:30 UTC on a winter Monday is 12:30 in Berlin: inside, so the next
    # start is Tuesday's.
    now = datetime(2026, 11, 23, 11, 30, tzinfo=timezone.utc)
    opening = next_window_start([parse_window("mon-fri 12:00-13:00")], now, BERLIN)
    assert opening == local("2026-11-24T12:00")


@pytest.mark.parametrize(
    "zone, after, expected",
    [
        ("Europe/Berlin", "2026-03-28T20:00:00+01:00", "2026-03-29T00:00:00+01:00"),
        # Chile skips midnight: on 2026-09-06 the clock jumps from 00:00 to 01:00.
        ("America/Santiago", "2026-09-05T20:00:00-04:00", "2026-09-06T01:00:00-03:00"),
    ],
    ids=["ordinary-midnight", "skipped-midnight-is-the-jump"],
)
def test_start_of_next_day(zone, after, expected):
    opening = start_of_next_day(datetime.fromisoformat(after), ZoneInfo(zone))
    assert opening == datetime.fromisoformat(expected)
    assert opening.utcoffset() == datetime.fromisoformat(expected).utcoffset()
