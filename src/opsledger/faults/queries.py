"""Reading incidents: one with its clocks and git-dated steps, or a list with SLA states.

Both read the incidents' history once (one `git log`, one `git cat-file`), so listing a
thousand incidents costs two git processes, not two thousand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from opsledger.errors import Problem
from opsledger.faults.incidents import moment
from opsledger.faults.ledger import FileHistory, Stamp, timeline_history
from opsledger.faults.policy import load_fault_policy
from opsledger.faults.sla import IncidentClocks, SlaState, incident_clocks
from opsledger.faults.store import Incident, diagnostics_dir, load_incident, scan_incidents
from opsledger.project import Project


def histories(project: Project, incidents: list[Incident]) -> dict[str, FileHistory]:
    """Git's stamps for each incident's timeline (one git log, one cat-file)."""
    current = {i.relative(project): i.timeline for i in incidents}
    found = timeline_history(project, "incidents/", current)
    return {
        i.id: found.get(i.relative(project), FileHistory(i.relative(project))) for i in incidents
    }


@dataclass
class IncidentView:
    incident: Incident
    clocks: IncidentClocks
    stamps: list[Stamp | None]
    diagnostics: list[str]


def show_incident(
    project: Project, incident_id: str, *, now: dt.datetime | None = None
) -> IncidentView:
    """An incident with its clocks and every step dated by git.

    Example:
        view = show_incident(find_project(), "INC-0001")
        view.clocks.state, [s.at for s in view.stamps]
    """
    policy = load_fault_policy(project)
    incident = load_incident(project, incident_id)
    history = histories(project, [incident])[incident.id]
    folder = diagnostics_dir(project, incident_id)
    files = (
        sorted(str(p.relative_to(project.root)) for p in folder.glob("*"))
        if folder.is_dir()
        else []
    )
    return IncidentView(
        incident,
        incident_clocks(incident, history.stamps, policy, moment(now)),
        history.stamps,
        files,
    )


@dataclass
class IncidentList:
    items: list[tuple[Incident, IncidentClocks]]
    problems: list[Problem]  # incidents that do not read (listed, never hidden)


def list_incidents(
    project: Project,
    *,
    environment: str | None = None,
    status: str | None = None,
    breaching: bool = False,
    due_within: dt.timedelta | None = None,
    now: dt.datetime | None = None,
) -> IncidentList:
    """Incidents with their SLA state, newest first; or only those breaching; or those due soon.

    `breaching`: a clock is past its target (open incidents, or closed ones that missed it).
    `due_within`: active incidents whose next deadline falls within that time (or has passed),
    soonest first.

    Example:
        list_incidents(find_project(), due_within=timedelta(hours=4))
    """
    when = moment(now)
    if environment is not None:  # a typo must not read as "no incident, no breach" (exit 2)
        project.require_environment(environment)
    policy = load_fault_policy(project)
    incidents, problems = scan_incidents(project)
    chosen = [
        i
        for i in incidents
        if (environment is None or i.environment == environment)
        and (status is None or i.status == status)
    ]
    found = histories(project, chosen)
    items = [(i, incident_clocks(i, found[i.id].stamps, policy, when)) for i in chosen]
    if breaching:
        items = [(i, c) for i, c in items if c.state == SlaState.BREACHED]
    if due_within is not None:
        items = [
            (i, c)
            for i, c in items
            if i.active and c.next_due is not None and c.next_due <= when + due_within
        ]
        items.sort(key=lambda item: item[1].next_due)  # type: ignore[arg-type,return-value]
    else:
        items.reverse()
    return IncidentList(items, problems)
