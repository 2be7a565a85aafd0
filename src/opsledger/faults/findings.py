"""What `audit check` reads in incidents and problems: SLA breaches and ledger breaches.

- `incident-sla-breached` — a clock past its target: high while the incident is still open
  (someone must act now), medium once resolved (a fact of the period);
- `incident-sla-near-breach` — an open clock that has used the near-breach share of its target;
- `incident-timeline-edited` / `problem-timeline-edited` — a timeline entry changed or removed
  after its commit (the timeline is append-only; git dates each entry);
- `incident-step-by-stranger` — a step written in a person's name, committed by someone else;
- `incident-state-unproven` — a resolved or closed incident whose timeline has no resolving
  (or closing) step, or none since it was reopened: the state was typed, not earned;
- `incident-unreadable` — an incident file that does not validate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from opsledger.errors import OpsledgerError
from opsledger.faults.incidents import moment
from opsledger.faults.ledger import timeline_history
from opsledger.faults.policy import load_fault_policy
from opsledger.faults.sla import incident_clocks
from opsledger.faults.store import AUTOMATION, scan_incidents, scan_problems
from opsledger.layout import policies_folder, policy_file
from opsledger.project import Project


@dataclass(frozen=True)
class FaultFinding:
    rule: str
    severity: str  # low | medium | high | critical
    message: str
    file: str
    incident: str = ""
    commits: tuple[str, ...] = ()


def fault_findings(
    project: Project, *, since: dt.datetime | None = None, now: dt.datetime | None = None
) -> list[FaultFinding]:
    """Every fault-handling finding (incidents opened since `since`, when given).

    Example:
        [f"{f.rule}: {f.message}" for f in fault_findings(find_project())]
    """
    if not policies_folder(project.root, "incidents.yml").is_file():
        return []
    when = moment(now)
    incidents, broken = scan_incidents(project)
    findings = [
        FaultFinding("incident-unreadable", "high", p.message, p.file or "incidents/")
        for p in broken
    ]
    if not incidents and not (project.root / "problems").is_dir():
        return findings
    try:
        policy = load_fault_policy(project)
    except OpsledgerError as err:
        return findings + [
            FaultFinding("incident-policy-invalid", "high", str(p), policy_file("incidents.yml"))
            for p in err.problems
        ]
    current = {i.relative(project): i.timeline for i in incidents}
    found = timeline_history(project, "incidents/", current)
    for path, history in found.items():  # deleted incidents too
        for commit, what in history.edits:
            findings.append(
                FaultFinding(
                    "incident-timeline-edited",
                    "critical",
                    what,
                    path,
                    path.split("/")[1],
                    (commit,),
                )
            )
    for incident in incidents:
        file = incident.relative(project)
        history = found[file]
        clocks = incident_clocks(incident, history.stamps, policy, when)
        if since and clocks.opened_at and clocks.opened_at < since:
            continue
        for item, stamp in zip(incident.timeline, history.stamps, strict=False):
            person = policy.people.get(str(item.get("by")))
            if stamp is None or item.get("by") == AUTOMATION:
                continue
            if person is None or person.email != stamp.author_email:
                findings.append(
                    FaultFinding(
                        "incident-step-by-stranger",
                        "high",
                        f"{item.get('action')} by {item.get('by')} was committed by "
                        f"{stamp.author_email}",
                        file,
                        incident.id,
                        (stamp.commit,),
                    )
                )
        actions = {e.get("action") for e in incident.timeline}
        # the resolution that stands: a reopening withdraws the resolutions before it
        standing = [e.get("action") for e in incident.timeline if e.get("action") in
                    ("resolved", "reopened")]  # fmt: skip
        if incident.status in ("resolved", "closed") and standing[-1:] != ["resolved"]:
            findings.append(
                FaultFinding(
                    "incident-state-unproven",
                    "high",
                    f"{incident.status} without a resolving step"
                    + (" since it was reopened" if standing else ""),
                    file,
                    incident.id,
                )
            )
        if incident.status == "closed" and "closed" not in actions:
            findings.append(
                FaultFinding(
                    "incident-state-unproven",
                    "high",
                    "closed without a closing step",
                    file,
                    incident.id,
                )
            )
        for clock in (clocks.response, clocks.resolution):
            if clock is None:
                continue
            state = clock.state(policy.near_breach)
            due = clock.due.isoformat(timespec="minutes") if clock.due else "paused"
            if state == "breached":
                still = clock.stopped is None
                findings.append(
                    FaultFinding(
                        "incident-sla-breached",
                        "high" if still else "medium",
                        f"{incident.priority} {clock.name} due {due}, "
                        + (
                            "still open"
                            if still
                            else f"met only at {clock.stopped.isoformat(timespec='minutes')}"
                        ),  # type: ignore[union-attr]
                        file,
                        incident.id,
                    )
                )
            elif state == "near_breach":
                findings.append(
                    FaultFinding(
                        "incident-sla-near-breach",
                        "low",
                        f"{incident.priority} {clock.name} due {due}, {clock.share:.0%} used",
                        file,
                        incident.id,
                    )
                )
    records, broken_problems = scan_problems(project)
    findings += [
        FaultFinding("problem-unreadable", "high", p.message, p.file or "problems/")
        for p in broken_problems
    ]
    current = {str(r.path.relative_to(project.root)): r.timeline for r in records}
    for path, history in timeline_history(project, "problems/", current).items():
        for commit, what in history.edits:
            findings.append(
                FaultFinding("problem-timeline-edited", "critical", what, path, commits=(commit,))
            )
    return findings
