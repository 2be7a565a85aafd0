"""The one syntax for times and durations on the command line (README, Conventions).

A time is ISO 8601 with a zone (`2026-12-24T18:00+01:00`, `...Z`), `now`, or a time relative
to now (`+2h`, `-30m`, `now+1d2h`). A duration is `90s`, `15m`, `2h`, `1d`, `2w` or a sum of
them in that order (`1h30m`), or ISO 8601's `PT1H30M`. Every option that takes a time or a
duration reads it here, so `--at`, `--since`, `--start`, `--due`, `--within` and `--wait` cannot
drift apart again. Policy files keep their own, documented formats: approvals bind their bytes.

A time without a zone is refused, never read as local or UTC: the same command must mean the
same instant on a laptop in Berlin and on a CI runner in UTC, and a window or a judgement an
hour off is the kind of mistake nobody sees until the change runs outside its window.
"""

from __future__ import annotations

import datetime as dt
import re

from opsledger.errors import OpsledgerError, Problem, shown

# Years a window or an option may name: far enough from datetime's limits that offsets never
# overflow; beyond them it is a typo.
YEARS = (1970, 9000)

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
# Up to 9 digits per part: enough for any real duration, never an overflow while parsing.
_SHORT = re.compile("".join(rf"(?:(?P<{u}>[0-9]{{1,9}}){u})?" for u, _ in _UNITS))
_ISO = re.compile(
    r"P(?:(?P<w>[0-9]{1,9})W)?(?:(?P<d>[0-9]{1,9})D)?"
    r"(?:T(?=[0-9])(?:(?P<h>[0-9]{1,9})H)?(?:(?P<m>[0-9]{1,9})M)?(?:(?P<s>[0-9]{1,9})S)?)?"
)
_LONGEST = (YEARS[1] - YEARS[0]) * 366 * 86400  # seconds: no duration outlasts the years
_RELATIVE = re.compile(r"(?:now)?(?P<sign>[+-])(?P<span>.+)|now")
DURATION_EXAMPLES = "90s, 15m, 2h, 1d, 1h30m or PT1H30M"
TIME_EXAMPLES = "2026-12-24T18:00+01:00, 2026-12-24T17:00Z, now, +2h or -30m"


def parse_duration(text: str, option: str) -> dt.timedelta:
    """A duration in whole seconds: `90s`, `15m`, `2h`, `1d`, `2w`, `1h30m` or `PT1H30M`.

    Units go from the largest to the smallest, each at most once, so one length has few
    spellings and `1m30m` is a typo, not 31 minutes. Months and years are refused: their
    length depends on the calendar. Bounds are the option's business (DurationType).

    Example:
        parse_duration("1h30m", "--duration")  # timedelta(seconds=5400)
    """
    match = None
    if isinstance(text, str) and text not in ("", "P", "PT"):
        match = _SHORT.fullmatch(text) or _ISO.fullmatch(text)
    if match is None:
        raise OpsledgerError(
            Problem(
                f"{shown(text, 40)} is not a duration",
                field=option,
                fix=f"write e.g. {DURATION_EXAMPLES}",
            )
        )
    seconds = sum(int(match.group(unit) or 0) * size for unit, size in _UNITS)
    if seconds > _LONGEST:
        raise OpsledgerError(
            Problem(
                f"{shown(text, 40)} is longer than {YEARS[1] - YEARS[0]} years",
                field=option,
                fix=f"write e.g. {DURATION_EXAMPLES}",
            )
        )
    return dt.timedelta(seconds=seconds)


def format_duration(length: dt.timedelta) -> str:
    """The shortest spelling parse_duration reads back as the same length (whole seconds).

    Example:
        format_duration(dt.timedelta(minutes=90))  # "1h30m"
    """
    left = int(length.total_seconds())
    if left < 0 or left != length.total_seconds():
        raise ValueError(f"{length!r} is not a whole, non-negative number of seconds")
    parts = []
    for unit, size in _UNITS[1:]:  # weeks read back, but days are what people count in
        amount, left = divmod(left, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def parse_time(text: str, option: str, now: dt.datetime | None = None) -> dt.datetime:
    """An instant: ISO 8601 with a zone, `now`, or now plus or minus a duration (`+2h`).

    `now` is `now` (default: this machine's clock, in UTC); relative times keep its zone.
    An empty value is refused rather than read as "not given" (often an unset shell variable:
    the default is not what was meant).

    Example:
        parse_time("2026-12-24T18:00+01:00", "--at")
        parse_time("-30m", "--since", now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    """
    if not isinstance(text, str) or not text.strip():
        raise OpsledgerError(
            Problem(
                "empty value",
                field=option,
                fix=f"give a time, e.g. {option} {TIME_EXAMPLES.split(',')[0]}, or leave "
                "the option out",
            )
        )
    relative = _RELATIVE.fullmatch(text)
    if relative:
        base = now if now is not None else dt.datetime.now(dt.UTC)
        if not relative.group("sign"):
            return base
        span = parse_duration(relative.group("span"), option)
        try:
            moment = base + span if relative.group("sign") == "+" else base - span
        except OverflowError:
            moment = None
        if moment is None or not YEARS[0] <= moment.year <= YEARS[1]:
            raise OpsledgerError(
                Problem(
                    f"{shown(text, 40)} is outside the years {YEARS[0]} to {YEARS[1]}",
                    field=option,
                    fix="give a shorter duration",
                )
            )
        return moment
    try:
        # `Z` is read by Python 3.11; a date alone has no zone and is refused below.
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise OpsledgerError(
            Problem(
                f"{shown(text, 40)} is not a time",
                field=option,
                fix=f"write ISO 8601 with a zone (years {YEARS[0]} to {YEARS[1]}), now or "
                f"+/- a duration: e.g. {TIME_EXAMPLES}",
            )
        ) from None
    if not YEARS[0] <= moment.year <= YEARS[1]:
        raise OpsledgerError(
            Problem(
                f"{shown(text, 40)} is outside the years {YEARS[0]} to {YEARS[1]}",
                field=option,
                fix="check the year",
            )
        )
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise OpsledgerError(
            Problem(
                f"{shown(text, 40)} has no timezone",
                field=option,
                fix=f"add one, e.g. {moment.isoformat(timespec='minutes')}+01:00 or "
                f"{moment.isoformat(timespec='minutes')}Z",
            )
        )
    return moment


def format_time(moment: dt.datetime) -> str:
    """ISO 8601 with its offset: what parse_time reads back as the same instant and offset.

    Example:
        format_time(dt.datetime(2026, 12, 24, 17, tzinfo=dt.UTC))  # "2026-12-24T17:00:00+00:00"
    """
    if moment.utcoffset() is None:
        raise ValueError("a time without a zone has no one meaning")
    return moment.isoformat()
