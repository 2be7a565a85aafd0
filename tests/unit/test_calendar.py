"""The change calendar on a real git repository: windows from policies/windows.yml (time zones
and DST), freezes, scheduled changes until they ran, due inspections and drills; text, JSON and
an iCalendar file a team can subscribe to."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from opsledger.calendar import Calendar, Entry, Kind, change_calendar, render_calendar
from opsledger.cli import cli
from opsledger.signoff import approve_change

from .conftest import START, record_run

MONDAY = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def test_windows_freezes_and_scheduled_changes_per_environment(repo):
    project, change_id, _ = repo
    cal = change_calendar(project, days=30, now=MONDAY)
    production = [e for e in cal.entries if e.environment == "production"]
    windows = [e for e in production if e.kind is Kind.WINDOW]
    # Tuesday and Thursday 20:00-23:30 Berlin (19:00 UTC in winter), Saturday 06:00-10:00.
    assert windows[0].start == dt.datetime(2026, 12, 1, 19, 0, tzinfo=dt.UTC)
    assert windows[0].end == dt.datetime(2026, 12, 1, 22, 30, tzinfo=dt.UTC)
    assert windows[1].start.astimezone(dt.UTC).strftime("%a %H:%M") == "Thu 19:00"
    assert windows[2].start.astimezone(dt.UTC).strftime("%a %H:%M") == "Sat 05:00"
    (freeze,) = [e for e in production if e.kind is Kind.FREEZE]
    assert freeze.title == "production: year-end freeze"
    (change,) = [e for e in cal.entries if e.kind is Kind.CHANGE]
    assert change.ref == change_id and change.start == START and change.environment == "lab"
    assert "blocked by approvals" in change.detail
    approve_change(project, change_id, person="bob")
    (change,) = [e for e in change_calendar(project, now=MONDAY).entries if e.kind is Kind.CHANGE]
    assert change.detail.endswith("; ready")
    record_run(project, change_id, START)
    assert not [e for e in change_calendar(project, now=MONDAY).entries if e.kind is Kind.CHANGE]


def test_due_inspections_and_drills_and_one_environment(repo):
    project, _, _ = repo
    cal = change_calendar(project, days=2, environment="lab", now=MONDAY)
    assert {e.environment for e in cal.entries} == {"lab"}
    kinds = {e.kind for e in cal.entries}
    assert {Kind.WINDOW, Kind.INSPECTION, Kind.DRILL} <= kinds
    drill = next(e for e in cal.entries if e.kind is Kind.DRILL)
    assert drill.ref == "postgres" and "overdue" in drill.detail


def test_text_json_and_icalendar(repo, tmp_path, monkeypatch):
    project, change_id, _ = repo
    cal = change_calendar(project, days=10, now=MONDAY)
    text = render_calendar(cal, "text")
    assert f"[change] {change_id} (normal): Tune the database hosts" in text
    data = json.loads(render_calendar(cal, "json"))
    assert len(data["entries"]) == len(cal.entries)
    assert data["entries"][0]["start"] == cal.entries[0].start.isoformat()

    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    out = tmp_path / "changes.ics"
    args = ["calendar", "--days", "10", "--format", "ics", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--at", MONDAY.isoformat()])
    assert result.exit_code == 0, result.output
    raw = out.read_bytes()
    lines = raw.decode().split("\r\n")
    assert lines[0] == "BEGIN:VCALENDAR" and lines[-2] == "END:VCALENDAR" and lines[-1] == ""
    assert all(len(line.encode()) <= 75 for line in lines)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    events = lines.count("BEGIN:VEVENT")
    assert events == lines.count("END:VEVENT") == len(cal.entries)
    uids = [line for line in lines if line.startswith("UID:")]
    assert len(set(uids)) == events
    assert (
        "DTSTART:20261201T200000Z" in lines
        and "SUMMARY:CHG-0001 (normal): Tune the database hosts" in lines
    )
    # Stable: the same calendar twice is the same file (subscribers see no churn).
    CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "again.ics"), "--at", MONDAY.isoformat()])
    assert (tmp_path / "again.ics").read_bytes() == raw


def _icalendar():
    try:
        import icalendar
    except ImportError:  # pragma: no cover - the dev extras hold it
        pytest.fail("icalendar is not installed: scripts/bootstrap installs requirements.lock")
    return icalendar


def test_a_real_icalendar_parser_reads_back_every_entry(repo, tmp_path, monkeypatch):
    """What a subscribed client sees: the file read by a real RFC 5545 parser (icalendar), every
    event matching its entry, and text that held a carriage return or a control character (a
    title, a freeze name: YAML lets them in) still inside the grammar, its line break kept."""
    icalendar = _icalendar()
    project, _, _ = repo
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    out = tmp_path / "changes.ics"
    result = CliRunner().invoke(
        cli, ["calendar", "--days", "10", "--format", "ics", "-o", str(out),
              "--at", MONDAY.isoformat()],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    parsed = icalendar.Calendar.from_ical(out.read_bytes())
    events = list(parsed.walk("VEVENT"))
    cal = change_calendar(project, days=10, now=MONDAY)
    assert len(events) == len(cal.entries) > 0
    for event, entry in zip(events, cal.entries, strict=True):
        assert str(event["SUMMARY"]) == entry.title
        assert event.decoded("DTSTART") == entry.start
        assert event.decoded("DTEND") == (entry.end or entry.start + dt.timedelta(minutes=30))
        assert [str(c) for c in event["CATEGORIES"].cats] == [str(entry.kind), entry.environment]
        assert str(event.get("DESCRIPTION", "")) == entry.detail

    title = "CHG-0009: a; b, c \\ d\r\nsecond line\rthird\x07 — ünïcödé " + "€" * 40
    hostile = Entry(Kind.FREEZE, "production", MONDAY, MONDAY + dt.timedelta(hours=2), title,
                    "tab\there\x1b[31m red")  # fmt: skip
    raw = render_calendar(Calendar(MONDAY, MONDAY, [hostile]), "ics").encode()
    controls = [b for b in raw.replace(b"\r\n", b"") if (b < 0x20 and b != 0x09) or b == 0x7F]
    assert controls == [], controls
    (event,) = icalendar.Calendar.from_ical(raw).walk("VEVENT")
    expected = "CHG-0009: a; b, c \\ d\nsecond line\nthird — ünïcödé " + "€" * 40
    assert str(event["SUMMARY"]) == expected
    assert str(event["DESCRIPTION"]) == "tab\there[31m red"
