"""The fault-handling rules as data, loaded once per command and linted.

SLA terms and business hours come from sla.yml; detection, diagnostics, closing rules and
problem thresholds from incidents.yml.

Incident clocks need more of sla.yml than change decisions do — which hours count per priority,
the business calendar, which priorities may pause, when an open clock is a near breach — so
this module reads those parts and checks them, and `opsledger policy check` reports every
problem of both files at once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opsledger.errors import OpsledgerError, Problem
from opsledger.faults.readonly import NotReadOnly, check_command
from opsledger.layout import policies_folder, policy_file
from opsledger.policy.bundle import DAYS, LEVELS, Person, load_policies
from opsledger.project import Project
from opsledger.schema import problems as schema_problems
from opsledger.schema import schema
from opsledger.yamlio import load_yaml

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


@dataclass(frozen=True)
class Calendar:
    """Business hours: the days and hours an incident clock on business hours counts."""

    zone: ZoneInfo
    days: frozenset[int]  # Monday = 0
    start_minute: int
    end_minute: int  # 1440 = midnight at the end of the day
    holidays: frozenset[dt.date] = frozenset()


@dataclass(frozen=True)
class Terms:
    """What one priority promises an incident."""

    priority: str
    response: dt.timedelta
    resolution: dt.timedelta
    business_hours: bool
    pausable: bool


@dataclass(frozen=True)
class SourceRule:
    impact: str
    urgency: str
    klass: str | None


@dataclass(frozen=True)
class Diagnostic:
    command: str
    groups: tuple[str, ...]  # () = every host


@dataclass
class FaultPolicy:
    people: dict[str, Person]
    matrix: dict[str, dict[str, str]]
    terms: dict[str, Terms]
    calendar: Calendar | None
    near_breach: float  # share of a target, 0..1
    classes: tuple[str, ...]
    detection_enabled: bool
    sources: dict[str, SourceRule]
    inspection_classes: dict[str, str]
    diagnostics: dict[str, list[Diagnostic]]
    diagnostics_timeout_s: int
    diagnostics_max_bytes: int
    problem_repeat: int
    problem_within: dt.timedelta
    root_cause_priorities: tuple[str, ...]
    root_cause_min_chars: int
    problems: list[Problem] = field(default_factory=list)
    # alert severity label -> impact and urgency (`opsledger alerts sync`); klass unused
    alert_severities: dict[str, SourceRule] = field(default_factory=dict)

    def priority(self, impact: str, urgency: str) -> str:
        return self.matrix[impact][urgency]


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _calendar(data: Any, file: str, problems: list[Problem]) -> Calendar | None:
    if data is None:
        return None
    where = "business_hours"
    if not isinstance(data, dict):
        problems.append(
            Problem("must be a mapping", file, where, "give timezone, days, start, end")
        )
        return None
    for key in sorted(set(data) - {"timezone", "days", "start", "end", "holidays"}):
        problems.append(Problem(f"unknown field {key!r}", file, f"{where}.{key}", "remove it"))
    try:
        zone = ZoneInfo(str(data.get("timezone")))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        problems.append(
            Problem(
                f"unknown timezone {data.get('timezone')!r}",
                file,
                f"{where}.timezone",
                "use an IANA name like Europe/Berlin or UTC",
            )
        )
        zone = None
    days = data.get("days") or []
    bad = [d for d in days if d not in DAYS] if isinstance(days, list) else [days]
    if not days or bad:
        problems.append(
            Problem(f"bad days {bad or days!r}", file, f"{where}.days", f"use: {', '.join(DAYS)}")
        )
    times = {}
    for key in ("start", "end"):
        value = str(data.get(key, ""))
        if not _HHMM.fullmatch(value):
            problems.append(
                Problem(f"{value!r} is not HH:MM", file, f"{where}.{key}", "e.g. 08:00 (end 24:00)")
            )
        else:
            times[key] = _minutes(value)
    if len(times) == 2 and times["start"] >= times["end"]:
        problems.append(
            Problem("business hours end before they start", file, f"{where}.end", "e.g. 18:00")
        )
    holidays = set()
    for index, value in enumerate(data.get("holidays") or []):
        try:
            holidays.add(value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)))
        except ValueError:
            problems.append(
                Problem(
                    f"{value!r} is not a date",
                    file,
                    f"{where}.holidays[{index}]",
                    "write YYYY-MM-DD",
                )
            )
    if zone is None or len(times) < 2 or not days or bad:
        return None
    return Calendar(
        zone,
        frozenset(DAYS.index(d) for d in days),
        times["start"],
        times["end"],
        frozenset(holidays),
    )


def _sla(project: Project, problems: list[Problem]) -> dict[str, Any]:
    """The parts of sla.yml incident clocks need (policy.bundle checks the matrix itself)."""
    path = policies_folder(project.root, "sla.yml")
    file = str(path)
    data = load_yaml(path, what="SLA file")
    if not isinstance(data, dict):
        problems.append(Problem("must be a mapping", file, "(top level)", "see policy schema sla"))
        return {"terms": {}, "calendar": None, "near_breach": 0.8}
    calendar = _calendar(data.get("business_hours"), file, problems)
    pauses = data.get("pauses") or {}
    pausable = pauses.get("priorities") or [] if isinstance(pauses, dict) else []
    if not isinstance(pausable, list):
        pausable = []  # the schema check names it; clocks pause nothing meanwhile
    priorities = data.get("priorities") or {}
    if not isinstance(priorities, dict):
        problems.append(
            Problem(
                f"must be a mapping of priority names, got {type(priorities).__name__}",
                file,
                "priorities",
                "write priorities: {P1: {response_minutes: 15, resolution_hours: 4}, ...}",
            )
        )
        priorities = {}
    for name in pausable:
        if name not in priorities:
            problems.append(
                Problem(
                    f"unknown priority {name!r}",
                    file,
                    "pauses.priorities",
                    f"use some of: {', '.join(priorities)}",
                )
            )
    terms = {}
    for name, entry in priorities.items():
        entry = entry or {}
        if not isinstance(entry, dict):
            problems.append(
                Problem(
                    f"must be a mapping, got {type(entry).__name__}",
                    file,
                    f"priorities.{name}",
                    "write response_minutes, resolution_hours and hours under it",
                )
            )
            continue
        hours = entry.get("hours", "24x7")
        if hours not in ("24x7", "business"):
            problems.append(
                Problem(
                    f"hours must be 24x7 or business, got {hours!r}",
                    file,
                    f"priorities.{name}.hours",
                    "write hours: 24x7 or hours: business",
                )
            )
        if hours == "business" and calendar is None and "business_hours" not in data:
            problems.append(
                Problem(
                    f"{name} counts business hours, and there are none",
                    file,
                    "business_hours",
                    "add business_hours: {timezone, days, start, end}",
                )
            )
        response, resolution = entry.get("response_minutes"), entry.get("resolution_hours")
        if isinstance(response, int) and isinstance(resolution, int):
            terms[name] = Terms(
                name,
                dt.timedelta(minutes=response),
                dt.timedelta(hours=resolution),
                hours == "business",
                name in pausable,
            )
    near = data.get("near_breach_percent", 80)
    if not isinstance(near, int | float) or not 0 < near < 100:
        problems.append(
            Problem(
                f"near_breach_percent must be between 0 and 100, got {near!r}",
                file,
                "near_breach_percent",
                "e.g. 75",
            )
        )
        near = 80
    return {"terms": terms, "calendar": calendar, "near_breach": near / 100}


def _groups(project: Project) -> set[str]:
    """Every group of every environment's inventory (diagnostics name them)."""
    from opsledger.inventory import load_inventory

    groups = {"all"}
    for inventory in project.root.glob("inventories/*/hosts.yml"):
        try:
            inv = load_inventory(inventory)
        except OpsledgerError:
            continue
        groups |= {g for host in inv.hosts.values() for g in host.groups}
    return groups


def _incidents(
    project: Project, matrix: dict[str, dict[str, str]], problems: list[Problem]
) -> dict[str, Any]:
    path = policies_folder(project.root, "incidents.yml")
    file = str(path)
    data = load_yaml(path, what="incident policy")
    found = schema_problems(data, schema("policy-incidents"), file)
    problems += found
    if found:  # the semantic checks below assume the shape the schema promises
        raise OpsledgerError(problems)
    classes = tuple(data["classes"])
    detection = data["detection"]
    sources = {}
    for name, entry in detection["sources"].items():
        where = f"detection.sources.{name}"
        klass = entry.get("class")
        if klass is not None and klass not in classes:
            problems.append(
                Problem(
                    f"unknown class {klass!r}", file, f"{where}.class", f"use: {', '.join(classes)}"
                )
            )
        if matrix and (matrix.get(entry["impact"]) or {}).get(entry["urgency"]) is None:
            problems.append(
                Problem(
                    "sla.yml gives no priority for this impact and urgency",
                    file,
                    where,
                    "complete the matrix of sla.yml",
                )
            )
        sources[name] = SourceRule(entry["impact"], entry["urgency"], klass)
    alert_severities = {}
    for severity, entry in (detection.get("alert_severities") or {}).items():
        if matrix and (matrix.get(entry["impact"]) or {}).get(entry["urgency"]) is None:
            problems.append(
                Problem(
                    "sla.yml gives no priority for this impact and urgency",
                    file,
                    f"detection.alert_severities.{severity}",
                    "complete the matrix of sla.yml",
                )
            )
        alert_severities[str(severity)] = SourceRule(entry["impact"], entry["urgency"], None)
    inspection_classes = dict(detection.get("inspection_classes") or {})
    for check, klass in inspection_classes.items():
        if klass not in classes:
            problems.append(
                Problem(
                    f"unknown class {klass!r}",
                    file,
                    f"detection.inspection_classes.{check}",
                    f"use: {', '.join(classes)}",
                )
            )
    plan = policies_folder(project.root, "inspections.yml")
    if plan.is_file():
        inspections = load_yaml(plan, what="inspection plan")
        checks = set(inspections.get("checks") or {})
        for check in sorted(set(inspection_classes) - checks):
            problems.append(
                Problem(
                    f"no inspection check {check!r}",
                    file,
                    f"detection.inspection_classes.{check}",
                    f"use a check of inspections.yml: {', '.join(sorted(checks))}",
                )
            )
        for check in sorted(checks - set(inspection_classes)):
            problems.append(
                Problem(
                    f"inspection check {check!r} has no fault class",
                    file,
                    "detection.inspection_classes",
                    f"add {check}: <one of {', '.join(classes)}>",
                )
            )
        critical = (inspections.get("severities") or {}).get("critical")
        rule = sources.get("inspection")
        opened = (matrix.get(rule.impact) or {}).get(rule.urgency) if rule else None
        if matrix and rule and critical and opened != critical:
            problems.append(
                Problem(
                    f"a critical finding is {critical} in inspections.yml but its incident would "
                    f"be {(matrix.get(rule.impact) or {}).get(rule.urgency)}",
                    file,
                    "detection.sources.inspection",
                    f"choose impact and urgency that sla.yml maps to {critical}",
                )
            )
    diagnostics = data["diagnostics"]
    known_groups = _groups(project)
    commands: dict[str, list[Diagnostic]] = {}
    for klass, entries in diagnostics["classes"].items():
        if klass != "all" and klass not in classes:
            problems.append(
                Problem(
                    f"unknown class {klass!r}",
                    file,
                    f"diagnostics.classes.{klass}",
                    f"use all or: {', '.join(classes)}",
                )
            )
        commands[klass] = []
        for index, entry in enumerate(entries):
            where = f"diagnostics.classes.{klass}[{index}]"
            run = entry if isinstance(entry, str) else entry["run"]
            groups = () if isinstance(entry, str) else tuple(entry.get("groups") or ())
            try:
                check_command(run)
            except NotReadOnly as why:
                problems.append(
                    Problem(
                        f"{run!r} is refused: {why}",
                        file,
                        where,
                        "use a read-only command (see opsledger.faults.readonly)",
                    )
                )
                continue
            for group in groups:
                if group not in known_groups:
                    problems.append(
                        Problem(
                            f"unknown group {group!r}",
                            file,
                            f"{where}.groups",
                            f"use a group of the inventories: {', '.join(sorted(known_groups))}",
                        )
                    )
            commands[klass].append(Diagnostic(run, groups))
    return {
        "classes": classes,
        "detection_enabled": bool(detection["enabled"]),
        "sources": sources,
        "alert_severities": alert_severities,
        "inspection_classes": inspection_classes,
        "diagnostics": commands,
        "diagnostics_timeout_s": int(diagnostics.get("timeout_seconds", 30)),
        "diagnostics_max_bytes": int(diagnostics.get("max_bytes", 16384)),
        "root_cause_priorities": tuple(data["closing"]["root_cause_priorities"]),
        "root_cause_min_chars": int(data["closing"].get("root_cause_min_chars", 30)),
        "problem_repeat": int(data["problems"]["repeat"]),
        "problem_within": dt.timedelta(days=int(data["problems"]["within_days"])),
    }


def load_fault_policy(project: Project, *, strict: bool = True) -> FaultPolicy:
    """sla.yml and incidents.yml for incidents, checked; strict: raise on any problem (exit 2).

    Example:
        policy = load_fault_policy(find_project())
        policy.priority("high", "medium"), policy.terms["P2"].response  # ('P2', 1:00:00)
    """
    policies, _ = load_policies(project, strict=False)
    problems: list[Problem] = []
    matrix = policies.sla_matrix
    sla = _sla(project, problems)
    try:
        incidents = _incidents(project, matrix, problems)
    except OpsledgerError as exc:  # incidents.yml did not read, or broke its schema
        raise OpsledgerError(problems + [p for p in exc.problems if p not in problems]) from None
    for name in incidents["root_cause_priorities"]:
        if name not in sla["terms"]:
            problems.append(
                Problem(
                    f"unknown priority {name!r}",
                    policy_file("incidents.yml"),
                    "closing.root_cause_priorities",
                    f"use some of: {', '.join(sla['terms'])}",
                )
            )
    # An empty matrix means sla.yml itself failed to load: that problem is already listed.
    for impact, urgency in itertools.product(LEVELS, LEVELS) if matrix else ():
        if (matrix.get(impact) or {}).get(urgency) not in sla["terms"]:
            problems.append(
                Problem(
                    f"impact {impact} x urgency {urgency} has no priority with terms",
                    policy_file("sla.yml"),
                    f"matrix.{impact}.{urgency}",
                    "run opsledger policy check",
                )
            )
            break
    if strict and problems:
        raise OpsledgerError(problems)
    return FaultPolicy(people=policies.people, matrix=matrix, **sla, **incidents, problems=problems)


def fault_policy_problems(project: Project) -> list[Problem]:
    """Every problem of the fault-handling policy (for `opsledger policy check`)."""
    if not policies_folder(project.root, "incidents.yml").is_file():
        return []
    try:
        return load_fault_policy(project, strict=False).problems
    except OpsledgerError as err:
        return err.problems


def person_problem(policy: FaultPolicy, person: str, file: str, what: str) -> Problem | None:
    """A Problem when `person` is not in people.yml (every step is someone's)."""
    if person in policy.people:
        return None
    return Problem(
        f"{person!r} is not in policies/people.yml",
        file,
        what,
        f"use one of: {', '.join(sorted(policy.people))}",
    )
