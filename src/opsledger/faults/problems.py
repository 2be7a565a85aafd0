"""Problems: the cause behind recurring incidents, its known error and workaround, its fix.

ITIL problem management on the same ledger: `problems/<ID>/problem.yml` groups incidents
(each incident also names its problem, in its own timeline), and moves open → known_error (the
root cause is known and a workaround exists — a runbook, which is how the knowledge base stays
executable) → fixed (a change removed the cause, proven by its successful, verified run) →
closed. `suggest_problems` finds the recurring faults nobody has named yet: the same
fingerprint in `repeat` incidents opened within `within_days` (policies/incidents.yml).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from opsledger.commitlock import under_commit_lock
from opsledger.errors import EXIT_DENIED, OpsledgerError, Problem
from opsledger.faults.incidents import entry, moment
from opsledger.faults.ledger import FileHistory, record_step, timeline_history
from opsledger.faults.policy import FaultPolicy, load_fault_policy, person_problem
from opsledger.faults.queries import histories
from opsledger.faults.resolution import evidenced_runs
from opsledger.faults.store import (
    Incident,
    ProblemRecord,
    incident_text,
    load_incident,
    load_incidents,
    load_problem,
    load_problems,
    next_id,
    problem_file,
    problem_text,
)
from opsledger.project import Project
from opsledger.records import Verified


class ProblemStatus(StrEnum):
    OPEN = "open"
    KNOWN_ERROR = "known_error"
    FIXED = "fixed"
    CLOSED = "closed"


@dataclass
class ProblemResult:
    status: ProblemStatus
    problem: ProblemRecord
    commit: str


def _link(incident: Incident, problem_id: str, person: str, when: dt.datetime) -> dict[Path, str]:
    """The incident's file with its link to the problem, for the problem step's commit."""
    incident.data["problem"] = problem_id
    incident.timeline.append(entry("linked", person, when, problem=problem_id))
    return {incident.path: incident_text(incident)}


def _incidents_for(
    project: Project, ids: tuple[str, ...], problem_id: str, file: str
) -> tuple[list[Incident], list[Problem]]:
    found, problems = [], []
    for incident_id in dict.fromkeys(ids):
        try:
            incident = load_incident(project, incident_id)
        except OpsledgerError as err:
            problems += err.problems
            continue
        other = incident.data.get("problem")
        if other and other != problem_id:
            problems.append(
                Problem(
                    f"{incident_id} already belongs to {other}",
                    file,
                    "incidents",
                    f"link it there (opsledger problem link {other} {incident_id})",
                )
            )
        elif other != problem_id:
            found.append(incident)
    return found, problems


@under_commit_lock  # the next id, or the timeline read, stays ours until committed
def open_problem(
    project: Project,
    *,
    title: str,
    incidents: tuple[str, ...],
    person: str,
    owner: str | None = None,
    root_cause: str = "",
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> ProblemResult:
    """Record a problem behind these incidents, committed (with each incident's link) as you.

    Example:
        open_problem(find_project(), title="lab-db1 disk fills with WAL", person="bob",
                     incidents=("INC-0003", "INC-0007", "INC-0011"))
    """
    policy = load_fault_policy(project)
    when = moment(now)
    problem_id = next_id(project, "problem")
    file = str(problem_file(project, problem_id))
    problems = [p for p in [person_problem(policy, person, file, "--as")] if p]
    if owner:
        problems += [p for p in [person_problem(policy, owner, file, "owner")] if p]
    if not incidents:
        problems.append(Problem("no incident", file, "incidents", "name at least one incident"))
    linked, found = _incidents_for(project, incidents, problem_id, file)
    problems += found
    if problems:
        raise OpsledgerError(problems)
    prints = list(dict.fromkeys(fp for i in linked for fp in i.fingerprints))
    record = ProblemRecord(
        problem_id,
        problem_file(project, problem_id),
        {
            "id": problem_id,
            "title": title.strip(),
            "status": "open",
            "owner": owner or person,
            "incidents": [i.id for i in linked],
            "fingerprints": prints,
            "root_cause": root_cause.strip() or None,
            "known_error": None,
            "fix_change": None,
            "timeline": [entry("opened", person, when, incidents=[i.id for i in linked])],
        },
    )
    files = {record.path: problem_text(record)}
    for incident in linked:
        files |= _link(incident, problem_id, person, when)
    sha = record_step(
        project,
        files,
        f"Problem {problem_id} opened ({len(linked)} incident(s)): {record.data['title']}",
        person=policy.people[person],
        key=signing_key,
    )
    return ProblemResult(ProblemStatus.OPEN, record, sha)


Mutation = Callable[[ProblemRecord, FaultPolicy, dt.datetime], tuple[dict[str, Any], list[Problem]]]


@under_commit_lock  # the next id, or the timeline read, stays ours until committed
def _problem_step(
    project: Project,
    problem_id: str,
    *,
    person: str,
    allowed: tuple[str, ...],
    mutate: Mutation,
    message: str,
    now: dt.datetime | None,
    signing_key: Path | None,
    extra: Callable[[dt.datetime], dict[Path, str]] | None = None,
) -> ProblemResult:
    policy = load_fault_policy(project)
    record = load_problem(project, problem_id)
    file = str(record.path)
    when = moment(now)
    problems = [p for p in [person_problem(policy, person, file, "--as")] if p]
    if record.status not in allowed:
        problems.append(
            Problem(
                f"{problem_id} is {record.status}",
                file,
                "status",
                f"this step needs a problem that is {' or '.join(allowed)}",
            )
        )
    if problems:
        raise OpsledgerError(problems)
    added, found = mutate(record, policy, when)
    if found:
        raise OpsledgerError(found)
    record.timeline.append(entry(str(added.pop("action")), person, when, **added))
    files = {record.path: problem_text(record), **(extra(when) if extra else {})}
    sha = record_step(
        project,
        files,
        f"Problem {problem_id} {message}",
        person=policy.people[person],
        key=signing_key,
    )
    return ProblemResult(ProblemStatus(record.status), record, sha)


def link_incidents(
    project: Project,
    problem_id: str,
    *,
    incidents: tuple[str, ...],
    person: str,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> ProblemResult:
    """Add incidents (another occurrence of the same fault) to a problem.

    Example:
        link_incidents(find_project(), "PRB-0001", incidents=("INC-0014",), person="bob")
    """
    pending: list[Incident] = []

    def mutate(record: ProblemRecord, policy: FaultPolicy, when: dt.datetime):
        linked, found = _incidents_for(project, incidents, record.id, str(record.path))
        if not linked and not found:
            found.append(Problem("already linked", str(record.path), "incidents", "nothing to do"))
        pending.extend(linked)
        record.data["incidents"] = list(dict.fromkeys([*record.incidents, *(i.id for i in linked)]))
        record.data["fingerprints"] = list(
            dict.fromkeys(
                [*record.data["fingerprints"], *(fp for i in linked for fp in i.fingerprints)]
            )
        )
        return {"action": "linked", "incidents": [i.id for i in linked]}, found

    return _problem_step(
        project,
        problem_id,
        person=person,
        allowed=("open", "known_error", "fixed"),
        mutate=mutate,
        message=f"linked {', '.join(incidents)} ({person})",
        now=now,
        signing_key=signing_key,
        extra=lambda when: {
            p: t for i in pending for p, t in _link(i, problem_id, person, when).items()
        },
    )


def known_error(
    project: Project,
    problem_id: str,
    *,
    person: str,
    root_cause: str,
    workaround: str,
    runbook: str | None = None,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> ProblemResult:
    """Record the root cause and the workaround (a runbook where one exists): a known error.

    Example:
        known_error(find_project(), "PRB-0001", person="bob", runbook="pg-backup",
                    root_cause="WAL piles up when the archive target is full",
                    workaround="Run a full backup to expire old WAL (runbook pg-backup)")
    """

    def mutate(record: ProblemRecord, policy: FaultPolicy, when: dt.datetime):
        file = str(record.path)
        found = []
        if len(root_cause.strip()) < 10:
            found.append(Problem("the root cause is missing", file, "--root-cause", "say why"))
        if len(workaround.strip()) < 10:
            found.append(Problem("the workaround is missing", file, "--workaround", "say how"))
        if runbook:
            from opsledger.runbooks import load_runbook

            try:
                load_runbook(project, runbook)
            except OpsledgerError as err:
                found += [Problem(p.message, file, "--runbook", p.fix) for p in err.problems]
        record.data.update(
            status="known_error",
            root_cause=root_cause.strip(),
            known_error={"workaround": workaround.strip(), "runbook": runbook},
        )
        return {
            "action": "known_error",
            "root_cause": root_cause.strip(),
            "runbook": runbook,
        }, found

    return _problem_step(
        project,
        problem_id,
        person=person,
        allowed=("open", "known_error"),
        mutate=mutate,
        message=f"known error recorded by {person}",
        now=now,
        signing_key=signing_key,
    )


def record_fix(
    project: Project,
    problem_id: str,
    *,
    person: str,
    change: str,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> ProblemResult:
    """Link the permanent fix: a change whose run succeeded and verified (exit 3 otherwise).

    Only runs that are evidence count (`resolution.evidenced_runs`), as for resolving.

    Example:
        record_fix(find_project(), "PRB-0001", person="bob", change="CHG-0012")
    """
    from opsledger.changes import load_change

    def mutate(record: ProblemRecord, policy: FaultPolicy, when: dt.datetime):
        load_change(project, change)
        evidenced, why_not = evidenced_runs(project, change)
        runs = [
            r
            for r in evidenced
            if r.result == "success" and (r.verification or {}).get("status") == Verified.PASSED
        ]
        if not runs:
            raise OpsledgerError(
                Problem(
                    f"{change} has no successful, verified run"
                    + (f" ({'; '.join(why_not)})" if why_not else ""),
                    str(record.path),
                    "fix_change",
                    f"apply it first (opsledger apply {change})",
                ),
                EXIT_DENIED,
            )
        record.data.update(status="fixed", fix_change=change)
        return {"action": "fixed", "change": change, "run_finished": runs[-1].finished_at}, []

    return _problem_step(
        project,
        problem_id,
        person=person,
        allowed=("open", "known_error"),
        mutate=mutate,
        message=f"fixed by {change} ({person})",
        now=now,
        signing_key=signing_key,
    )


def close_problem(
    project: Project,
    problem_id: str,
    *,
    person: str,
    summary: str,
    now: dt.datetime | None = None,
    signing_key: Path | None = None,
) -> ProblemResult:
    """Close a problem: fixed, or known error accepted (the summary says why no fix).

    Example:
        close_problem(find_project(), "PRB-0001", person="carol",
                      summary="No recurrence in 30 days after CHG-0012")
    """

    def mutate(record: ProblemRecord, policy: FaultPolicy, when: dt.datetime):
        if len(summary.strip()) < 10:
            return {}, [
                Problem("say why it is closed", str(record.path), "--summary", "a sentence")
            ]
        fixed = record.status == "fixed"
        record.data["status"] = "closed"
        return {
            "action": "closed",
            "summary": summary.strip(),
            "without_fix": not fixed or None,
        }, []

    return _problem_step(
        project,
        problem_id,
        person=person,
        allowed=("known_error", "fixed"),
        mutate=mutate,
        message=f"closed by {person}",
        now=now,
        signing_key=signing_key,
    )


# --- reading, and suggesting -----------------------------------------------------------------


def opened_at(incident: Incident, history: FileHistory) -> dt.datetime:
    """When git says the incident was opened (its detected_at while uncommitted)."""
    first = history.stamps[0] if history.stamps else None
    return first.at if first else dt.datetime.fromisoformat(incident.data["detected_at"])


@dataclass
class Suggestion:
    fingerprint: str
    incidents: list[str]
    title: str
    problem: str | None  # an existing problem some of them already belong to
    unlinked: list[str] = field(default_factory=list)


def suggest_problems(
    project: Project, *, now: dt.datetime | None = None, environment: str | None = None
) -> list[Suggestion]:
    """Recurring faults: fingerprints in `repeat` incidents opened within `within_days`.

    Example:
        [(s.fingerprint, s.incidents) for s in suggest_problems(find_project())]
    """
    if environment is not None:  # a typo must not read as "no recurring fault" (exit 2)
        project.require_environment(environment)
    policy = load_fault_policy(project)
    when = moment(now)
    incidents = load_incidents(project)
    if environment:
        incidents = [i for i in incidents if i.environment == environment]
    found = histories(project, incidents)
    recent = [i for i in incidents if opened_at(i, found[i.id]) >= when - policy.problem_within]
    by_print: dict[str, list[Incident]] = {}
    for incident in recent:
        for fingerprint in incident.fingerprints:
            by_print.setdefault(fingerprint, []).append(incident)
    suggestions, covered = [], set()
    for fingerprint, group in sorted(by_print.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        ids = [i.id for i in group]
        if len(group) < policy.problem_repeat or frozenset(ids) in covered:
            continue
        covered.add(frozenset(ids))
        unlinked = [i.id for i in group if not i.data.get("problem")]
        problems = sorted({i.data["problem"] for i in group if i.data.get("problem")})
        if not unlinked:
            continue
        suggestions.append(
            Suggestion(
                fingerprint,
                ids,
                f"Recurring: {group[-1].title}"[:160],
                problems[0] if problems else None,
                unlinked,
            )
        )
    return suggestions


@dataclass
class ProblemView:
    problem: ProblemRecord
    opened_at: dt.datetime | None
    age_days: float | None
    incidents: list[Incident]


def problem_views(
    project: Project, *, now: dt.datetime | None = None, problem_id: str | None = None
) -> list[ProblemView]:
    """Problems with their age (from the commit that opened them) and their incidents.

    Example:
        [(v.problem.id, v.problem.status, round(v.age_days)) for v in problem_views(find_project())]
    """
    when = moment(now)
    records = [load_problem(project, problem_id)] if problem_id else load_problems(project)
    current = {str(r.path.relative_to(project.root)): r.timeline for r in records}
    found = timeline_history(project, "problems/", current)
    incidents = {i.id: i for i in load_incidents(project)}
    views = []
    for record in records:
        history = found.get(str(record.path.relative_to(project.root)))
        first = history.stamps[0] if history and history.stamps else None
        views.append(
            ProblemView(
                record,
                first.at if first else None,
                (when - first.at).total_seconds() / 86400 if first else None,
                [incidents[i] for i in record.incidents if i in incidents],
            )
        )
    return views
