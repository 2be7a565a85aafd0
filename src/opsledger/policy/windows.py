"""Recurring maintenance windows as concrete intervals, so a change may cross midnight.

Operations work at night: a window may run past midnight (`start: "22:00", end: "02:00"` opens
on each listed day and closes the next morning), and two windows that touch (Fri 22:00-24:00,
Sat 00:00-02:00) cover a change running across both without a gap. A change window therefore
fits when it lies inside the union of the windows' occurrences, not inside one calendar day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from opsledger.policy.bundle import Freeze, Window

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def overnight(window: Window) -> bool:
    """Whether the window closes on the day after it opens (end earlier than start)."""
    return window.end != "24:00" and window.end < window.start


def occurrences(window: Window, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """Every (open, close) of the window that can touch [start, end], as aware datetimes.

    Days are counted in the window's own timezone, from the day before `start` (an overnight
    window opened then may still be open) to the day of `end`.
    """
    zone = ZoneInfo(window.timezone)
    first = start.astimezone(zone).date() - dt.timedelta(days=1)
    last = end.astimezone(zone).date()
    found = []
    day = first
    while day <= last:
        if DAY_NAMES[day.weekday()] in window.days:
            open_at = dt.datetime.combine(day, dt.time.fromisoformat(window.start), zone)
            if window.end == "24:00":
                close_day, close_time = day + dt.timedelta(days=1), dt.time(0)
            else:
                close_day = day + dt.timedelta(days=1) if overnight(window) else day
                close_time = dt.time.fromisoformat(window.end)
            found.append((open_at, dt.datetime.combine(close_day, close_time, zone)))
        day += dt.timedelta(days=1)
    return found


def covered(windows: Iterable[Window], start: dt.datetime, end: dt.datetime) -> bool:
    """Whether [start, end] lies inside the union of the windows' occurrences, gaps excluded.

    Example:
        covered(policies.windows["production"], change.window_start, change.window_end)
    """
    # In UTC: Python compares datetimes sharing a tzinfo by wall clock, wrong across DST.
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    spans = [
        (o.astimezone(dt.UTC), c.astimezone(dt.UTC))
        for w in windows
        for o, c in occurrences(w, start, end)
    ]
    reached = start  # everything from start up to here is inside some window
    for open_at, close_at in sorted(spans):
        if close_at <= reached:
            continue
        if open_at > reached:
            return False  # spans come by opening time: nothing later closes this gap
        reached = close_at
        if reached >= end:
            return True
    return False


def next_fit(
    windows: Iterable[Window], after: dt.datetime, length: dt.timedelta, days: int = 62
) -> dt.datetime | None:
    """The earliest start at or after `after` where a window of `length` is covered, or None.

    A fitting start is `after` itself or the opening of some occurrence (nothing in between
    can fit where neither does): the fix `change new` offers and the "next window" hint.

    Example:
        next_fit(policies.windows["production"], now, timedelta(hours=2))
    """
    windows = list(windows)
    after = after.astimezone(dt.UTC).replace(microsecond=0)
    if covered(windows, after, after + length):
        return after
    horizon = after + dt.timedelta(days=days)
    openings = sorted(
        o.astimezone(dt.UTC) for w in windows for o, _ in occurrences(w, after, horizon)
    )
    for opening in openings:
        if opening >= after and covered(windows, opening, opening + length):
            return opening
    return None


def shown_opening(windows: Iterable[Window], moment: dt.datetime) -> str:
    """A window opening as people say it: "Tue 20:00 Europe/Berlin" (in the window's zone).

    A moment that opens no window (a start inside one) is said the same way, in the zone of
    the environment's windows: never in UTC alone.
    """
    windows = list(windows)
    for window in windows:
        zone = ZoneInfo(window.timezone)
        local = moment.astimezone(zone)
        if local.strftime("%H:%M") == window.start and DAY_NAMES[local.weekday()] in window.days:
            return f"{local.strftime('%a %H:%M')} {window.timezone}"
    local = moment.astimezone(zone_of(windows))
    return f"{local:%a %Y-%m-%d %H:%M} {zone_name(windows)}"


def zone_name(windows: Iterable[Window]) -> str:
    """The timezone an environment's windows are written in ("UTC" when it has none)."""
    return next((w.timezone for w in windows), "UTC")


def zone_of(windows: Iterable[Window]) -> dt.tzinfo:
    """The zone an environment's people read times in: that of its maintenance windows."""
    name = zone_name(windows)
    return dt.UTC if name == "UTC" else ZoneInfo(name)


def shown_time(windows: Iterable[Window], moment: dt.datetime) -> str:
    """A moment in the environment's own zone, ISO and as people say it.

    Example:
        shown_time(policies.windows["production"], change.window_end)
        # '2026-12-01T23:00:00+01:00 (Tue 23:00 Europe/Berlin)'
    """
    windows = list(windows)
    local = moment.astimezone(zone_of(windows))
    return f"{local.isoformat()} ({local:%a %H:%M} {zone_name(windows)})"


def freezes_over(
    freezes: Iterable[Freeze], environment: str, start: dt.datetime, end: dt.datetime
) -> list[Freeze]:
    """The freezes of `environment` that overlap [start, end]: the one freeze rule.

    `decide` (at apply time), `apply --pending` (a change that can never run) and `change new`
    (refused where it is typed) all ask this, so they cannot disagree.

    Example:
        freezes_over(policies.freezes, "production", change.window_start, change.window_end)
    """
    return [f for f in freezes if environment in f.environments and start < f.end and f.start < end]


def next_allowed(
    windows: Iterable[Window],
    freezes: Iterable[Freeze],
    environment: str,
    after: dt.datetime,
    length: dt.timedelta,
    *,
    bypass_windows: bool = False,
    bypass_freezes: bool = False,
) -> dt.datetime | None:
    """The earliest start at or after `after` inside the windows and outside every freeze.

    Example:
        next_allowed(policies.windows["production"], policies.freezes, "production", now,
                     timedelta(hours=2))
    """
    windows, freezes = list(windows), list(freezes)
    moment: dt.datetime | None = after.astimezone(dt.UTC).replace(microsecond=0)
    for _ in range(len(freezes) + 1):
        assert moment is not None
        if not bypass_windows:
            moment = next_fit(windows, moment, length) if windows else None
            if moment is None:
                return None
        hit = [] if bypass_freezes else freezes_over(freezes, environment, moment, moment + length)
        if not hit:
            return moment
        moment = max(f.end for f in hit).astimezone(dt.UTC)
    return None
