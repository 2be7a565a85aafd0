"""Incidents as code: one function per step of ITIL incident handling, each step a commit.

open → acknowledged → resolved → closed. A person opens an incident (a user report, an alert)
or a detection does (faults.detect); someone acknowledges it (the response clock stops),
assigns it, notes what they find, collects diagnostics, pauses the clock while waiting on the
customer where sla.yml allows, and resolves and closes it (faults.resolution: only with proof
that the service is back, and with a cause). This module holds the steps before that and the
one way every step is taken (`take_step`): the person must be in people.yml and the incident in
a status the step accepts; the step appends a timeline entry and is committed as that person;
nothing is written when a step is invalid (exit 2) or not allowed (exit 3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from opsledger.commitlock import under_commit_lock
from opsledger.errors import EXIT_DENIED, OpsledgerError, Problem
from opsledger.faults.ledger import record_step
from opsledger.faults.policy import FaultPolicy, load_fault_policy, person_problem
from opsledger.faults.store import (
    ACTIVE,
    SOURCES,
    Incident,
    incident_file,
    incident_text,
    load_incident,
    next_id,
    scan_incidents,
)
from opsledger.layout import policy_file
from opsledger.project import Project


class IncidentStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Step(StrEnum):
    """What a use case did to the incident."""

    OPENED = "opened"
    UPDATED = "updated"  # an open incident with the same fingerprint took the new signal
    ACKNOWLEDGED = "acknowledged"
    ASSIGNED = "assigned"
    NOTED = "noted"
    PAUSED = "paused"
    RESUMED = "resumed"
    TESTED = "tested"
    COLLECTED = "collected"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    CLOSED = "closed"


@dataclass
class StepResult:
    step: Step
    status: IncidentStatus
    incident: Incident
    commit: str
    extra: dict[str, Any] = field(default_factory=dict)


def moment(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)


def entry(action: str, by: str, when: dt.datetime, **fields: Any) -> dict[str, Any]:
    """One timeline entry; empty fields are left out so the file says only what happened."""
    return {
        "at": when.isoformat(),
        "by": by,
        "action": action,
        **{k: v for k, v in fields.items() if v not in (None, "", [], {})},
    }


def _environments(project: Project) -> list[str]:
    return sorted(p.parent.name for p in project.root.glob("inventories/*/hosts.yml"))


def host_problems(project: Project, environment: str, hosts: list[str], file: str) -> list[Problem]:
    """Hosts must exist in the environment's inventory (diagnostics and tests reach them)."""
    from opsledger.inventory import load_inventory

    if environment not in _environments(project):
        return [
            Problem(
                f"no environment {environment!r}",
                file,
                "environment",
                f"use one of: {', '.join(_environments(project))}",
            )
        ]
    if not hosts:
        return []
    known = load_inventory(project.inventory_file(environment)).hosts
    return [
        Problem(
            f"no host {host!r} in {environment}",
            file,
            "hosts",
            f"use hosts of inventories/{environment}: {', '.join(known)}",
        )
        for host in hosts
        if host not in known
    ]


def new_incident_data(
    incident_id: str,
    *,
    policy: FaultPolicy,
    title: str,
    source: str,
    environment: str,
    hosts: list[str],
    services: list[str],
    klass: str,
    impact: str,
    urgency: str,
    detected_at: dt.datetime,
    by: str,
    when: dt.datetime,
    assignee: str | None = None,
    fingerprints: list[str] | None = None,
    evidence: list[str] | None = None,
    repeat_of: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """The data of a new incident (not yet validated or written)."""
    priority = (policy.matrix.get(impact) or {}).get(urgency, "")
    prints = list(dict.fromkeys(fingerprints or []))
    return {
        "id": incident_id,
        "title": title.strip(),
        "detected_at": detected_at.replace(microsecond=0).isoformat(),
        "source": source,
        "environment": environment,
        "hosts": list(dict.fromkeys(hosts)),
        "services": list(dict.fromkeys(services)),
        "class": klass,
        "class_confirmed": False,
        "impact": impact,
        "urgency": urgency,
        "priority": priority,
        "assignee": assignee,
        "status": "open",
        "fingerprints": prints,
        "signals": dict.fromkeys(prints, "firing") if evidence else {},
        "evidence": list(evidence or []),
        "repeat_of": repeat_of,
        "problem": None,
        "resolution": None,
        "closure": None,
        "timeline": [
            entry(
                "opened",
                by,
                when,
                source=source,
                priority=priority,
                evidence=evidence[0] if evidence else None,
                note=note.strip(),
            )
        ],
    }


def repeat_of(incidents: list[Incident], fingerprints: list[str]) -> str | None:
    """The newest earlier incident with one of these fingerprints (a repeat incident)."""
    earlier = [i for i in incidents if set(i.fingerprints) & set(fingerprints)]
    return earlier[-1].id if earlier else None


@under_commit_lock  # the next id, or the timeline read, stays ours until committed
def open_incident(
    project: Project,
    *,
    title: str,
    person: str,
    klass: str,
    impact: str,
    urgency: str,
    environment: str = "lab",
    hosts: tuple[str, ...] = (),
    services: tuple[str, ...] = (),
    source: str = "user_report",
    detected_at: dt.datetime | None = None,
    assignee: str | None = None,
    fingerprint: str | None = None,
    note: str = "",
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Record a fault someone reported (or an alert) as an incident, committed as that person.

    With a fingerprint (an alert's identity) an active incident that already has it takes the
    report as a new signal instead: alerts that repeat never open duplicates.

    Example:
        open_incident(find_project(), title="Orders page times out", person="alice",
                      klass="software", impact="high", urgency="high", environment="production",
                      hosts=("prod-app1",), services=("shop",))
    """
    policy = load_fault_policy(project)
    when = moment(now)
    detected = (detected_at or when).replace(microsecond=0)
    new_id = next_id(project, "incident")
    file = str(incident_file(project, new_id))
    problems = [p for p in [person_problem(policy, person, file, "--as")] if p]
    if assignee:
        problems += [p for p in [person_problem(policy, assignee, file, "assignee")] if p]
    if klass not in policy.classes:
        problems.append(
            Problem(f"unknown class {klass!r}", file, "class", f"use: {', '.join(policy.classes)}")
        )
    if source not in SOURCES:
        problems.append(
            Problem(f"unknown source {source!r}", file, "source", f"use: {', '.join(SOURCES)}")
        )
    if fingerprint is not None and not fingerprint.strip():
        problems.append(
            Problem(
                "the fingerprint is empty",
                file,
                "--fingerprint",
                "give the alert's identity, or leave the option out",
            )
        )
    if detected.tzinfo is None:
        problems.append(Problem("no time zone", file, "detected_at", "add an offset, e.g. +01:00"))
    elif detected > when:
        problems.append(
            Problem("detected in the future", file, "detected_at", "give when it was found")
        )
    problems += host_problems(project, environment, list(hosts), file)
    if problems:
        raise OpsledgerError(problems)
    incidents, _ = scan_incidents(project)  # a broken file must not stop recording a fault
    if fingerprint:
        same = [i for i in incidents if i.active and fingerprint in i.fingerprints]
        if same:
            incident = same[0]
            incident.timeline.append(
                entry("detected", person, when, fingerprint=fingerprint, note=note.strip())
            )
            sha = record_step(
                project,
                {incident.path: incident_text(incident)},
                f"Incident {incident.id}: {fingerprint} again (reported by {person})",
                person=policy.people[person],
                key=signing_key,
            )
            return StepResult(Step.UPDATED, IncidentStatus(incident.status), incident, sha)
    data = new_incident_data(
        new_id,
        policy=policy,
        title=title,
        source=source,
        environment=environment,
        hosts=list(hosts),
        services=list(services),
        klass=klass,
        impact=impact,
        urgency=urgency,
        detected_at=detected,
        by=person,
        when=when,
        assignee=assignee,
        fingerprints=[fingerprint] if fingerprint else [],
        repeat_of=repeat_of(incidents, [fingerprint]) if fingerprint else None,
        note=note,
    )
    incident = Incident(new_id, incident_file(project, new_id), data)
    sha = record_step(
        project,
        {incident.path: incident_text(incident)},
        f"Incident {new_id} opened ({data['priority']}, {klass}): {data['title']}",
        person=policy.people[person],
        key=signing_key,
    )
    return StepResult(Step.OPENED, IncidentStatus.OPEN, incident, sha)


# --- steps on an existing incident ---------------------------------------------------------


Mutation = Callable[[Incident, FaultPolicy, dt.datetime], tuple[dict[str, Any], list[Problem]]]


@under_commit_lock  # the next id, or the timeline read, stays ours until committed
def take_step(
    project: Project,
    incident_id: str,
    *,
    person: str,
    step: Step,
    allowed: tuple[str, ...],
    mutate: Mutation,
    message: str,
    now: dt.datetime | None,
    signing_key: Path | None,
    policy: FaultPolicy | None = None,
    extra_files: Mapping[Path, str] | None = None,
) -> StepResult:
    """Check the person and the status, apply the step, write and commit as that person.

    `extra_files` (diagnostics output) are written and committed with the step, or not at all.
    """
    extra_files = extra_files or {}
    policy = policy or load_fault_policy(project)
    incident = load_incident(project, incident_id)
    file = str(incident.path)
    when = moment(now)
    problems = [p for p in [person_problem(policy, person, file, "--as")] if p]
    if incident.status not in allowed:
        problems.append(
            Problem(
                f"{incident_id} is {incident.status}",
                file,
                "status",
                f"{step.value} needs an incident that is {' or '.join(allowed)}",
            )
        )
    if problems:
        raise OpsledgerError(problems)
    added, found = mutate(incident, policy, when)
    if found:
        raise OpsledgerError(found)
    incident.timeline.append(entry(str(added.pop("action")), person, when, **added))
    sha = record_step(
        project,
        {incident.path: incident_text(incident), **extra_files},
        f"Incident {incident_id} {message}",
        person=policy.people[person],
        key=signing_key,
    )
    return StepResult(step, IncidentStatus(incident.status), incident, sha)


def acknowledge(
    project: Project,
    incident_id: str,
    *,
    person: str,
    note: str = "",
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Acknowledge an open incident: its response clock stops; unassigned, it becomes yours.

    Example:
        acknowledge(find_project(), "INC-0001", person="bob")
    """

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        incident.data["status"] = "acknowledged"
        if not incident.data.get("assignee"):
            incident.data["assignee"] = person
        return {"action": "acknowledged", "note": note.strip()}, []

    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.ACKNOWLEDGED,
        allowed=("open",),
        mutate=mutate,
        message=f"acknowledged by {person}",
        now=now,
        signing_key=signing_key,
    )


def assign(
    project: Project,
    incident_id: str,
    *,
    person: str,
    to: str,
    note: str = "",
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Give an incident to someone (a person of people.yml).

    Example:
        assign(find_project(), "INC-0001", person="alice", to="bob")
    """

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        problem = person_problem(policy, to, str(incident.path), "--to")
        if problem:
            return {}, [problem]
        incident.data["assignee"] = to
        return {"action": "assigned", "to": to, "note": note.strip()}, []

    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.ASSIGNED,
        allowed=(*ACTIVE, "resolved"),
        mutate=mutate,
        message=f"assigned to {to} by {person}",
        now=now,
        signing_key=signing_key,
    )


def add_note(
    project: Project,
    incident_id: str,
    *,
    person: str,
    text: str,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Write down what you found or did (the handling record the summary is made from).

    Example:
        add_note(find_project(), "INC-0001", person="bob", text="postgres log: out of disk")
    """

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        if len(text.strip()) < 3:
            return {}, [Problem("the note is empty", str(incident.path), "--text", "say something")]
        return {"action": "note", "text": text.strip()}, []

    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.NOTED,
        allowed=(*ACTIVE, "resolved"),
        mutate=mutate,
        message=f"note by {person}",
        now=now,
        signing_key=signing_key,
    )


def paused(incident: Incident) -> bool:
    state = False
    for item in incident.timeline:
        if item.get("action") == "paused":
            state = True
        elif item.get("action") in ("resumed", "resolved", "closed"):
            state = False
    return state


def pause(
    project: Project,
    incident_id: str,
    *,
    person: str,
    reason: str,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Stop the resolution clock while waiting on the customer, where sla.yml allows it.

    Example:
        pause(find_project(), "INC-0004", person="bob", reason="waiting on customer for a window")
    """

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        file = str(incident.path)
        terms = policy.terms.get(incident.priority)
        if terms is None or not terms.pausable:
            raise OpsledgerError(
                Problem(
                    f"{incident.priority} clocks do not pause",
                    policy_file("sla.yml"),
                    "pauses.priorities",
                    "keep working it; only priorities listed there may wait on the customer",
                ),
                EXIT_DENIED,
            )
        found = []
        if paused(incident):
            found.append(Problem("already paused", file, "status", "resume it first"))
        if len(reason.strip()) < 5:
            found.append(Problem("say who you wait for", file, "--reason", "e.g. customer"))
        return {"action": "paused", "reason": reason.strip()}, found

    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.PAUSED,
        allowed=("acknowledged",),
        mutate=mutate,
        message=f"paused by {person}: {reason.strip()}",
        now=now,
        signing_key=signing_key,
    )


def resume(
    project: Project,
    incident_id: str,
    *,
    person: str,
    note: str = "",
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Start the resolution clock again after a pause.

    Example:
        resume(find_project(), "INC-0004", person="bob", note="customer answered")
    """

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        if not paused(incident):
            return {}, [Problem("not paused", str(incident.path), "status", "nothing to resume")]
        return {"action": "resumed", "note": note.strip()}, []

    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.RESUMED,
        allowed=("acknowledged",),
        mutate=mutate,
        message=f"resumed by {person}",
        now=now,
        signing_key=signing_key,
    )
