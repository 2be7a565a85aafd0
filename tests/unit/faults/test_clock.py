"""SLA clock arithmetic: business hours across weekends, holidays, time zones and daylight
saving; pauses; and properties that must hold for any start, target and pause."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.faults.clock import deadline, elapsed, measure
from opsledger.faults.policy import Calendar

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
OFFICE = Calendar(BERLIN, frozenset(range(5)), 8 * 60, 18 * 60, frozenset({dt.date(2026, 12, 24)}))
H = dt.timedelta(hours=1)


def berlin(*args):
    return dt.datetime(*args, tzinfo=BERLIN)


def test_24x7_counts_every_second():
    start = dt.datetime(2026, 12, 5, 23, 30, tzinfo=dt.UTC)  # a Saturday night
    assert elapsed(start, start + 3 * H) == 3 * H
    assert deadline(start, 4 * H) == start + 4 * H


def test_business_hours_skip_the_night_and_the_weekend():
    friday_17 = berlin(2026, 11, 27, 17)
    monday_9 = berlin(2026, 11, 30, 9)
    assert elapsed(friday_17, monday_9, calendar=OFFICE) == 2 * H  # Fri 17-18, Mon 8-9
    assert deadline(friday_17, 2 * H, calendar=OFFICE) == monday_9
    # opened on Sunday: the clock starts Monday at 08:00
    assert deadline(berlin(2026, 11, 29, 12), 30 * dt.timedelta(minutes=1), calendar=OFFICE) == (
        berlin(2026, 11, 30, 8, 30)
    )


def test_holidays_do_not_count():
    wednesday_17 = berlin(2026, 12, 23, 17)  # Thursday the 24th is a holiday
    assert deadline(wednesday_17, 2 * H, calendar=OFFICE) == berlin(2026, 12, 25, 9)


def test_time_zones_of_the_instants_do_not_matter():
    # the same instants written in New York time give the same answers as in Berlin time
    start = berlin(2026, 11, 27, 17).astimezone(NEW_YORK)
    end = berlin(2026, 11, 30, 9).astimezone(NEW_YORK)
    assert elapsed(start, end, calendar=OFFICE) == 2 * H
    assert deadline(start, 2 * H, calendar=OFFICE) == berlin(2026, 11, 30, 9)


def test_daylight_saving_change_keeps_wall_clock_business_hours():
    # Berlin moves to summer time on Sunday 2026-03-29: Monday 08:00 is 06:00 UTC, not 07:00
    friday_17 = berlin(2026, 3, 27, 17)
    due = deadline(friday_17, 2 * H, calendar=OFFICE)
    assert due == berlin(2026, 3, 30, 9)
    assert due.astimezone(dt.UTC) == dt.datetime(2026, 3, 30, 7, tzinfo=dt.UTC)
    # 24x7 across the change counts real time: Saturday 12:00 to Monday 12:00 is 47 h
    assert elapsed(berlin(2026, 3, 28, 12), berlin(2026, 3, 30, 12)) == 47 * H


def test_pauses_stop_the_clock_and_an_open_pause_stops_the_deadline():
    start = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    paused = [(start + H, start + 3 * H)]
    assert elapsed(start, start + 5 * H, pauses=paused) == 3 * H
    assert deadline(start, 2 * H, pauses=paused) == start + 4 * H
    waiting = [(start + H, None)]  # still waiting on the customer
    assert elapsed(start, start + 10 * H, pauses=waiting) == H
    assert deadline(start, 2 * H, pauses=waiting) is None
    # business hours and a pause together: Monday 10:00 + 3 h, paused 11:00-16:00 -> 15:00 + 2h
    monday_10 = berlin(2026, 11, 30, 10)
    due = deadline(monday_10, 3 * H, calendar=OFFICE, pauses=[(monday_10 + H, monday_10 + 6 * H)])
    assert due == berlin(2026, 11, 30, 18)


def test_a_clock_reports_met_breached_and_near_breach():
    start = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)

    def clock(stopped=None, now=None):
        return measure(
            "response",
            target=H,
            started=start,
            stopped=stopped,
            now=now or start,
            calendar=None,
            pauses=[],
        )

    assert clock(stopped=start + 0.5 * H).state(0.75) == "met"
    assert clock(stopped=start + 2 * H).state(0.75) == "breached"
    assert clock(now=start + 0.8 * H).state(0.75) == "near_breach"
    assert clock(now=start + 0.5 * H).state(0.75) == "running"


# --- properties ------------------------------------------------------------------------------

ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
MOMENTS = st.builds(
    lambda minutes, zone: (
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)
    ).astimezone(ZoneInfo(zone)),
    st.integers(0, 2 * 365 * 24 * 60),
    ZONES,
)
CALENDARS = st.one_of(
    st.none(),
    st.builds(
        lambda zone, days, start, length: Calendar(
            ZoneInfo(zone), frozenset(days), start, min(1440, start + length), frozenset()
        ),
        ZONES,
        st.sets(st.integers(0, 6), min_size=1),
        st.integers(0, 23 * 60),
        st.integers(30, 24 * 60),
    ),
)
SPANS = st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=20))


def later(moment, delta):
    """moment + delta of real time (aware + timedelta in a zone adds wall-clock time)."""
    return (moment.astimezone(dt.UTC) + delta).astimezone(moment.tzinfo)


@settings(max_examples=150, deadline=None)
@given(start=MOMENTS, a=SPANS, b=SPANS, calendar=CALENDARS)
def test_counted_time_adds_up_and_never_exceeds_wall_time(start, a, b, calendar):
    middle, end = later(start, a), later(start, a + b)
    whole = elapsed(start, end, calendar=calendar)
    assert whole == elapsed(start, middle, calendar=calendar) + elapsed(
        middle, end, calendar=calendar
    )
    assert dt.timedelta(0) <= whole <= a + b


@settings(max_examples=150, deadline=None)
@given(start=MOMENTS, target=SPANS, calendar=CALENDARS, pause_at=SPANS, pause_for=SPANS)
def test_the_deadline_is_exactly_where_the_target_is_used(
    start, target, calendar, pause_at, pause_for
):
    pauses = [(later(start, pause_at), later(start, pause_at + pause_for))]
    due = deadline(start, target, calendar=calendar, pauses=pauses)
    assert due is not None
    assert elapsed(start, due, calendar=calendar, pauses=pauses) == target
    # a second earlier the target was not reached yet (when there is a target at all)
    if target:
        before = due - dt.timedelta(seconds=1)
        assert elapsed(start, before, calendar=calendar, pauses=pauses) < target
    # pausing can only push a deadline later, never earlier
    assert due >= deadline(start, target, calendar=calendar)


@settings(max_examples=100, deadline=None)
@given(start=MOMENTS, span=SPANS)
def test_business_hours_are_never_counted_on_closed_days(start, span):
    weekends = Calendar(ZoneInfo("Europe/Berlin"), frozenset({5, 6}), 0, 1440, frozenset())
    weekdays = Calendar(ZoneInfo("Europe/Berlin"), frozenset(range(5)), 0, 1440, frozenset())
    end = later(start, span)
    # every instant is either on a weekday or a weekend day of Berlin: the two add up to it all
    assert elapsed(start, end, calendar=weekends) + elapsed(start, end, calendar=weekdays) == span
