"""The one time and duration syntax (opsledger.timespec), by property and by example.

Round trips: a value formatted then parsed is the same value. Garbage: any text is either a
value or an OpsledgerError naming the option, never another exception (a traceback on the
command line).
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.errors import OpsledgerError
from opsledger.timespec import (
    YEARS,
    format_duration,
    format_time,
    parse_duration,
    parse_time,
)

NOW = dt.datetime(2026, 12, 1, 20, 30, tzinfo=dt.UTC)
LONGEST = (YEARS[1] - YEARS[0]) * 366 * 86400  # seconds

durations = st.one_of(
    st.integers(min_value=0, max_value=7 * 86400), st.integers(min_value=0, max_value=LONGEST)
).map(lambda seconds: dt.timedelta(seconds=seconds))
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
times = st.datetimes(
    min_value=dt.datetime(YEARS[0], 1, 2),
    max_value=dt.datetime(YEARS[1], 12, 30),
    timezones=offsets,
)


@given(durations)
def test_a_formatted_duration_parses_back_to_the_same_length(length):
    assert parse_duration(format_duration(length), "--duration") == length


@given(durations)
def test_the_iso_8601_spelling_parses_to_the_same_length(length):
    days, rest = divmod(int(length.total_seconds()), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"P{days}DT{hours}H{minutes}M{seconds}S"
    assert parse_duration(text, "--duration") == length


@given(times)
def test_a_formatted_time_parses_back_to_the_same_instant_and_offset(moment):
    parsed = parse_time(format_time(moment), "--at")
    assert parsed == moment
    assert parsed.utcoffset() == moment.utcoffset()


@given(st.sampled_from("+-"), durations.filter(lambda d: d < dt.timedelta(days=365 * 50)))
def test_a_relative_time_is_now_moved_by_the_duration(sign, length):
    moved = parse_time(f"{sign}{format_duration(length)}", "--at", now=NOW)
    assert moved == (NOW + length if sign == "+" else NOW - length)
    assert parse_time(f"now{sign}{format_duration(length)}", "--at", now=NOW) == moved


# Text, and numbers with units up to the parser's nine digits (where overflows would hide).
unit_counts = st.builds(
    "{}{}".format, st.integers(min_value=0, max_value=10**10), st.sampled_from("wdhms")
)


@given(st.one_of(st.text(max_size=40), unit_counts, st.lists(unit_counts).map("".join)))
def test_any_text_is_a_duration_or_a_user_error_naming_the_option(text):
    try:
        length = parse_duration(text, "--within")
    except OpsledgerError as exc:
        assert [p.field for p in exc.problems] == ["--within"]
    else:
        assert length >= dt.timedelta(0)


@given(
    st.one_of(
        st.text(max_size=40),
        st.builds("{}{}".format, st.sampled_from(["+", "-", "now+", "now-"]), unit_counts),
        st.from_regex(
            r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}[+-Z0-9:]{0,6}", fullmatch=True
        ),
    )
)
def test_any_text_is_a_time_with_a_zone_or_a_user_error_naming_the_option(text):
    try:
        moment = parse_time(text, "--at", now=NOW)
    except OpsledgerError as exc:
        assert [p.field for p in exc.problems] == ["--at"]
    else:
        assert moment.utcoffset() is not None
        assert YEARS[0] <= moment.year <= YEARS[1]


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("90s", dt.timedelta(seconds=90)),
        ("15m", dt.timedelta(minutes=15)),
        ("2h", dt.timedelta(hours=2)),
        ("1d", dt.timedelta(days=1)),
        ("2w", dt.timedelta(days=14)),
        ("1h30m", dt.timedelta(minutes=90)),
        ("PT1H30M", dt.timedelta(minutes=90)),
        ("P1DT2H", dt.timedelta(hours=26)),
    ],
)
def test_durations_as_the_readme_writes_them(text, length):
    assert parse_duration(text, "--duration") == length


@pytest.mark.parametrize(
    "text", ["", "1m30m", "30m1h", "1.5h", "1H", "2 h", "P", "PT", "P1M", "-5m"]
)
def test_what_is_not_a_duration(text):
    with pytest.raises(OpsledgerError, match="is not a duration"):
        parse_duration(text, "--duration")


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-12-24T18:00+01:00", dt.datetime(2026, 12, 24, 17, tzinfo=dt.UTC)),
        ("2026-12-24T17:00Z", dt.datetime(2026, 12, 24, 17, tzinfo=dt.UTC)),
        ("now", NOW),
        ("+2h", NOW + dt.timedelta(hours=2)),
        ("-30m", NOW - dt.timedelta(minutes=30)),
        ("+1d2h", NOW + dt.timedelta(hours=26)),
    ],
)
def test_times_as_the_readme_writes_them(text, moment):
    assert parse_time(text, "--at", now=NOW) == moment


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-24T18:00", "'2026-12-24T18:00' has no timezone"),
        ("2026-12-24", "'2026-12-24' has no timezone"),
        ("tomorrow", "'tomorrow' is not a time"),
        (" ", "empty value"),
        ("0001-01-01T00:00+05:00", "outside the years 1970 to 9000"),
        ("-9999w", "outside the years 1970 to 9000"),
    ],
)
def test_what_is_not_a_time(text, message):
    with pytest.raises(OpsledgerError, match=message) as caught:
        parse_time(text, "--at", now=NOW)
    assert caught.value.problems[0].fix  # every refusal says what to write instead
