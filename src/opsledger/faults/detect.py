"""Incidents opened — and resolved — by what opsledger already detects.

Inspections, drift checks, change runs (verification, rollback) and DR drills each commit a
record. Right after, they hand its path to `record_detection`, which reads it like an auditor:

- a critical inspection finding, a drifted host, a failed verification test, a failed rollback,
  a failed drill or an alert Alertmanager lists (`opsledger alerts sync`) is a *signal* with a
  fingerprint (`inspection:lab:lab-db1:postgres_up`, `drift:lab:lab-app1`,
  `verification:lab:lab-db1:test_...`, `rollback:lab:lab-db1`, `drill:lab:postgres`,
  `alert:lab:PostgreSQLDown:<Alertmanager's fingerprint>`);
- signals of one host and fault class from one record become one incident (a stopped
  PostgreSQL fails `services` and `postgres_up`: one fault, one incident), or update the active
  incident that already carries one of those fingerprints — never a duplicate; each alert is
  an incident of its own (its fingerprint is its identity);
- a record that ran the same check again and found it clean marks that fingerprint clean; when
  all of an incident's fingerprints are clean, the incident is resolved by that evidence. A
  person still closes it (cause, class, and the root cause for P1/P2).

Every incident touched is committed in one commit, as the identity that commits evidence.
Detection never fails the operation that called it: the record is already committed, so a
problem here is logged (and `opsledger policy check` names policy problems), not raised.
OPSLEDGER_NO_INCIDENTS=1 or `detection.enabled: false` in policies/incidents.yml switch it off.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from opsledger.commitlock import under_commit_lock
from opsledger.errors import OpsledgerError, Problem
from opsledger.faults.incidents import entry, moment, new_incident_data, repeat_of
from opsledger.faults.ledger import record_step
from opsledger.faults.policy import FaultPolicy, load_fault_policy
from opsledger.faults.store import (
    AUTOMATION,
    Incident,
    incident_file,
    incident_text,
    next_id,
    scan_incidents,
)
from opsledger.gitrepo import is_repo
from opsledger.layout import policies_folder
from opsledger.project import Project
from opsledger.records import DriftState, Record, Verified
from opsledger.yamlio import load_json, load_yaml

log = logging.getLogger("opsledger.faults")
DISABLE = "OPSLEDGER_NO_INCIDENTS"
_PG_CHECKS = {"postgres_up", "replication", "backup_age", "pgbackrest_check", "pgbackrest_verify"}
_UNIT = re.compile(r"service (\S+) is")


class DetectionStatus(StrEnum):
    DISABLED = "disabled"  # switched off (environment or policy)
    QUIET = "quiet"  # nothing to open, update or resolve
    RECORDED = "recorded"  # incidents opened, updated or resolved, and committed
    FAILED = "failed"  # could not read the record or the policy; logged


@dataclass(frozen=True)
class Signal:
    """One thing a record says is broken."""

    fingerprint: str
    source: str
    environment: str
    subject: str  # host, or the drilled service
    hosts: tuple[str, ...]
    klass: str
    message: str
    services: tuple[str, ...] = ()
    change: str | None = None
    # alerts: impact and urgency from the severity label (else the source's), runbook links,
    # and the key that keeps each alert an incident of its own
    impact: str | None = None
    urgency: str | None = None
    runbooks: tuple[str, ...] = ()
    key: str = ""

    def __post_init__(self) -> None:
        # What a check or a test printed may span lines or carry control characters (a
        # warning before the error, a terminal escape); an incident's title is one line, so
        # every signal is one line from the start, whatever produced it.
        object.__setattr__(self, "message", _flat(self.message))
        object.__setattr__(self, "subject", _flat(self.subject))


_CONTROL_OR_SPACE = re.compile(r"[\x00-\x1f\x7f\s]+")


def _flat(text: str) -> str:
    """`text` on one line: runs of whitespace and control characters become one space.

    Not errors.one_line, which escapes them (a newline as backslash-n) and cuts error lines at
    200 characters: a title reads better with a space, and titles and notes have their own cuts.
    """
    return _CONTROL_OR_SPACE.sub(" ", text).strip()


@dataclass
class DetectionResult:
    status: DetectionStatus
    opened: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    commit: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the operator who ran the check: a P2 clock started is news.

        Empty when nothing was opened, updated or resolved (a failure is already logged).
        """
        parts = [
            f"{verb} {', '.join(ids)}"
            for verb, ids in (
                ("opened", self.opened),
                ("updated", self.updated),
                ("resolved by evidence", self.resolved),
            )
            if ids
        ]
        if not parts:
            return ""
        first = (self.opened or self.updated or self.resolved)[0]
        return f"incidents: {'; '.join(parts)} (opsledger incident show {first})"


class _Reader:
    """What clearing a fingerprint needs to know beyond the record: schedules, inventories."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._schedules: dict[str, list[str]] | None = None
        self._hosts: dict[tuple[str, str], set[str]] = {}
        self._records: dict[str, Record | None] = {}

    def schedule_checks(self, schedule: str) -> list[str]:
        if self._schedules is None:
            path = policies_folder(self.project.root, "inspections.yml")
            data = load_yaml(path, what="inspection plan") if path.is_file() else {}
            self._schedules = {
                str(name): list((spec or {}).get("checks") or [])
                for name, spec in (data.get("schedules") or {}).items()
            }
        return self._schedules.get(schedule, [])

    def hosts(self, environment: str, pattern: str) -> set[str]:
        key = (environment, pattern)
        if key not in self._hosts:
            from opsledger.inventory import load_inventory

            try:
                inventory = load_inventory(self.project.inventory_file(environment))
                self._hosts[key] = {h.name for h in inventory.match(pattern or "all")}
            except OpsledgerError:
                self._hosts[key] = set()
        return self._hosts[key]

    def record(self, relative: str) -> Record | None:
        if relative not in self._records:
            try:
                data = load_json(self.project.root / relative, root=self.project.root)
                self._records[relative] = Record.from_dict(data)
            except (OpsledgerError, ValueError, TypeError):
                self._records[relative] = None
        return self._records[relative]


# --- what a record says is broken ------------------------------------------------------------


def _klass(policy: FaultPolicy, source: str, default: str) -> str:
    rule = policy.sources.get(source)
    return (rule.klass if rule and rule.klass else None) or default


def signals(record: Record, policy: FaultPolicy) -> list[Signal]:
    """Every signal in one record (empty for a clean one).

    Example:
        [s.fingerprint for s in signals(record, policy)]  # ['inspection:lab:lab-db1:services']
    """
    env = record.environment
    found: list[Signal] = []
    if record.kind == "inspection" and "inspection" in policy.sources:
        for finding in record.findings:
            if finding.get("severity") != "critical":
                continue
            host, check = str(finding.get("host")), str(finding.get("check"))
            message = str(finding.get("message", ""))
            services: tuple[str, ...] = ()
            if check == "services" and (unit := _UNIT.search(message)):
                services = (unit.group(1),)
            elif check in _PG_CHECKS:
                services = ("postgresql",)
            found.append(
                Signal(
                    f"inspection:{env}:{host}:{check}",
                    "inspection",
                    env,
                    host,
                    (host,),
                    policy.inspection_classes.get(check)
                    or _klass(policy, "inspection", "software"),
                    f"{check}: {message}",
                    services,
                )
            )
    elif record.kind == "drift" and "drift" in policy.sources:
        drifted: dict[str, list[dict[str, Any]]] = {}
        for finding in record.findings:
            if finding.get("state") == DriftState.DRIFTED:
                drifted.setdefault(str(finding.get("host")), []).append(finding)
        for host, items in sorted(drifted.items()):
            roles = sorted({str(i.get("role")) for i in items})
            found.append(
                Signal(
                    f"drift:{env}:{host}",
                    "drift",
                    env,
                    host,
                    (host,),
                    _klass(policy, "drift", "configuration"),
                    f"{len(items)} task(s) drifted ({', '.join(roles)})",
                )
            )
    elif record.kind == "run":
        verification = record.verification or {}
        if verification.get("status") == Verified.FAILED and "verification" in policy.sources:
            for failure in verification.get("failures") or []:
                host, test = str(failure.get("host")), str(failure.get("test"))
                found.append(
                    Signal(
                        f"verification:{env}:{host}:{test}",
                        "verification",
                        env,
                        host,
                        (host,),
                        _klass(policy, "verification", "software"),
                        f"{test}: {failure.get('message', '')}"[:300],
                        change=record.change,
                    )
                )
        if record.result == "rollback_failed" and "rollback" in policy.sources:
            reason = str((record.rollback or {}).get("reason", ""))[:200]
            for host in record.hosts:
                found.append(
                    Signal(
                        f"rollback:{env}:{host}",
                        "rollback",
                        env,
                        host,
                        (host,),
                        _klass(policy, "rollback", "configuration"),
                        f"rollback of {record.change} failed: {reason}",
                        change=record.change,
                    )
                )
    elif record.kind == "alerts" and "alert" in policy.sources:
        found += _alert_signals(record, policy)
    elif record.kind == "drill" and record.result == "failed" and "drill" in policy.sources:
        service = str(record.measurements.get("service", "?"))
        reasons = "; ".join(str(f.get("reason", "")) for f in record.findings) or "failed"
        found.append(
            Signal(
                f"drill:{env}:{service}",
                "drill",
                env,
                service,
                tuple(record.hosts),
                _klass(policy, "drill", "software"),
                reasons[:300],
                (service,),
                record.change,
            )
        )
    return found


def _alert_signals(record: Record, policy: FaultPolicy) -> list[Signal]:
    """One signal per alert of a severity the policy prices (the Watchdog's `none` is not)."""
    found = []
    for finding in record.findings:
        rule = policy.alert_severities.get(str(finding.get("severity")))
        if rule is None:
            continue
        hosts = tuple(str(h) for h in finding.get("hosts") or [])
        name = str(finding.get("alert"))
        runbook = str(finding.get("runbook") or "")
        found.append(
            Signal(
                str(finding.get("fingerprint")),
                "alert",
                record.environment,
                f"{name} on {', '.join(hosts)}" if hosts else name,
                hosts,
                str(finding.get("class") or _klass(policy, "alert", "software")),
                str(finding.get("summary") or name)[:300],
                tuple(str(s) for s in finding.get("services") or []),
                impact=rule.impact,
                urgency=rule.urgency,
                runbooks=(runbook,) if runbook else (),
                key=str(finding.get("fingerprint")),
            )
        )
    return found


def _passing_verifications(record: Record) -> list[dict[str, Any]]:
    """The verifications in a run record that passed: the run's own, and its rollback's."""
    found = []
    for checked in (
        (record.verification or {}),
        ((record.rollback or {}).get("verification") or {}),
    ):
        if checked.get("status") == Verified.PASSED:
            found.append(checked)
    return found


def _failing_suites(incident: Incident, reader: _Reader) -> list[set[str]]:
    """The suites of the verifications that showed this incident's failures ({} = all)."""
    suites = []
    for path in incident.data.get("evidence") or []:
        record = reader.record(path)
        if record is not None and record.kind == "run":
            suites.append(set((record.verification or {}).get("suites") or []))
    return suites


def clears(record: Record, fingerprint: str, incident: Incident, reader: _Reader) -> bool:
    """Whether `record` ran the same check again and found that fingerprint clean.

    Example:
        clears(todays_daily_inspection, "inspection:lab:lab-db1:postgres_up", incident, reader)
    """
    kind, _, rest = fingerprint.partition(":")
    env, _, rest = rest.partition(":")
    if env != record.environment:
        return False
    if kind == "inspection" and record.kind == "inspection":
        host, _, check = rest.partition(":")
        schedule = str(record.measurements.get("schedule", ""))
        return (
            host in record.hosts
            and check in reader.schedule_checks(schedule)
            and not any(f.get("host") == host and f.get("check") == check for f in record.findings)
        )
    if kind == "drift" and record.kind == "drift":
        host = rest
        return host in record.hosts and not any(f.get("host") == host for f in record.findings)
    if kind == "drill" and record.kind == "drill":
        return record.result == "success" and record.measurements.get("service") == rest
    if kind == "alert" and record.kind == "alerts":
        # The snapshot proves it (faults.alerts): gone while the Watchdog fires, the same
        # Prometheus and Alertmanager running since the alert was last seen. Gone alone is not
        # evidence: a stopped or restarted Prometheus, a restarted Alertmanager lose alerts too.
        return (
            bool(record.measurements.get("watchdog"))
            and fingerprint in (record.measurements.get("resolved") or [])
            and not any(f.get("fingerprint") == fingerprint for f in record.findings)
        )
    if record.kind != "run":
        return False
    if kind == "verification":
        host = rest.partition(":")[0]
        needed = _failing_suites(incident, reader)
        for checked in _passing_verifications(record):
            ran = set(checked.get("suites") or [])
            covered = reader.hosts(record.environment, str(checked.get("targets", "")))
            # the same tests ran again: all suites, or every suite the failing run had
            if host in covered and (not ran or all(s and s <= ran for s in needed)):
                return True
        return False
    if kind == "rollback":
        host = rest
        return (
            record.result == "success"
            and (record.verification or {}).get("status") == Verified.PASSED
            and host in reader.hosts(record.environment, str(record.verification.get("targets")))
        )
    return False


# --- opening, updating, resolving ------------------------------------------------------------


def _title(source: str, group: list[Signal]) -> str:
    first = group[0]
    more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
    if source == "inspection":
        text = f"{first.subject}: {first.message}{more}"
    elif source == "drift":
        text = f"{first.subject} drifted from the desired state: {first.message}"
    elif source == "verification":
        text = f"{first.subject}: verification failed after {first.change}: {first.message}{more}"
    elif source == "rollback":
        text = f"{first.subject}: rollback of {first.change} failed, state unproven"
    elif source == "alert":
        text = f"{first.subject}: {first.message}"
    else:
        text = f"DR drill {first.subject} failed on {first.environment}: {first.message}"
    return text if len(text) <= 160 else text[:157] + "..."


def _open_or_update(
    project: Project,
    policy: FaultPolicy,
    incidents: list[Incident],
    group: list[Signal],
    evidence: str,
    detected: dt.datetime,
    when: dt.datetime,
    result: DetectionResult,
) -> Incident | None:
    prints = [s.fingerprint for s in group]
    hosts = sorted({h for s in group for h in s.hosts})
    services = sorted({v for s in group for v in s.services})
    runbooks = sorted({r for s in group for r in s.runbooks})
    same = [i for i in incidents if i.active and set(i.fingerprints) & set(prints)]
    if same:
        incident = same[0]
        if evidence in (incident.data.get("evidence") or []):
            return None  # this record was read before: nothing new
        firing = incident.data.get("signals") or {}
        if group[0].source == "alert" and all(firing.get(p) == "firing" for p in prints):
            return None  # the alert still fires, as the incident already says: nothing new
        new = [p for p in prints if p not in incident.fingerprints]
        incident.data["fingerprints"] = incident.fingerprints + new
        incident.data["signals"] = {
            **(incident.data.get("signals") or {}),
            **dict.fromkeys(prints, "firing"),
        }
        incident.data["evidence"] = [*incident.data.get("evidence", []), evidence]
        incident.data["hosts"] = list(dict.fromkeys([*incident.hosts, *hosts]))
        incident.data["services"] = list(dict.fromkeys([*incident.data["services"], *services]))
        if runbooks:
            incident.data["runbooks"] = list(
                dict.fromkeys([*(incident.data.get("runbooks") or []), *runbooks])
            )
        incident.timeline.append(
            entry(
                "detected",
                AUTOMATION,
                when,
                evidence=evidence,
                fingerprints=new,
                note="; ".join(s.message for s in group)[:500],
            )
        )
        result.updated.append(incident.id)
        return incident
    source = group[0].source
    rule = policy.sources[source]
    new_id = next_id(project, "incident", {i.id for i in incidents})
    data = new_incident_data(
        new_id,
        policy=policy,
        title=_title(source, group),
        source=source,
        environment=group[0].environment,
        hosts=hosts,
        services=services,
        klass=group[0].klass,
        impact=group[0].impact or rule.impact,
        urgency=group[0].urgency or rule.urgency,
        detected_at=min(detected, when),
        by=AUTOMATION,
        when=when,
        fingerprints=prints,
        evidence=[evidence],
        repeat_of=repeat_of(incidents, prints),
        note="; ".join(s.message for s in group)[:500],
    )
    if runbooks:
        data["runbooks"] = runbooks
    incident = Incident(new_id, incident_file(project, new_id), data)
    incidents.append(incident)
    result.opened.append(new_id)
    return incident


def _clear(
    incident: Incident, record: Record, evidence: str, reader: _Reader, when: dt.datetime
) -> tuple[bool, bool]:
    """Mark this record's clean fingerprints; resolve when none fires. (touched, resolved)."""
    signals_now = dict(incident.data.get("signals") or {})
    cleared = [
        fp
        for fp, state in signals_now.items()
        if state == "firing" and clears(record, fp, incident, reader)
    ]
    if not cleared:
        return False, False
    signals_now.update(dict.fromkeys(cleared, "clean"))
    incident.data["signals"] = signals_now
    incident.data["evidence"] = list(dict.fromkeys([*incident.data.get("evidence", []), evidence]))
    incident.timeline.append(
        entry("cleared", AUTOMATION, when, evidence=evidence, fingerprints=cleared)
    )
    if any(state == "firing" for state in signals_now.values()):
        return True, False
    alerts_only = all(fp.startswith("alert:") for fp in signals_now)
    resolution = {
        "how": "evidence",
        "evidence": evidence,
        "summary": "Alertmanager no longer lists the alert while the Watchdog fires: Prometheus "
        "evaluated its rule clean"
        if alerts_only
        else "the next run of the same check(s) was clean",
    }
    incident.data["status"] = "resolved"
    incident.data["resolution"] = resolution
    incident.timeline.append(entry("resolved", AUTOMATION, when, **resolution))
    return True, True


@under_commit_lock  # the next id, or the timeline read, stays ours until committed
def _detect(project: Project, paths: list[Path], now: dt.datetime | None) -> DetectionResult:
    policy = load_fault_policy(project)
    if not policy.detection_enabled:
        return DetectionResult(DetectionStatus.DISABLED)
    result = DetectionResult(DetectionStatus.QUIET)
    incidents, broken = scan_incidents(project)
    result.problems += broken
    reader = _Reader(project)
    touched: dict[str, Incident] = {}
    when = moment(now)
    for path in paths:
        evidence = str(Path(path).resolve().relative_to(project.root.resolve()))
        record = reader.record(evidence)
        if record is None:
            result.problems.append(Problem("not a readable record", evidence, fix="check the file"))
            continue
        detected = dt.datetime.fromisoformat(record.finished_at).replace(microsecond=0)
        groups: dict[tuple[str, str, str, str, str], list[Signal]] = {}
        for signal in signals(record, policy):
            key = (signal.source, signal.environment, signal.subject, signal.klass, signal.key)
            groups.setdefault(key, []).append(signal)
        for group in groups.values():
            incident = _open_or_update(
                project, policy, incidents, group, evidence, detected, when, result
            )
            if incident is not None:
                touched[incident.id] = incident
        for incident in incidents:
            if not incident.active or incident.environment != record.environment:
                continue
            changed, resolved = _clear(incident, record, evidence, reader, when)
            if changed:
                touched[incident.id] = incident
            if resolved:
                result.resolved.append(incident.id)
    if not touched:
        return result
    written = {i.path: incident_text(i) for i in touched.values()}
    parts = [
        f"{verb} {', '.join(ids)}"
        for verb, ids in (
            ("opened", result.opened),
            ("updated", result.updated),
            ("resolved by evidence", result.resolved),
        )
        if ids
    ]
    names = ", ".join(str(Path(p).name) for p in paths)
    result.commit = record_step(
        project,
        written,
        f"Incidents: {'; '.join(parts) or 'signals cleared'} ({names})",
        person=None,
    )
    result.status = DetectionStatus.RECORDED
    return result


def record_detection(
    project: Project, paths: list[Path], *, now: dt.datetime | None = None
) -> DetectionResult:
    """Open, update or resolve incidents from records just committed; commit what changed.

    Called by inspect, drift, apply and drill right after they commit their record(s). Never
    raises: the operation already succeeded in recording what it saw.

    Example:
        daily = Path("records/inspections/20261201T080000Z-daily-lab.json")
        result = record_detection(project, [daily])
        result.status, result.opened, result.resolved
    """
    if os.environ.get(DISABLE, "").lower() in ("1", "true", "yes"):
        return DetectionResult(DetectionStatus.DISABLED)
    if not paths or not is_repo(project.root):
        return DetectionResult(DetectionStatus.QUIET)
    try:
        return _detect(project, [Path(p) for p in paths], now)
    except OpsledgerError as err:
        for problem in err.problems:
            log.warning("incident detection skipped: %s", problem)
        return DetectionResult(DetectionStatus.FAILED, problems=err.problems)
    except Exception as err:  # the record is committed; say why incidents were not
        log.warning("incident detection failed: %s: %s", type(err).__name__, err)
        return DetectionResult(DetectionStatus.FAILED, problems=[Problem(str(err))])
