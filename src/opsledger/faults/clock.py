"""SLA clock arithmetic: counted time between two instants, and when a target runs out.

A clock counts either every second (24x7) or only business hours — the calendar's days and
hours in its own time zone, holidays excluded — and never the intervals it is paused (an
incident waiting on the customer, where sla.yml allows it). Business hours are laid out day by
day in the calendar's zone and converted to UTC before any arithmetic, so a daylight-saving
change or a clock read in another zone cannot shift a deadline (subtracting two aware times
that share a tzinfo would ignore the offset change).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from opsledger.faults.policy import Calendar

Interval = tuple[dt.datetime, dt.datetime | None]  # end None: still running (a pause not over)
_HORIZON_DAYS = 366 * 20  # a calendar with no working day would otherwise never end


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone")
    return moment.astimezone(dt.UTC)


def business_windows(
    calendar: Calendar, since: dt.datetime
) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """The calendar's open hours from the day `since` falls on, as UTC intervals, in order."""
    day = _utc(since).astimezone(calendar.zone).date()
    for _ in range(_HORIZON_DAYS):
        if day.weekday() in calendar.days and day not in calendar.holidays:
            opens = _local(day, calendar.start_minute, calendar).astimezone(dt.UTC)
            closes = _local(day, calendar.end_minute, calendar).astimezone(dt.UTC)
            if closes > opens:
                yield opens, closes
        day += dt.timedelta(days=1)


def _local(day: dt.date, minute: int, calendar: Calendar) -> dt.datetime:
    """Wall-clock minute of a day in the calendar's zone (1440 = the next midnight)."""
    if minute >= 1440:
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=calendar.zone)
    return dt.datetime.combine(day, dt.time(minute // 60, minute % 60), tzinfo=calendar.zone)


def _merged(pauses: list[Interval]) -> list[tuple[dt.datetime, dt.datetime | None]]:
    spans = sorted(((_utc(a), _utc(b) if b else None) for a, b in pauses), key=lambda p: p[0])
    merged: list[tuple[dt.datetime, dt.datetime | None]] = []
    for start, end in spans:
        if merged:
            last_start, last_end = merged[-1]
            if last_end is None:
                break
            if start <= last_end:
                merged[-1] = (last_start, None if end is None else max(last_end, end))
                continue
        merged.append((start, end))
    return merged


def _running(
    start: dt.datetime, calendar: Calendar | None, pauses: list[Interval]
) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """The intervals from `start` on in which the clock runs: open hours minus pauses."""
    start = _utc(start)
    if calendar is None:
        windows: Iterator[tuple[dt.datetime, dt.datetime]] = iter(
            [(start, dt.datetime.max.replace(tzinfo=dt.UTC))]
        )
    else:
        windows = business_windows(calendar, start)
    stops = _merged(pauses)
    for opens, closes in windows:
        opens = max(opens, start)
        if closes <= opens:
            continue
        pieces = [(opens, closes)]
        for pause_start, pause_end in stops:
            cut = []
            for a, b in pieces:
                if (pause_end is not None and pause_end <= a) or pause_start >= b:
                    cut.append((a, b))
                    continue
                if pause_start > a:
                    cut.append((a, pause_start))
                if pause_end is not None and pause_end < b:
                    cut.append((pause_end, b))
            pieces = cut
        yield from pieces
        if stops and stops[-1][1] is None and closes >= stops[-1][0]:
            return  # paused until further notice: nothing runs after this


def elapsed(
    start: dt.datetime,
    end: dt.datetime,
    *,
    calendar: Calendar | None = None,
    pauses: list[Interval] | None = None,
) -> dt.timedelta:
    """Counted time between start and end (zero when end is not after start).

    Example:
        elapsed(friday_17h, monday_09h, calendar=office_hours)  # 2 h (Fri 17-18, Mon 8-9)
    """
    end = _utc(end)
    total = dt.timedelta()
    for a, b in _running(start, calendar, pauses or []):
        if a >= end:
            break
        total += min(b, end) - a
    return total


def deadline(
    start: dt.datetime,
    target: dt.timedelta,
    *,
    calendar: Calendar | None = None,
    pauses: list[Interval] | None = None,
) -> dt.datetime | None:
    """The instant the clock reaches `target`; None while a pause without end stops it first.

    Example:
        deadline(friday_17h, timedelta(hours=2), calendar=office_hours)  # Monday 09:00
    """
    left = target
    for a, b in _running(start, calendar, pauses or []):
        if b - a >= left:
            return a + left
        left -= b - a
    return None


@dataclass(frozen=True)
class Clock:
    """One SLA clock of one incident: its target, when it is due, when (if) it stopped."""

    name: str  # response | resolution
    target: dt.timedelta
    started: dt.datetime
    due: dt.datetime | None  # None: paused before reaching the target
    stopped: dt.datetime | None  # when it was met (acknowledged / resolved), or None
    used: dt.timedelta  # counted time so far (until stopped, or now)
    paused: bool
    # when it reaches the near-breach share of its target (None: paused first, or not asked):
    # the one instant a near-breach warning belongs to, so a scheduled run tells it once
    near_due: dt.datetime | None = None

    @property
    def share(self) -> float:
        """How much of the target is used: 1.0 = due now."""
        return self.used / self.target if self.target else 1.0

    @property
    def breached(self) -> bool:
        return self.used > self.target

    def state(self, near: float) -> str:
        """met | breached | paused | near_breach | running."""
        if self.breached:
            return "breached"
        if self.stopped is not None:
            return "met"
        if self.paused:
            return "paused"
        return "near_breach" if self.share >= near else "running"


def measure(
    name: str,
    *,
    target: dt.timedelta,
    started: dt.datetime,
    stopped: dt.datetime | None,
    now: dt.datetime,
    calendar: Calendar | None,
    pauses: list[Interval],
    near: float | None = None,
) -> Clock:
    """A clock's state at `now` (or at the moment it stopped).

    `near` (a share of the target, sla.yml's near_breach_percent) also gives the instant the
    clock reaches it, counted like the deadline (business hours, pauses).
    """
    until = stopped if stopped is not None else now
    open_pause = any(end is None for _, end in pauses)
    near_due = None
    if near is not None:
        near_due = deadline(started, near * target, calendar=calendar, pauses=pauses)
    return Clock(
        name,
        target,
        _utc(started),
        deadline(started, target, calendar=calendar, pauses=pauses),
        _utc(stopped) if stopped else None,
        elapsed(started, until, calendar=calendar, pauses=pauses),
        open_pause and stopped is None,
        near_due,
    )
