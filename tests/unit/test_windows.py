"""Maintenance windows as intervals: overnight windows, adjacent windows, gaps, DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from opsledger.policy import Window
from opsledger.windows import covered

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
