"""The change calendar: what may happen when, per environment, for the people who plan around it.

A team needs one place that says "production's next window is Tuesday 20:00 Berlin, CHG-0012
runs in it, the year-end freeze starts on the 21st, the PostgreSQL drill is due Friday". This
lays out, over the next days: every occurrence of each maintenance window, the freezes, the
scheduled changes (not yet run successfully, not withdrawn; approved or still waiting for
approvals — the scheduled apply runs them when their window opens), and the inspections and DR
drills that fall due. As text, JSON, or an iCalendar file (RFC 5545) a team can subscribe to
(CI publishes it with the report).

Example:
    cal = change_calendar(find_project(), days=30, environment="production")
    print(render_calendar(cal, "ics"))
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from zoneinfo import ZoneInfo

from opsledger.changes import change_ids, load_change, load_withdrawal
from opsledger.decide import decide
from opsledger.drill import drills_due
from opsledger.errors import OpsledgerError
from opsledger.inspections import due_states, load_inspection_plan
from opsledger.layout import policies_folder, stored_file
from opsledger.policy.bundle import DAYS, load_policies
from opsledger.project import Project
from opsledger.records import read_runs


class Kind(enum.StrEnum):
    WINDOW = "maintenance window"
    FREEZE = "freeze"
    CHANGE = "change"
    INSPECTION = "inspection due"
    DRILL = "drill due"


@dataclass(frozen=True)
class Entry:
    kind: Kind
    environment: str
    start: dt.datetime
    end: dt.datetime | None
    title: str
    detail: str = ""
    ref: str = ""  # the change, schedule or service it is about

    def as_dict(self) -> dict[str, str | None]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["start"] = self.start.isoformat()
        data["end"] = self.end.isoformat() if self.end else None
        return data


@dataclass
class Calendar:
    start: dt.datetime
    end: dt.datetime
    entries: list[Entry]
    # Changes left off because they cannot be read or judged, "changes/<block>/<ID>: why" (where
    # it is stored): a calendar that leaves a change out says so (the command exits 1).
    unreadable: list[str] = field(default_factory=list)


def _windows(project: Project, envs: list[str], start: dt.datetime, end: dt.datetime):
    policies, _ = load_policies(project)
    for env in envs:
        for window in policies.windows.get(env, []):
            zone = ZoneInfo(window.timezone)
            day = start.astimezone(zone).date() - dt.timedelta(days=1)
            while dt.datetime.combine(day, dt.time(0), zone) < end:
                if DAYS[day.weekday()] in window.days:
                    opens = dt.datetime.combine(day, dt.time.fromisoformat(window.start), zone)
                    closes = (
                        dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
                        if window.end == "24:00"
                        else dt.datetime.combine(day, dt.time.fromisoformat(window.end), zone)
                    )
                    if closes > start and opens < end:
                        yield Entry(
                            Kind.WINDOW,
                            env,
                            opens,
                            closes,
                            f"{env} maintenance window",
                            f"{window.start}-{window.end} {window.timezone}",
                        )
                day += dt.timedelta(days=1)
    for freeze in policies.freezes:
        for env in freeze.environments:
            if env in envs and freeze.end > start and freeze.start < end:
                yield Entry(Kind.FREEZE, env, freeze.start, freeze.end, f"{env}: {freeze.name}")


def _changes(
    project: Project, envs: list[str], start: dt.datetime, end: dt.datetime, unreadable: list[str]
):
    done = {r.change for r in read_runs(project).committed if r.result == "success"}
    for change_id in change_ids(project):
        if change_id in done or load_withdrawal(project, change_id) is not None:
            continue
        try:
            change = load_change(project, change_id)
            decision = decide(project, change_id, now=max(start, change.window_start))
        except OpsledgerError as err:  # `change validate` names what is wrong with it
            why = err.problems[0].message if err.problems else "cannot be read"
            unreadable.append(f"{stored_file(project.root, change_id)}: {why}")
            continue
        if change.environment not in envs:
            continue
        if change.window_end <= start or change.window_start >= end:
            continue
        failing = [c.rule for c in decision.checks if not c.passed]
        state = "ready" if not failing else "blocked by " + ", ".join(failing)
        yield Entry(
            Kind.CHANGE,
            change.environment,
            change.window_start,
            change.window_end,
            f"{change_id} ({change.type}): {change.title}",
            f"{change.runbook} on {change.environment}:{change.targets}; {state}",
            change_id,
        )


def _due(project: Project, envs: list[str], start: dt.datetime, end: dt.datetime):
    if policies_folder(project.root, "inspections.yml").exists():
        plan = load_inspection_plan(project)
        for env in envs:
            for state in due_states(project, environment=env, now=start):
                every = plan.schedules[state.schedule].every_hours or 0
                when = state.last + dt.timedelta(hours=every) if state.last else start
                if when < end:
                    yield Entry(
                        Kind.INSPECTION,
                        env,
                        max(when, start),
                        None,
                        f"{env}: {state.schedule} inspection due",
                        "overdue" if when <= start else "",
                        state.schedule,
                    )
    if policies_folder(project.root, "dr.yml").exists():
        for due in drills_due(project, now=start):
            if due.environment not in envs:
                continue
            when = (
                due.last.finished + dt.timedelta(days=due.every_days)
                if due.last is not None
                else start
            )
            if when < end:
                yield Entry(
                    Kind.DRILL,
                    due.environment,
                    max(when, start),
                    None,
                    f"{due.environment}: DR drill of {due.service} due",
                    ("overdue; " if due.overdue else "")
                    + ("runs directly" if due.direct else "needs a change"),
                    due.service,
                )


def change_calendar(
    project: Project,
    *,
    days: int = 30,
    environment: str | None = None,
    now: dt.datetime | None = None,
) -> Calendar:
    """Windows, freezes, scheduled changes and due inspections and drills, soonest first.

    Example:
        [e.title for e in change_calendar(find_project(), days=7).entries]
    """
    if environment is not None:
        project.require_environment(environment)
    start = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    end = start + dt.timedelta(days=days)
    envs = (
        [environment]
        if environment
        else sorted(p.parent.name for p in project.root.glob("inventories/*/hosts.yml"))
    )
    unreadable: list[str] = []
    entries = [
        *_windows(project, envs, start, end),
        *_changes(project, envs, start, end, unreadable),
        *_due(project, envs, start, end),
    ]
    entries.sort(key=lambda e: (e.start, e.environment, str(e.kind), e.title))
    return Calendar(start, end, entries, unreadable)


def _ics_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


# RFC 5545 TEXT holds no control character but HTAB; a line break is the escape `\n`.
_CONTROLS = {c: None for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F]}


def _ics_text(text: str) -> str:
    """Text as an iCalendar TEXT value: escaped, line breaks escaped, no control characters.

    A title or a freeze name may hold a carriage return or a control character (YAML lets it);
    written raw, it is outside the grammar and strict clients drop the event or the feed.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
    return text.replace("\n", "\\n").translate(_CONTROLS)


def _fold(line: str) -> list[str]:
    """RFC 5545 lines are at most 75 octets; longer ones continue with a leading space."""
    out, data = [], line.encode()
    while len(data) > 75:
        cut = 75 if not out else 74
        while cut and (data[cut] & 0xC0) == 0x80:  # never split a UTF-8 character
            cut -= 1
        out.append(data[:cut].decode())
        data = data[cut:]
    out.append(data.decode())
    return [out[0], *(" " + part for part in out[1:])]


def render_calendar(cal: Calendar, fmt: str = "text") -> str:
    """The calendar as text, json or ics (iCalendar, one VEVENT per entry, stable UIDs)."""
    if fmt == "json":
        return json.dumps(
            {
                "from": cal.start.isoformat(),
                "to": cal.end.isoformat(),
                "entries": [e.as_dict() for e in cal.entries],
            },
            indent=2,
        )
    if fmt == "ics":
        lines = [
            "BEGIN:VCALENDAR",
            "VERSION:2.0",
            "PRODID:-//opsledger//change calendar//EN",
            "CALSCALE:GREGORIAN",
            "X-WR-CALNAME:opsledger change calendar",
        ]
        for e in cal.entries:
            uid = hashlib.sha256(
                f"{e.kind}|{e.environment}|{e.ref or e.title}|{e.start.isoformat()}".encode()
            ).hexdigest()[:32]
            event = [
                "BEGIN:VEVENT",
                f"UID:{uid}@opsledger",
                f"DTSTAMP:{_ics_time(cal.start)}",
                f"DTSTART:{_ics_time(e.start)}",
                f"DTEND:{_ics_time(e.end or e.start + dt.timedelta(minutes=30))}",
                f"SUMMARY:{_ics_text(e.title)}",
                f"CATEGORIES:{_ics_text(str(e.kind))},{_ics_text(e.environment)}",
            ]
            if e.detail:
                event.append(f"DESCRIPTION:{_ics_text(e.detail)}")
            if e.kind is Kind.WINDOW:
                event.append("TRANSP:TRANSPARENT")
            event.append("END:VEVENT")
            for line in event:
                lines += _fold(line)
        lines.append("END:VCALENDAR")
        return "\r\n".join(lines) + "\r\n"
    out = [f"change calendar {cal.start:%Y-%m-%d %H:%M} — {cal.end:%Y-%m-%d %H:%M} UTC", ""]
    for e in cal.entries:
        when = e.start.astimezone(dt.UTC).strftime("%a %Y-%m-%d %H:%M")
        until = f" → {e.end.astimezone(dt.UTC):%a %H:%M}" if e.end else ""
        out.append(f"{when}{until} UTC  [{e.kind}] {e.title}")
        if e.detail:
            out.append(f"{'':26}{e.detail}")
    if not cal.entries:
        out.append("nothing scheduled")
    return "\n".join(out) + "\n"
