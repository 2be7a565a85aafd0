"""Maintenance windows as intervals: overnight windows, adjacent windows, gaps, DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.policy.bundle import Window
from opsledger.policy.windows import covered

BERLIN = ZoneInfo("Europe/Berlin")


def at(day, hour, minute=0):
    return dt.datetime(2026, 12, day, hour, minute, tzinfo=BERLIN)  # Dec 4 2026 is a Friday


def window(days, start, end, zone="Europe/Berlin"):
    return Window(tuple(days), start, end, zone)


@pytest.mark.parametrize(
    ("windows", "start", "end", "fits"),
    [
        # one window across midnight, opening on Friday
        ([window(["fri"], "22:00", "02:00")], at(4, 23), at(5, 0, 30), True),
        ([window(["fri"], "22:00", "02:00")], at(5, 1), at(5, 1, 30), True),  # Saturday 01:00
        ([window(["fri"], "22:00", "02:00")], at(5, 1, 30), at(5, 2, 30), False),
        ([window(["sat"], "22:00", "02:00")], at(4, 23), at(5, 0, 30), False),  # opens Saturday
        # two windows that touch at midnight cover a change across both
        (
            [window(["fri"], "22:00", "24:00"), window(["sat"], "00:00", "02:00")],
            at(4, 23),
            at(5, 0, 30),
            True,
        ),
        # a gap between two windows is not covered
        (
            [window(["fri"], "22:00", "23:30"), window(["sat"], "00:00", "02:00")],
            at(4, 23),
            at(5, 0, 30),
            False,
        ),
        # a window every day covers a change of several days without a gap
        (
            [window(["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "00:00", "24:00", "UTC")],
            at(4, 10),
            at(7, 10),
            True,
        ),
        # an ordinary evening window, as before
        ([window(["tue"], "20:00", "23:30")], at(1, 20, 30), at(1, 22), True),
        ([window(["tue"], "20:00", "23:30")], at(1, 23), at(2, 0, 30), False),
    ],
)
def test_covered(windows, start, end, fits):
    assert covered(windows, start, end) is fits


def test_overnight_window_across_a_dst_change():
    """Berlin leaves summer time on Sun 2026-10-25 at 03:00: the night is an hour longer."""
    night = window(["sat"], "22:00", "04:00")
    start = dt.datetime(2026, 10, 24, 22, 30, tzinfo=BERLIN).astimezone(dt.UTC)
    # open 22:00 CEST to 04:00 CET: 7 hours, not 6
    assert covered([night], start, start + dt.timedelta(hours=6, minutes=30))
    assert not covered([night], start, start + dt.timedelta(hours=6, minutes=31))


def test_windows_in_another_timezone_than_the_change():
    utc = window(["fri"], "21:00", "01:00", "UTC")  # 22:00-02:00 Berlin in winter
    assert covered([utc], at(4, 22, 30), at(5, 1, 45))
    assert not covered([utc], at(4, 21, 30), at(4, 23))


# Property: `covered` agrees with a reading of the policy one quarter hour at a time. The
# oracle asks, for each instant, whether a window is open at that local wall-clock time: on
# a listed day from its start (until its end, or until midnight when it runs overnight), or,
# for an overnight window, before its end on the morning after a listed day. Dates stay in
# summer and zones keep whole quarter hours, so every boundary lies on the quarter-hour grid.

QUARTER = dt.timedelta(minutes=15)
ZONES = ("UTC", "Europe/Berlin", "Asia/Kolkata", "America/New_York")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _clock(quarters: int) -> str:
    return "24:00" if quarters == 96 else f"{quarters // 4:02d}:{quarters % 4 * 15:02d}"


@st.composite
def _windows(draw):
    found = []
    for _ in range(draw(st.integers(1, 3))):
        days = draw(st.sets(st.sampled_from(DAYS), min_size=1))
        start = draw(st.integers(0, 95))
        end = draw(st.integers(1, 96).filter(lambda e, s=start: e != s))
        found.append(
            window(
                sorted(days, key=DAYS.index),
                _clock(start),
                _clock(end),
                draw(st.sampled_from(ZONES)),
            )
        )
    return found


def _open_at(windows, instant: dt.datetime) -> bool:
    for w in windows:
        local = instant.astimezone(ZoneInfo(w.timezone))
        today = DAYS[local.weekday()] in w.days
        yesterday = DAYS[(local.weekday() - 1) % 7] in w.days
        now = local.strftime("%H:%M")
        if w.end == "24:00" or w.end > w.start:  # closes the day it opens
            if today and w.start <= now and (w.end == "24:00" or now < w.end):
                return True
        elif (today and now >= w.start) or (yesterday and now < w.end):
            return True
    return False


@given(
    windows=_windows(),
    start=st.integers(0, 4 * 24 * 21),  # quarter hours after 2026-06-01 00:00 UTC
    length=st.integers(1, 4 * 24 * 3),
)
def test_covered_is_every_quarter_hour_inside_a_window(windows, start, length):
    first = dt.datetime(2026, 6, 1, tzinfo=dt.UTC) + start * QUARTER
    last = first + length * QUARTER
    expected = all(_open_at(windows, first + i * QUARTER) for i in range(length))
    assert covered(windows, first, last) is expected
    # the same change said in another zone is the same interval
    assert covered(windows, first.astimezone(BERLIN), last.astimezone(BERLIN)) is expected
