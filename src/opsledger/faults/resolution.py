"""Resolving and closing an incident: only with proof the service is back, and with a cause.

A person resolves an incident with the change that fixed it — its run must have succeeded and
its verification passed, on the incident's environment and hosts, after the fault was detected
(the emergency path for P1/P2), and its record must be evidence (committed by the CI identity:
a record anyone typed proves nothing) — or with a recovery test: `opsledger verify` on the affected
hosts, run through `recovery_test` and recorded in the timeline, passing after the fault was
last seen. Without that proof the step is denied (exit 3) and nothing is written. Closing needs
the cause and the fault class confirmed (or corrected) by a person, and for the priorities
policy names a root-cause summary.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from opsledger.errors import EXIT_DENIED, OpsledgerError, Problem
from opsledger.faults.incidents import ACTIVE, Step, StepResult, take_step
from opsledger.faults.policy import FaultPolicy
from opsledger.faults.store import Incident, incident_file, load_incident
from opsledger.project import Project
from opsledger.records import Record, Verified, run_record_path

SIGHTINGS = ("opened", "detected", "reopened")  # timeline steps that saw the fault


def last_seen_index(incident: Incident) -> int:
    """Index of the newest timeline entry that saw the fault (opened, detected, reopened)."""
    return max(
        (i for i, e in enumerate(incident.timeline) if e.get("action") in SIGHTINGS),
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
        "result": Verified.PASSED if checked.ok else Verified.FAILED,
        "passed": checked.count(Verified.PASSED),
        "failed": len(checked.failures),
        "skipped": checked.count(Verified.SKIPPED),
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


def evidenced_runs(project: Project, change_id: str) -> tuple[list[Record], list[str]]:
    """The change's run records that count as evidence, and why each other one does not.

    A run record is a JSON file anyone can write and commit; only what the CI identity
    committed on the protected branch, for the change as requested, is evidence
    (`evidence.run_evidence`, as promotion and audit judge it). Without this a person could
    resolve an incident, or mark a problem fixed, with a record they typed themselves.
    """
    from opsledger.base import resolve_base
    from opsledger.evidence import run_evidence

    trusted, why_not = [], []
    judged = run_evidence(project, resolve_base(project), only=lambda r: r.change == change_id)
    for evidence in judged:
        if evidence.record is None:
            continue
        if evidence.trusted:
            trusted.append(evidence.record)
        else:
            why_not.append(
                f"run of {evidence.record.finished_at[:19]}: no evidence "
                f"({'; '.join(evidence.reasons)})"
            )
    return trusted, why_not


def qualifying_run(
    project: Project, incident: Incident, change_id: str
) -> tuple[Record | None, list[str]]:
    """The change's newest successful, verified run that can have fixed this incident.

    Only runs that count as evidence (`evidenced_runs`). It must have finished after the fault
    was seen: detected_at, or the commit that opened the incident when that is earlier (git
    time is the authority, the file only a claim).
    Returns the run (or None) and, for each run that does not count, why not.
    """
    from opsledger.faults.queries import histories

    detected = dt.datetime.fromisoformat(incident.data["detected_at"])
    stamps = histories(project, [incident])[incident.id].stamps
    if stamps and stamps[0] is not None:
        detected = min(detected, stamps[0].at)
    reopened = [
        stamp.at
        for entry, stamp in zip(incident.timeline, stamps, strict=False)
        if entry.get("action") == "reopened" and stamp is not None
    ]
    runs, why_not = evidenced_runs(project, change_id)
    best = None
    for run in runs:
        verified = (run.verification or {}).get("status")
        reasons = []
        if run.result != "success":
            reasons.append(f"ended {run.result}")
        if verified != Verified.PASSED:
            reasons.append(f"verification {verified or 'missing'}")
        if run.environment != incident.environment:
            reasons.append(f"ran on {run.environment}")
        if incident.hosts and not set(run.hosts) & set(incident.hosts):
            reasons.append(f"touched {', '.join(run.hosts) or 'no host'}, not the affected hosts")
        finished = dt.datetime.fromisoformat(run.finished_at)
        if finished < detected:
            reasons.append("finished before the fault was detected")
        elif reopened and finished < reopened[-1]:
            reasons.append("finished before the incident was reopened (it did not fix it)")
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
                e
                for i, e in enumerate(incident.timeline)
                if i > seen and e.get("action") == "recovery_test"
            ]
            if not tests or tests[-1].get("result") != Verified.PASSED:
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


def reopen(
    project: Project,
    incident_id: str,
    *,
    person: str,
    reason: str,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> StepResult:
    """Reopen a resolved incident whose fault is still there (the user says it is not fixed).

    The resolution is withdrawn (it stays in the timeline) and the incident is active again:
    acknowledged when someone had acknowledged it, else open. Resolving it again needs new
    proof: a recovery test after the reopening, or a fix whose run finished after it. The
    resolution clock resumes where the resolution stopped it (the time the service was
    believed restored is not counted). A closed incident stays closed: a fault that returns
    after closing is a new incident (`repeat_of`), counted as a repeat.

    Example:
        reopen(find_project(), "INC-0001", person="alice",
               reason="Orders still time out for EU customers")
    """

    def mutate(incident: Incident, policy: FaultPolicy, when: dt.datetime):
        if len(reason.strip()) < 10:
            return {}, [
                Problem(
                    "say why it is not fixed",
                    str(incident.path),
                    "--reason",
                    "what still fails, and who says so",
                )
            ]
        was = incident.data.get("resolution") or {}
        answered = any(e.get("action") == "acknowledged" for e in incident.timeline)
        incident.data["status"] = "acknowledged" if answered else "open"
        incident.data["resolution"] = None
        return {
            "action": "reopened",
            "reason": reason.strip(),
            "resolution_was": was.get("change") or was.get("how"),
        }, []

    return take_step(
        project,
        incident_id,
        person=person,
        step=Step.REOPENED,
        allowed=("resolved",),
        mutate=mutate,
        message=f"reopened by {person}: {reason.strip()}"[:200],
        now=now,
        signing_key=signing_key,
    )
