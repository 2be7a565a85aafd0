"""Incidents as code: one function per step of ITIL incident handling, each step a commit.

open → acknowledged → resolved → closed. A person opens an incident (a user report, an alert)
or a detection does (faults.detect); someone acknowledges it (the response clock stops),
assigns it, notes what they find, collects diagnostics, pauses the clock while waiting on the
customer where sla.yml allows, and resolves it — only with proof that the service is back: the
fix's change ran successfully *and verified*, or a recovery test (`opsledger verify` on the
affected hosts) recorded with the incident passed after the fault was last seen. Closing needs
the cause and the fault class confirmed by a person, and for the priorities policy names (P1,
P2) a root-cause summary. Every step appends a timeline entry and is committed as the person
who took it; nothing is written when a step is invalid (exit 2) or not allowed (exit 3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from opsledger.errors import EXIT_DENIED, OpsledgerError, Problem
from opsledger.faults.ledger import FileHistory, Stamp, commit_step, timeline_history
from opsledger.faults.policy import FaultPolicy, load_fault_policy, person_problem
from opsledger.faults.sla import IncidentClocks, SlaState, incident_clocks
from opsledger.faults.store import (
    ACTIVE,
    SOURCES,
    Incident,
    diagnostics_dir,
    incident_file,
    load_incident,
    load_incidents,
    next_id,
    write_incident,
)
from opsledger.project import Project
from opsledger.records import Record, change_runs, run_record_path


class IncidentStatus(str, Enum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Step(str, Enum):
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
    if detected.tzinfo is None:
        problems.append(Problem("no time zone", file, "detected_at", "add an offset, e.g. +01:00"))
    elif detected > when:
        problems.append(
            Problem("detected in the future", file, "detected_at", "give when it was found")
        )
    problems += host_problems(project, environment, list(hosts), file)
    if problems:
        raise OpsledgerError(problems)
    incidents, _ = load_incidents(project)
    if fingerprint:
        same = [i for i in incidents if i.active and fingerprint in i.fingerprints]
        if same:
            incident = same[0]
            incident.timeline.append(
                entry("detected", person, when, fingerprint=fingerprint, note=note.strip())
            )
            path = write_incident(incident)
            sha = commit_step(
                project,
                [path],
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
    path = write_incident(incident)
    sha = commit_step(
        project,
        [path],
        f"Incident {new_id} opened ({data['priority']}, {klass}): {data['title']}",
        person=policy.people[person],
        key=signing_key,
    )
    return StepResult(Step.OPENED, IncidentStatus.OPEN, incident, sha)


# --- steps on an existing incident ---------------------------------------------------------


Mutation = Callable[[Incident, FaultPolicy, dt.datetime], tuple[dict[str, Any], list[Problem]]]


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
    extra_paths: tuple[Path, ...] = (),
) -> StepResult:
    """Check the person and the status, apply the step, write, commit as that person."""
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
    path = write_incident(incident)
    sha = commit_step(
        project,
        [path, *extra_paths],
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
        allowed=ACTIVE + ("resolved",),
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
        allowed=ACTIVE + ("resolved",),
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
                    "policies/sla.yml",
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


def last_seen_index(incident: Incident) -> int:
    """Index of the newest timeline entry that saw the fault (opened or detected again)."""
    return max(
        (i for i, e in enumerate(incident.timeline) if e.get("action") in ("opened", "detected")),
        default=0,
    )


def recovery_test(
    project: Project,
    incident_id: str,
    *,
    person: str,
    suites: tuple[str, ...] = (),
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Run the recovery test — `opsledger verify` on the affected hosts — and record its outcome.

    A passing test recorded after the fault was last seen lets a person resolve the incident
    (`resolve(..., recovery_test=True)`); a failing one is recorded too.

    Example:
        result = recovery_test(find_project(), "INC-0001", person="bob", suites=("postgresql",))
        result.extra["passed"], result.extra["failed"]
    """
    from opsledger.verify import verify

    incident = load_incident(project, incident_id)
    if not incident.hosts:
        raise OpsledgerError(
            Problem(
                "the incident names no host to test",
                str(incident.path),
                "hosts",
                "a recovery test verifies the affected hosts: resolve with --change instead",
            )
        )
    if incident.status not in ACTIVE:
        raise OpsledgerError(
            Problem(
                f"{incident_id} is {incident.status}",
                str(incident.path),
                "status",
                "test an open or acknowledged incident",
            )
        )
    checked = verify(
        project,
        environment=incident.environment,
        targets=",".join(incident.hosts),
        suites=suites,
    )
    outcome = {
        "result": "passed" if checked.ok else "failed",
        "passed": checked.count("passed"),
        "failed": len(checked.failures),
        "skipped": checked.count("skipped"),
        "suites": list(suites),
        "failures": [f"{o.host}: {o.test}: {o.message}"[:200] for o in checked.failures[:10]],
    }

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        return {"action": "recovery_test", **outcome}, []

    result = take_step(
        project,
        incident_id,
        person=person,
        step=Step.TESTED,
        allowed=ACTIVE,
        mutate=mutate,
        message=f"recovery test {outcome['result']} ({person})",
        now=now,
        signing_key=signing_key,
    )
    result.extra = outcome
    return result


def qualifying_run(
    project: Project, incident: Incident, change_id: str
) -> tuple[Record | None, list[str]]:
    """The change's newest successful, verified run that can have fixed this incident.

    Returns the run (or None) and, for each run that does not count, why not.
    """
    detected = dt.datetime.fromisoformat(incident.data["detected_at"])
    why_not, best = [], None
    for run in change_runs(project):
        if run.change != change_id:
            continue
        verified = (run.verification or {}).get("status")
        reasons = []
        if run.result != "success":
            reasons.append(f"ended {run.result}")
        if verified != "passed":
            reasons.append(f"verification {verified or 'missing'}")
        if run.environment != incident.environment:
            reasons.append(f"ran on {run.environment}")
        if incident.hosts and not set(run.hosts) & set(incident.hosts):
            reasons.append(f"touched {', '.join(run.hosts) or 'no host'}, not the affected hosts")
        if dt.datetime.fromisoformat(run.finished_at) < detected:
            reasons.append("finished before the fault was detected")
        if reasons:
            why_not.append(f"run of {run.finished_at[:19]}: {'; '.join(reasons)}")
        else:
            best = run
    return best, why_not


def resolve(
    project: Project,
    incident_id: str,
    *,
    person: str,
    summary: str,
    change: str | None = None,
    recovery_test: bool = False,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Mark the service restored — with proof: the fix's verified run, or a recovery test.

    `change`: the change that fixed it (the emergency path for P1/P2) must have a successful
    run whose verification passed, on the incident's environment and hosts, after the fault
    was detected. `recovery_test`: a passing recovery test recorded after the fault was last
    seen. Without proof the step is denied (exit 3) and nothing is written.

    Example:
        resolve(find_project(), "INC-0001", person="alice", change="CHG-0007",
                summary="PostgreSQL restarted by the emergency change; verified")
    """
    if bool(change) == recovery_test:
        raise OpsledgerError(
            Problem(
                "say how the service was restored",
                str(incident_file(project, incident_id)),
                "resolution",
                "give --change CHG-... (the fix) or --recovery-test (after opsledger incident "
                "verify)",
            )
        )

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        file = str(incident.path)
        if len(summary.strip()) < 10:
            return {}, [Problem("say what restored it", file, "--summary", "one sentence")]
        resolution: dict[str, Any] = {"summary": summary.strip()}
        if change:
            from opsledger.changes import load_change

            load_change(project, change)  # an unknown or invalid change is exit 2
            run, why_not = qualifying_run(project, incident, change)
            if run is None:
                raise OpsledgerError(
                    Problem(
                        f"{change} has no successful, verified run on "
                        f"{incident.environment}:{','.join(incident.hosts) or 'its hosts'} after "
                        f"the fault was detected"
                        + (f" ({'; '.join(why_not)})" if why_not else " (it never ran)"),
                        file,
                        "resolution.change",
                        f"apply it (opsledger apply {change}); a run with --skip-verify does not "
                        "count",
                    ),
                    EXIT_DENIED,
                )
            started = dt.datetime.fromisoformat(run.started_at)
            record = run_record_path(project, change, started).relative_to(project.root)
            resolution.update(how="change", change=change, run=str(record))
        else:
            seen = last_seen_index(incident)
            tests = [
                e for i, e in enumerate(incident.timeline) if i > seen and e.get("action") ==
                "recovery_test"
            ]
            if not tests or tests[-1].get("result") != "passed":
                raise OpsledgerError(
                    Problem(
                        "no passing recovery test since the fault was last seen"
                        + (f" (the last one {tests[-1].get('result')})" if tests else ""),
                        file,
                        "resolution.recovery_test",
                        f"run opsledger incident verify {incident.id} once the service is back",
                    ),
                    EXIT_DENIED,
                )
            resolution.update(how="recovery_test")
        incident.data["status"] = "resolved"
        incident.data["resolution"] = resolution
        return {"action": "resolved", **resolution}, []

    how = f"by {change}" if change else "after a recovery test"
    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.RESOLVED,
        allowed=ACTIVE,
        mutate=mutate,
        message=f"resolved {how} ({person})",
        now=now,
        signing_key=signing_key,
    )


def close(
    project: Project,
    incident_id: str,
    *,
    person: str,
    cause: str,
    klass: str,
    root_cause: str = "",
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Close a resolved incident: the cause, the class confirmed, a root cause where required.

    Example:
        close(find_project(), "INC-0001", person="alice", klass="software",
              cause="PostgreSQL was stopped by hand during maintenance",
              root_cause="An operator stopped the cluster on the wrong host; hosts now show "
                         "their role in the prompt")
    """

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        file = str(incident.path)
        found = []
        if klass not in policy.classes:
            found.append(
                Problem(
                    f"unknown class {klass!r}",
                    file,
                    "--class",
                    f"confirm the class: {', '.join(policy.classes)}",
                )
            )
        if len(cause.strip()) < 10:
            found.append(Problem("the cause is missing", file, "--cause", "say what caused it"))
        needs_root = incident.priority in policy.root_cause_priorities
        if needs_root and len(root_cause.strip()) < policy.root_cause_min_chars:
            found.append(
                Problem(
                    f"a {incident.priority} incident closes with a root-cause summary of at "
                    f"least {policy.root_cause_min_chars} characters",
                    file,
                    "--root-cause",
                    "say what failed, why, and what keeps it from happening again",
                )
            )
        if found:
            return {}, found
        before = incident.klass
        incident.data.update(
            status="closed",
            class_confirmed=True,
            closure={"cause": cause.strip(), "root_cause": root_cause.strip() or None},
        )
        incident.data["class"] = klass
        return {
            "action": "closed",
            "cause": cause.strip(),
            "class": klass,
            "class_was": before if before != klass else None,
            "root_cause": root_cause.strip(),
        }, []

    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.CLOSED,
        allowed=("resolved",),
        mutate=mutate,
        message=f"closed by {person}",
        now=now,
        signing_key=signing_key,
    )


# --- reading: one incident, a list ---------------------------------------------------------


def histories(project: Project, incidents: list[Incident]) -> dict[str, FileHistory]:
    """Git's stamps for each incident's timeline (one git log, one cat-file)."""
    current = {i.relative(project): i.timeline for i in incidents}
    found = timeline_history(project, "incidents/", current)
    return {i.id: found.get(i.relative(project), FileHistory(i.relative(project))) for i in incidents}


@dataclass
class IncidentView:
    incident: Incident
    clocks: IncidentClocks
    stamps: list[Stamp | None]
    diagnostics: list[str]


def show_incident(project: Project, incident_id: str, *, now: dt.datetime | None = None) -> IncidentView:
    """An incident with its clocks and every step dated by git.

    Example:
        view = show_incident(find_project(), "INC-0001")
        view.clocks.state, [(e["action"], s.at) for e, s in zip(view.incident.timeline, view.stamps)]
    """
    policy = load_fault_policy(project)
    incident = load_incident(project, incident_id)
    history = histories(project, [incident])[incident.id]
    folder = diagnostics_dir(project, incident_id)
    files = sorted(str(p.relative_to(project.root)) for p in folder.glob("*")) if folder.is_dir() else []
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
    policy = load_fault_policy(project)
    incidents, problems = load_incidents(project)
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
