"""Incident and problem KPIs for the service report: what practitioners measure fault handling by.

Incidents opened in the period (by the commit that opened them), by class, priority and source;
MTTA (opened → acknowledged) and MTTR (opened → resolved), both on git time; SLA compliance of
incidents — response and resolution, each clock in the hours sla.yml gives its priority —
separate from changes; repeat incidents (a fingerprint seen in an earlier incident); incidents
still open and problems still open with their age. Filtered by environment, so lab numbers do
not dilute production's.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from opsledger.errors import OpsledgerError
from opsledger.faults.incidents import moment
from opsledger.faults.policy import load_fault_policy
from opsledger.faults.problems import problem_views
from opsledger.faults.queries import histories
from opsledger.faults.sla import SlaState, incident_clocks
from opsledger.faults.store import load_incidents
from opsledger.layout import policies_folder, policy_file
from opsledger.project import Project


@dataclass
class IncidentKpis:
    opened: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    by_priority: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    mtta_minutes: float | None = None
    mttr_hours: float | None = None
    response_compliance: float | None = None
    resolution_compliance: float | None = None
    breaches: list[str] = field(default_factory=list)
    repeats: int = 0
    open_now: list[dict[str, Any]] = field(default_factory=list)
    open_problems: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per incident of the period
    problems_fixed: list[dict[str, Any]] = field(default_factory=list)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _hours(delta: dt.timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)


def incident_kpis(
    project: Project,
    *,
    start: dt.datetime,
    end: dt.datetime,
    environment: str | None = None,
    now: dt.datetime | None = None,
) -> IncidentKpis:
    """KPIs of the incidents opened in [start, end), and of what is open now.

    Example:
        k = incident_kpis(project, start=month_start, end=month_end, environment="production")
        k.mttr_hours, k.resolution_compliance, k.by_class
    """
    if not policies_folder(project.root, "incidents.yml").is_file():
        return IncidentKpis()
    when = moment(now)
    try:
        policy = load_fault_policy(project)
    except OpsledgerError:
        return IncidentKpis(
            breaches=[f"{policy_file('incidents.yml')} is invalid: run opsledger policy check"]
        )
    incidents = load_incidents(project)  # a report never undercounts: all, or exit 2
    if environment:
        incidents = [i for i in incidents if i.environment == environment]
    found = histories(project, incidents)
    clocks = {i.id: incident_clocks(i, found[i.id].stamps, policy, when) for i in incidents}
    period = [
        i for i in incidents if clocks[i.id].opened_at and start <= clocks[i.id].opened_at < end
    ]
    k = IncidentKpis(opened=len(period))
    k.by_class = dict(sorted(Counter(i.klass for i in period).items()))
    k.by_priority = dict(sorted(Counter(i.priority for i in period).items()))
    k.by_source = dict(sorted(Counter(i.data["source"] for i in period).items()))
    k.by_status = dict(Counter(i.status for i in period))
    acks, fixes = [], []
    response = resolution = (0, 0)
    for incident in period:
        c = clocks[incident.id]
        assert c.opened_at is not None
        if c.acknowledged_at:
            acks.append((c.acknowledged_at - c.opened_at).total_seconds() / 60)
        if c.resolved_at:
            fixes.append(_hours(c.resolved_at - c.opened_at))
        for name, clock in (("response", c.response), ("resolution", c.resolution)):
            if clock is None or (clock.stopped is None and not clock.breached):
                continue  # still running within its target: not decided yet
            met = not clock.breached
            if name == "response":
                response = (response[0] + met, response[1] + 1)
            else:
                resolution = (resolution[0] + met, resolution[1] + 1)
            if not met:
                k.breaches.append(
                    f"{incident.id} ({incident.priority}): {name} "
                    f"{_hours(clock.used)} h > {_hours(clock.target)} h"
                    + ("" if clock.stopped else " (still open)")
                )
        earlier = [
            other
            for other in incidents
            if other.id != incident.id
            and set(other.fingerprints) & set(incident.fingerprints)
            and (clocks[other.id].opened_at or when) < c.opened_at
        ]
        if incident.data.get("repeat_of") or earlier:
            k.repeats += 1
        resolution_data = incident.data.get("resolution") or {}
        closure = incident.data.get("closure") or {}
        k.rows.append(
            {
                "incident": incident.id,
                "title": incident.title,
                "environment": incident.environment,
                "priority": incident.priority,
                "class": incident.klass,
                "source": incident.data["source"],
                "status": incident.status,
                "opened_at": c.opened_at.isoformat(),
                "resolved_at": c.resolved_at.isoformat() if c.resolved_at else None,
                "hours_to_resolve": _hours(c.resolved_at - c.opened_at) if c.resolved_at else None,
                "sla": c.state.value,
                "resolved_by": resolution_data.get("change") or resolution_data.get("how"),
                "cause": closure.get("cause"),
                "root_cause": closure.get("root_cause"),
                "problem": incident.data.get("problem"),
            }
        )
    k.mtta_minutes = round(statistics.mean(acks), 1) if acks else None
    k.mttr_hours = round(statistics.mean(fixes), 2) if fixes else None
    k.response_compliance = _ratio(*response)
    k.resolution_compliance = _ratio(*resolution)
    for incident in incidents:
        c = clocks[incident.id]
        if incident.active and c.opened_at:
            k.open_now.append(
                {
                    "incident": incident.id,
                    "environment": incident.environment,
                    "title": incident.title,
                    "priority": incident.priority,
                    "status": incident.status,
                    "age_hours": _hours(when - c.opened_at),
                    "sla": c.state.value,
                    "breaching": c.state == SlaState.BREACHED,
                }
            )
    envs = {i.id for i in incidents}
    for view in problem_views(project, now=when):
        mine = (
            [i for i in view.problem.incidents if i in envs]
            if environment
            else view.problem.incidents
        )
        if environment and not mine:
            continue
        row = {
            "problem": view.problem.id,
            "title": view.problem.data["title"],
            "status": view.problem.status,
            "incidents": len(view.problem.incidents),
            "age_days": round(view.age_days, 1) if view.age_days is not None else None,
            "workaround": (view.problem.data.get("known_error") or {}).get("workaround"),
            "runbook": (view.problem.data.get("known_error") or {}).get("runbook"),
            "fix_change": view.problem.data.get("fix_change"),
        }
        if view.problem.status in ("open", "known_error"):
            k.open_problems.append(row)
        elif view.problem.status == "fixed":
            k.problems_fixed.append(row)
    return k
