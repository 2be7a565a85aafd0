"""Incidents and problems as text and JSON for the terminal and for pipelines."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from opsledger.faults.ledger import Stamp
from opsledger.faults.problems import ProblemView, Suggestion
from opsledger.faults.queries import IncidentList, IncidentView
from opsledger.faults.sla import IncidentClocks


def _when(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def _left(clocks: IncidentClocks, now: dt.datetime) -> str:
    due = clocks.next_due
    if due is None:
        return "paused" if clocks.state.value == "paused" else "-"
    minutes = (due - now).total_seconds() / 60
    word = "overdue" if minutes < 0 else "left"
    minutes = abs(minutes)  # a P1 answered 5 min late is "5 min overdue", not "0.1 h"
    return f"{minutes / 60:.1f} h {word}" if minutes >= 90 else f"{minutes:.0f} min {word}"


def _step_line(item: dict[str, Any], stamp: Stamp | None) -> str:
    extra = {k: v for k, v in item.items() if k not in ("at", "by", "action")}
    detail = "; ".join(
        f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in extra.items()
        if not isinstance(v, dict)
    )
    when = _when(stamp.at) if stamp else "uncommitted"
    sha = f" {stamp.commit[:10]}" if stamp else ""
    return f"  {when}{sha} {item['by']}: {item['action']}" + (f" — {detail}" if detail else "")


def incident_text(view: IncidentView) -> str:
    data = view.incident.data
    c = view.clocks
    lines = [
        f"{data['id']}: {data['title']}",
        f"  {data['priority']} ({data['impact']} impact x {data['urgency']} urgency), class "
        f"{data['class']}{' (confirmed)' if data.get('class_confirmed') else ''}, "
        f"source {data['source']}",
        f"  {data['environment']}: hosts {', '.join(data['hosts']) or '-'}; services "
        f"{', '.join(data['services']) or '-'}",
        f"  status {data['status']}, assignee {data.get('assignee') or '-'}, "
        f"detected {data['detected_at']}",
        f"  SLA {c.state.value}",
    ]
    for clock in (c.response, c.resolution):
        if clock is None:
            continue
        state = clock.state(c.near)
        lines.append(
            f"    {clock.name}: due {_when(clock.due)}, {state}"
            + (f" at {_when(clock.stopped)}" if clock.stopped else "")
            + f" ({clock.used.total_seconds() / 3600:.2f} h of "
            f"{clock.target.total_seconds() / 3600:g} h)"
        )
    if data.get("resolution"):
        lines.append(f"  resolution: {json.dumps(data['resolution'])}")
    if data.get("closure"):
        lines.append(f"  closure: {json.dumps(data['closure'])}")
    if data.get("problem") or data.get("repeat_of"):
        lines.append(
            f"  problem {data.get('problem') or '-'}, repeat of {data.get('repeat_of') or '-'}"
        )
    if data.get("runbooks"):
        lines.append("  runbook: " + ", ".join(data["runbooks"]))
    if data.get("evidence"):
        lines.append("  evidence: " + ", ".join(data["evidence"]))
    lines.append("timeline (dated by the commit that added each step):")
    lines += [_step_line(i, s) for i, s in zip(view.incident.timeline, view.stamps, strict=False)]
    if view.diagnostics:
        lines.append("diagnostics: " + ", ".join(view.diagnostics))
    return "\n".join(lines) + "\n"


def incident_json(view: IncidentView) -> str:
    return (
        json.dumps(
            {
                **view.incident.data,
                "sla": view.clocks.as_dict(),
                "steps": [
                    {
                        "action": i["action"],
                        "by": i["by"],
                        "committed_at": _when(s.at) if s else None,
                        "commit": s.commit if s else None,
                    }
                    for i, s in zip(view.incident.timeline, view.stamps, strict=False)
                ],
                "diagnostics": view.diagnostics,
            },
            indent=2,
        )
        + "\n"
    )


def list_rows(found: IncidentList, now: dt.datetime) -> list[dict[str, str]]:
    return [
        {
            "incident": i.id,
            "priority": i.priority,
            "status": i.status,
            "class": i.klass,
            "env": i.environment,
            "assignee": i.data.get("assignee") or "-",
            "sla": c.state.value,
            "next due": _when(c.next_due) if i.active else "-",
            "left": _left(c, now) if i.active else "-",
            "title": i.title,
        }
        for i, c in found.items
    ]


def _problem_dict(view: ProblemView) -> dict[str, Any]:
    """The problem's file as it is, with when it was opened (git time) and its age in days."""
    opened = _when(view.opened_at) if view.opened_at else None
    return {**view.problem.data, "opened_at": opened, "age_days": view.age_days}


def problem_json(view: ProblemView) -> str:
    return json.dumps(_problem_dict(view), indent=2, default=str) + "\n"


def problems_json(views: list[ProblemView]) -> str:
    return json.dumps([_problem_dict(v) for v in views], indent=2, default=str) + "\n"


def problems_text(views: list[ProblemView]) -> str:
    lines = []
    for v in views:
        data = v.problem.data
        age = f"{v.age_days:.1f} d" if v.age_days is not None else "uncommitted"
        lines.append(
            f"{data['id']} [{data['status']}] {data['title']} — {len(data['incidents'])} "
            f"incident(s), owner {data['owner']}, age {age}"
        )
    return "\n".join(lines or ["no problems"]) + "\n"


def problem_text(view: ProblemView) -> str:
    data = view.problem.data
    known = data.get("known_error") or {}
    lines = [
        f"{data['id']}: {data['title']}",
        f"  status {data['status']}, owner {data['owner']}, opened {_when(view.opened_at)}",
        f"  incidents: {', '.join(data['incidents'])}",
        f"  fingerprints: {', '.join(data['fingerprints']) or '-'}",
        f"  root cause: {data.get('root_cause') or '-'}",
        f"  workaround: {known.get('workaround') or '-'}"
        + (f" (runbook {known['runbook']})" if known.get("runbook") else ""),
        f"  permanent fix: {data.get('fix_change') or '-'}",
        "timeline:",
    ]
    lines += [f"  {i['at']} {i['by']}: {i['action']}" for i in data["timeline"]]
    return "\n".join(lines) + "\n"


def suggestions_text(found: list[Suggestion], repeat: int, days: int) -> str:
    if not found:
        return f"no recurring fault: no fingerprint in {repeat}+ incidents within {days} days\n"
    lines = []
    for s in found:
        if s.problem:
            lines.append(
                f"{s.fingerprint}: {len(s.incidents)} incidents; {', '.join(s.unlinked)} not yet "
                f"in {s.problem}\n"
                f"  opsledger problem link {s.problem} {' '.join(s.unlinked)} --as YOU"
            )
        else:
            incidents = " ".join(f"--incident {i}" for i in s.unlinked)
            lines.append(
                f"{s.fingerprint}: {len(s.incidents)} incidents ({', '.join(s.incidents)})\n"
                f"  opsledger problem new --title {json.dumps(s.title)} {incidents} --as YOU"
            )
    return "\n".join(lines) + "\n"
