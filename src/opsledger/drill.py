"""Disaster-recovery drills: prove a service's RTO and RPO on real hosts and record the proof.

`policies/dr.yml` names, per service, its objectives, its drill runbook and targets, and how
often it must be drilled. A drill runs that runbook (which declares the disaster, restores and
hands back its timeline through `set_stats`), runs the runbook's verification suites (the dr
suite checks the restored data against the timeline the drill left on the host), measures RTO
and RPO from the timeline and fails when an objective is missed. The same measurement serves a
drill run as a change (`opsledger apply` of a change using the runbook): either way the result
is a `drill` record under `records/drills/`, committed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsledger.errors import EXIT_DENIED, OpsledgerError, Problem
from opsledger.faults.detect import record_detection
from opsledger.gitrepo import head, is_repo
from opsledger.guard import Guard
from opsledger.identity import runner_identity
from opsledger.inventory import load_inventory
from opsledger.layout import policies_folder, policy_file
from opsledger.lock import locked
from opsledger.notify import notify_records
from opsledger.playbook_runs import PlaybookRun, run_playbook
from opsledger.policy.files import read_policy
from opsledger.procs import new_marker, run_env, start_time
from opsledger.project import Project
from opsledger.records import Record, RunResult, Verified, load_records, save_evidence, stamp
from opsledger.runbooks import load_runbook
from opsledger.verify import VerifyResult, verify

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
Events = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Service:
    """One service's DR objectives, in seconds, and how its drill runs."""

    name: str
    description: str
    runbook: str
    targets: str
    rto_s: float
    rpo_s: float
    drill_every_s: float
    direct_environments: tuple[str, ...]
    # pgBackRest backup type taken, and verified, before package changes on its targets
    # (os-patch, pg-minor-upgrade); None: no backup is required first.
    upgrade_backup: str | None = None


@dataclass
class Measurement:
    """RTO and RPO of one drill, and the marker counts behind the RPO."""

    rto_s: float | None
    rpo_s: float | None
    acknowledged: int
    restored: int
    lost: int
    timeline: list[dict[str, str]]  # [{"event": ..., "at": ISO time}], in order

    def as_dict(self) -> dict[str, Any]:
        return {
            "rto_s": self.rto_s,
            "rpo_s": self.rpo_s,
            "markers_acknowledged": self.acknowledged,
            "markers_restored": self.restored,
            "markers_lost": self.lost,
            "timeline": self.timeline,
        }


@dataclass
class DrillResult:
    service: Service
    environment: str
    passed: bool
    reasons: list[str]
    measurement: Measurement | None
    run: PlaybookRun | None = None
    verification: VerifyResult | None = None
    record: Record | None = None
    record_path: Path | None = None
    commit: str | None = None
    incidents: str = ""  # what the record did to incidents (faults.detect), for the operator


def seconds(text: Any) -> float | None:
    """'90s', '15m', '4h', '90d' -> seconds; None when it is not such a duration."""
    found = _DURATION.fullmatch(str(text))
    return float(found.group(1)) * _UNIT[found.group(2)] if found else None


def load_services(project: Project) -> dict[str, Service]:
    """Read and check policies/dr.yml; every problem at once.

    Example:
        load_services(find_project())["postgres"].rto_s  # 900.0
    """
    path = policies_folder(project.root, "dr.yml")
    file = str(path)
    data, problems = read_policy(project, "dr", "DR policy")
    if data is None:
        raise OpsledgerError(problems)
    services: dict[str, Service] = {}
    entries = data.get("services")
    if not isinstance(entries, dict) or not entries:
        raise OpsledgerError(
            Problem("no services", file, "services", "add services: {name: {runbook, rto, ...}}")
        )
    envs = sorted(p.parent.name for p in project.root.glob("inventories/*/hosts.yml"))
    for name, entry in entries.items():
        where = f"services.{name}"
        if not isinstance(entry, dict):
            problems.append(Problem("must be a mapping", file, where, "give runbook, rto, rpo"))
            continue
        unknown = sorted(
            set(entry)
            - {
                "description",
                "runbook",
                "targets",
                "rto",
                "rpo",
                "drill_every",
                "direct_environments",
                "upgrade_backup",
            }
        )
        for key in unknown:
            problems.append(Problem(f"unknown key {key!r}", file, f"{where}.{key}", "remove it"))
        durations = {}
        for key in ("rto", "rpo", "drill_every"):
            durations[key] = seconds(entry.get(key))
            if durations[key] is None or durations[key] <= 0:
                problems.append(
                    Problem(
                        f"{key} must be a duration, got {entry.get(key)!r}",
                        file,
                        f"{where}.{key}",
                        "write a number and a unit: 90s, 15m, 4h or 90d",
                    )
                )
        runbook = str(entry.get("runbook", ""))
        try:
            book = load_runbook(project, runbook)
            if book.raw.get("drill") != name:
                problems.append(
                    Problem(
                        f"runbook {runbook!r} does not drill {name!r}",
                        file,
                        f"{where}.runbook",
                        f"set drill: {name} in runbooks/{runbook}/runbook.yml, or name its drill",
                    )
                )
        except OpsledgerError as err:
            problems += [Problem(p.message, file, f"{where}.runbook", p.fix) for p in err.problems]
        direct = entry.get("direct_environments", [])
        if not isinstance(direct, list) or any(e not in envs for e in direct):
            problems.append(
                Problem(
                    f"direct_environments must list environments, got {direct!r}",
                    file,
                    f"{where}.direct_environments",
                    f"use some of: {', '.join(envs)}",
                )
            )
            direct = []
        if not problems:
            services[name] = Service(
                name,
                str(entry.get("description", "")),
                runbook,
                str(entry.get("targets", "all")),
                durations["rto"] or 0,
                durations["rpo"] or 0,
                durations["drill_every"] or 0,
                tuple(direct),
                entry.get("upgrade_backup"),
            )
    if problems:
        raise OpsledgerError(problems)
    return services


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")


def _markers(rows: Any) -> dict[int, float]:
    """[["12", "1763729000.12"], ...] (the timeline's marker lists) -> {12: 1763729000.12}."""
    found = {}
    for row in rows or []:
        if isinstance(row, list | tuple) and len(row) == 2:
            found[int(row[0])] = float(row[1])
    return found


def measure(evidence: dict[str, Any]) -> Measurement:
    """RTO and RPO from a drill's timeline (the runbook's set_stats data), on the host's clock.

    RTO runs from the declared disaster to the first marker acknowledged after the primary went
    down. RPO runs from the newest marker acknowledged before it went down back to the newest of
    those markers the restore brought back; every acknowledged marker missing is counted lost.

    Example:
        m = measure(run.data["opsledger_drill"])
        m.rto_s, m.rpo_s, m.lost
    """
    declared = float(evidence["declared_at"])
    down = float(evidence["down_at"])
    writable = evidence.get("writable_at")
    acked = _markers(evidence.get("acknowledged"))
    before = {i: t for i, t in acked.items() if t <= down}
    restored = {i: t for i, t in _markers(evidence.get("restored")).items() if t <= down}
    rto = round(float(writable) - declared, 3) if writable not in (None, "") else None
    rpo = None
    if before:
        last = max(before.values())
        # nothing restored: everything since the first marker is lost, at the very least
        point = max(restored.values()) if restored else min(before.values())
        rpo = round(max(0.0, last - point), 3)
    events = [
        ("first marker acknowledged", min(before.values()) if before else None),
        ("newest marker restored (recovery point)", max(restored.values()) if restored else None),
        ("last marker acknowledged before the disaster", max(before.values()) if before else None),
        ("disaster declared", declared),
        ("primary down, data directory destroyed", down),
        ("restore finished", evidence.get("restored_at")),
        ("writable again (first marker acknowledged)", writable),
    ]
    timeline = [
        {"event": name, "at": _iso(float(at))} for name, at in events if at not in (None, "")
    ]
    timeline.sort(key=lambda e: e["at"])
    return Measurement(
        rto,
        rpo,
        len(before),
        len(restored),
        len(set(before) - set(restored)),
        timeline,
    )


def judge(
    service: Service,
    measurement: Measurement | None,
    run: PlaybookRun | None,
    checked: VerifyResult | None,
) -> list[str]:
    """Why a drill failed ([] = passed): the run, the verification, then each objective."""
    reasons = []
    if run is not None and run.status != "successful":
        failures = [f"{h}: {f}" for h, r in sorted(run.hosts.items()) for f in r.failures]
        reasons.append(f"drill run {run.status}: " + ("; ".join(failures) or f"rc={run.rc}"))
    if checked is not None and not checked.ok:
        names = [f"{o.test}[{o.host}]: {o.message}" for o in checked.failures[:5]]
        reasons.append("verification failed: " + ("; ".join(names) or "no test passed"))
    if measurement is None:
        if not reasons:
            reasons.append("the drill handed back no timeline (opsledger_drill): nothing measured")
        return reasons
    if measurement.rto_s is None:
        reasons.append("RTO not measured: the service never acknowledged a write again")
    elif measurement.rto_s > service.rto_s:
        reasons.append(f"RTO {measurement.rto_s:.0f}s missed the objective {service.rto_s:.0f}s")
    if measurement.rpo_s is None:
        reasons.append("RPO not measured: no marker was acknowledged before the disaster")
    elif measurement.rpo_s > service.rpo_s:
        reasons.append(f"RPO {measurement.rpo_s:.0f}s missed the objective {service.rpo_s:.0f}s")
    return reasons


def drill_record(
    project: Project,
    service: Service,
    *,
    environment: str,
    started: dt.datetime,
    run: PlaybookRun | None,
    checked: VerifyResult | None,
    hosts: list[str],
    params: dict[str, Any],
    change: str | None = None,
    commit: bool = True,
) -> DrillResult:
    """Measure, judge and write (and commit) the drill record of one drill run.

    Used by `opsledger drill` and by `opsledger apply` for a change whose runbook drills.

    Example:
        result = drill_record(project, service, environment="lab", started=start, run=run,
                              checked=checked, hosts=["lab-db1", "lab-db2"], params={})
        result.passed, result.record_path
    """
    evidence = dict((run.data if run else {}).get("opsledger_drill") or {})
    measurement = None
    reasons: list[str] = []
    if evidence:
        try:
            measurement = measure(evidence)
        except (KeyError, TypeError, ValueError) as err:
            reasons.append(f"the drill's timeline is unreadable ({err!r})")
    reasons = reasons + judge(service, measurement, run, checked)
    finished = dt.datetime.now(dt.UTC)
    objectives = {"rto_s": service.rto_s, "rpo_s": service.rpo_s}
    record = Record(
        kind="drill",
        environment=environment,
        result=RunResult.FAILED if reasons else RunResult.SUCCESS,
        started_at=started.isoformat(),
        finished_at=finished.isoformat(),
        change=change,
        runbook=service.runbook,
        params=params,
        targets=service.targets,
        hosts=hosts,
        runner=runner_identity(),
        git_commit=head(project.root) if is_repo(project.root) else "",
        stats=run.host_stats() if run else {},
        verification={
            "result": (
                Verified.NOT_RUN
                if checked is None
                else Verified.PASSED
                if checked.ok
                else Verified.FAILED
            ),
            "passed": checked.count(Verified.PASSED) if checked else 0,
            "failed": len(checked.failures) if checked else 0,
            "skipped": checked.count(Verified.SKIPPED) if checked else 0,
        },
        findings=[{"service": service.name, "state": "failed", "reason": r} for r in reasons],
        measurements={
            "service": service.name,
            "objectives": objectives,
            "backup": evidence.get("backup"),
            "restored_host": evidence.get("host"),
            "timeline_id": evidence.get("timeline"),
            **(measurement.as_dict() if measurement else {}),
        },
    )
    result = DrillResult(
        service,
        environment,
        not reasons,
        reasons,
        measurement,
        run,
        checked,
        record,
    )
    if is_repo(project.root):
        verdict = "passed" if result.passed else "FAILED"
        numbers = ""
        if measurement and measurement.rto_s is not None and measurement.rpo_s is not None:
            numbers = (
                f" (RTO {measurement.rto_s:.0f}s/{service.rto_s:.0f}s, "
                f"RPO {measurement.rpo_s:.0f}s/{service.rpo_s:.0f}s)"
            )
        saved = save_evidence(
            project,
            record,
            started=started,
            name=f"{service.name}-{environment}",
            message=f"DR drill {service.name} {environment}: {verdict}{numbers}",
            commit=commit,
        )
        path = result.record_path = saved.path
        if commit:
            result.commit = saved.commit
            # a failed drill opens an incident
            result.incidents = record_detection(project, [path]).summary()
            notify_records(project, [path])  # policies/notifications.yml; never raises
    return result


def drill(
    project: Project,
    service_name: str,
    *,
    environment: str = "lab",
    params: dict[str, Any] | None = None,
    wait: float = 0,
    events: Events | None = None,
) -> DrillResult:
    """Run a service's DR drill on an environment, measure it, judge it, record it.

    Refused (exit 3) where policies/dr.yml does not allow a drill without a change; the
    targets are locked like an apply's (exit 4 when busy). A failed drill is recorded too.

    Example:
        result = drill(find_project(), "postgres", environment="lab")
        result.passed, result.measurement.rto_s, result.measurement.rpo_s, result.reasons
    """
    services = load_services(project)
    if service_name not in services:
        raise OpsledgerError(
            Problem(
                f"no DR service named {service_name!r}",
                policy_file("dr.yml"),
                "services",
                f"use one of: {', '.join(sorted(services))}",
            )
        )
    service = services[service_name]
    inventory = project.require_environment(environment)
    if environment not in service.direct_environments:
        raise OpsledgerError(
            Problem(
                f"a {service.name} drill on {environment} is destructive work on real systems",
                policy_file("dr.yml"),
                f"services.{service.name}.direct_environments",
                f"run it as a change: opsledger change new --runbook {service.runbook} "
                f"--env {environment} --targets {service.targets}",
            ),
            EXIT_DENIED,
        )
    runbook = load_runbook(project, service.runbook)
    params = dict(params or {})
    problems = runbook.param_problems(params, "--param")
    if problems:
        raise OpsledgerError(problems)
    hosts = sorted(h.name for h in load_inventory(inventory).match(service.targets))
    if not hosts:
        raise OpsledgerError(
            Problem(
                f"targets {service.targets!r} match no host of {environment}",
                policy_file("dr.yml"),
                f"services.{service.name}.targets",
                f"name a group of inventories/{environment}",
            )
        )
    identity = runner_identity()
    with locked(
        project,
        environment=environment,
        hosts=hosts,
        change=f"drill:{service.name}",
        owner=identity["person"],
        wait=wait,
    ) as held:
        started = dt.datetime.now(dt.UTC)
        if events:
            events({"event": "opsledger_phase", "phase": "run", "message": f"drilling {hosts}"})
        # Like an apply's: if this process dies, the guard ends the drill's playbook before the
        # hosts are free again (a drill kills and restores PostgreSQL).
        marker = new_marker(f"drill:{service.name}/{stamp(started)}")
        origin = held.origin.as_spec() if held.origin is not None else None
        guard = Guard(marker, held.fds, origin, None)
        held.note(run=marker, guard_pid=guard.pid, guard_start=start_time(guard.pid))
        try:
            run = run_playbook(
                project,
                playbook=runbook.playbook,
                inventory=inventory,
                limit=service.targets,
                params=params,
                timeout=runbook.timeout,
                event_handler=events,
                extra_env=run_env(marker),
            )
        finally:
            guard.done()
        checked = None
        if run.status == "successful" and runbook.verify_suites:
            if events:
                events({"event": "opsledger_phase", "phase": "verify", "message": "verifying"})
            checked = verify(
                project,
                environment=environment,
                targets=runbook.verify_targets or service.targets,
                suites=runbook.verify_suites,
            )
        return drill_record(
            project,
            service,
            environment=environment,
            started=started,
            run=run,
            checked=checked,
            hosts=hosts,
            params=params,
        )


@dataclass
class DrillDue:
    service: str
    environment: str
    last: Record | None
    overdue: bool
    days_since: float | None
    every_days: float
    direct: bool  # may run without a change here (direct_environments)


def drills_due(project: Project, *, now: dt.datetime | None = None) -> list[DrillDue]:
    """Per service and environment: the newest passing drill and whether it is overdue.

    Overdue: older than drill_every, or no passing drill at all on an environment that has drill
    records or allows direct drills.

    Example:
        [d for d in drills_due(find_project()) if d.overdue]
    """
    now = now or dt.datetime.now(dt.UTC)
    services = load_services(project)
    records = load_records(project, "drill")
    due = []
    for service in services.values():
        mine = [r for r in records if r.measurements.get("service") == service.name]
        envs = sorted({r.environment for r in mine} | set(service.direct_environments))
        for env in envs:
            passed = [r for r in mine if r.environment == env and r.result == RunResult.SUCCESS]
            last = passed[-1] if passed else None
            days = (now - last.finished).total_seconds() / 86400 if last else None
            overdue = last is None or days * 86400 > service.drill_every_s  # type: ignore[operator]
            due.append(
                DrillDue(
                    service.name,
                    env,
                    last,
                    overdue,
                    days,
                    service.drill_every_s / 86400,
                    env in service.direct_environments,
                )
            )
    return due


@dataclass
class DueDrills:
    ran: list[DrillResult]
    not_due: list[DrillDue]

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.ran)


def run_due_drills(
    project: Project,
    *,
    environment: str | None = None,
    now: dt.datetime | None = None,
    events: Events | None = None,
) -> DueDrills:
    """Drill every overdue service where it may run directly; elsewhere drills are changes.

    Overdue: the last passing drill is older than drill_every (drills_due).

    Example:
        due = run_due_drills(find_project(), environment="lab")
        [(r.service.name, r.passed) for r in due.ran]
    """
    ran, not_due = [], []
    for state in drills_due(project, now=now):
        if (environment and state.environment != environment) or not state.direct:
            continue
        if state.overdue:
            ran.append(drill(project, state.service, environment=state.environment, events=events))
        else:
            not_due.append(state)
    return DueDrills(ran, not_due)
