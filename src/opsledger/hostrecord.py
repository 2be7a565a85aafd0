"""One host's own record, and the estate: everything the repository knows about each host.

A maintenance plan asks that every system keeps records that can be analysed. They already
are in git, spread over the ledger; this gathers them per host: its inventory groups and key
variables, the hardware record and OS its last converge handed back, the package snapshot of
its last patch (and the backup before it), every change run on it (result, when, by whom),
inspections and drift with the findings still open, DR drills, incidents and the waivers that
apply to it. Run records are read as git has them (HEAD); nothing here contacts a host.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.inventory import Inventory, load_inventory
from opsledger.layout import REQUEST, change_folder, policies_folder
from opsledger.policy.waivers import load_waivers
from opsledger.project import Project
from opsledger.records import DriftState, Record, load_records, read_runs
from opsledger.yamlio import load_yaml

# Variables worth seeing on a host's record when set (the rest: its own host_vars).
KEY_VARIABLES = (
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "postgresql_replication_role",
    "postgresql_replication_primary_host",
    "postgresql_version",
    "postgresql_package_version",
    "hardware_memory_min_mb",
    "hardware_cpu_count_min",
    "hardware_firmware_version",
)
_SECRET = re.compile(r"(?i)pass|secret|token|vault|private|_key")
_HISTORY = 10  # inspection, drift and drill records shown per host


class HostStatus(enum.Enum):
    CLEAN = "clean"  # no open finding, no active incident
    ATTENTION = "attention"  # an open inspection or drift finding, or an active incident


@dataclass
class HostRecord:
    """Everything the repository knows about one host."""

    host: str
    environment: str
    status: HostStatus
    groups: list[str]
    variables: dict[str, Any]
    os: str = ""
    hardware: dict[str, Any] = field(default_factory=dict)  # as the last converge handed it back
    last_patch: dict[str, Any] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    open_findings: list[dict[str, Any]] = field(default_factory=list)
    inspections: list[dict[str, Any]] = field(default_factory=list)  # newest first
    drift: list[dict[str, Any]] = field(default_factory=list)  # newest first
    drills: list[dict[str, Any]] = field(default_factory=list)  # newest first
    incidents: list[dict[str, Any]] = field(default_factory=list)
    waivers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


@dataclass
class EstateRow:
    host: str
    environment: str
    groups: list[str]
    os: str
    last_change: dict[str, Any]
    last_patch: dict[str, Any]
    open_findings: int
    worst: str  # ok | warning | critical
    status: HostStatus


@dataclass
class Estate:
    """Every host of the environments asked for (a CMDB view)."""

    status: HostStatus  # ATTENTION when any host needs it
    rows: list[EstateRow]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "hosts": [{**asdict(r), "status": r.status.value} for r in self.rows],
        }


# --- what the ledger holds, loaded once per command --------------------------------------


@dataclass
class _Ledger:
    runs: list[Record]
    records: list[Record]
    incidents: list[Any]
    waivers: list[Any]
    schedules: dict[str, list[str]]  # inspection schedule -> its checks (the current plan)
    titles: dict[str, str]


def _ledger(project: Project) -> _Ledger:
    from opsledger.faults.store import load_incidents
    from opsledger.inspections import load_inspection_plan

    try:
        schedules = {n: s.checks for n, s in load_inspection_plan(project).schedules.items()}
    except OpsledgerError:  # a broken plan: judge each record by the checks it reported
        schedules = {}
    incidents = load_incidents(project)
    try:
        waivers = load_waivers(policies_folder(project.root, "waivers.yml"))
    except OpsledgerError:
        waivers = []
    runs = read_runs(project).committed
    return _Ledger(
        runs, load_records(project), incidents, waivers, schedules, _titles(project, runs)
    )


def _titles(project: Project, runs: list[Record]) -> dict[str, str]:
    titles = {}
    for change in {r.change for r in runs if r.change}:
        try:
            data = load_yaml(change_folder(project.root, change, REQUEST), what="change")
        except OpsledgerError:
            continue
        if isinstance(data, dict) and isinstance(data.get("title"), str):
            titles[change] = data["title"]
    return titles


def _environments(project: Project) -> list[str]:
    return sorted(p.parent.name for p in project.root.glob("inventories/*/hosts.yml"))


def _inventories(project: Project, environment: str | None) -> dict[str, Inventory]:
    names = [environment] if environment else _environments(project)
    found = {}
    for name in names:
        found[name] = load_inventory(project.require_environment(name), template=False)
    return found


def _touches(record: Record, host: str) -> bool:
    return host in record.hosts or host in record.stats


def _when(record: Record) -> str:
    return record.finished_at or record.started_at


def _variables(inventory: Inventory, host: str) -> dict[str, Any]:
    entry = inventory.hosts[host]
    folder = inventory.source.parent / "host_vars"
    own: set[str] = set()
    for path in [*folder.glob(f"{host}.y*ml"), *sorted((folder / host).glob("*.y*ml"))]:
        try:
            data = load_yaml(path, what="host vars")
        except OpsledgerError:
            continue
        own |= set(data) if isinstance(data, dict) else set()
    shown_vars = {}
    for name in sorted({*KEY_VARIABLES, *own}):
        if name in entry and not _SECRET.search(name):
            value = entry.get(name)  # as written: lookups and vault stay unrendered
            text = json.dumps(value, default=str)
            shown_vars[name] = value if len(text) <= 200 else text[:199] + "…"
    return shown_vars


def _change_entry(record: Record, titles: dict[str, str]) -> dict[str, Any]:
    return {
        "change": record.change,
        "title": titles.get(record.change or "", ""),
        "runbook": record.runbook,
        "result": record.result,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "by": record.runner.get("person", ""),
        "verification": record.verification.get("status", ""),
        "rollback": (record.rollback or {}).get("result", ""),
    }


def _last_patch(runs: list[Record], host: str, titles: dict[str, str]) -> dict[str, Any]:
    for record in reversed(runs):
        packages = record.maintenance.get("packages", {})
        if host not in packages:
            continue
        restored = ((record.rollback or {}).get("maintenance") or {}).get("restored", {})
        return {
            **_change_entry(record, titles),
            "run": record.runner.get("run", ""),
            "packages": packages[host],
            "backup": record.maintenance.get("backup", {}).get(host, {}),
            "restored": restored.get(host, {}),
        }
    return {}


def _hardware(runs: list[Record], host: str) -> dict[str, Any]:
    for record in reversed(runs):
        found = record.maintenance.get("hardware", {}).get(host)
        if isinstance(found, dict):
            return {**found, "change": record.change, "recorded_at": _when(record)}
    return {}


def _inspections(ledger: _Ledger, host: str, environment: str) -> tuple[list, list]:
    """(open findings, recent inspections) of a host.

    A check's findings stay open until a newer inspection that ran the check (by its
    schedule) covered the host.
    """
    mine = [
        r
        for r in ledger.records
        if r.kind == "inspection" and r.environment == environment and _touches(r, host)
    ]
    mine.sort(key=_when, reverse=True)
    covered: set[str] = set()
    still: list[dict[str, Any]] = []
    history = []
    for record in mine:
        schedule = str(record.measurements.get("schedule", ""))
        own = [f for f in record.findings if f.get("host") == host]
        still += [
            {**f, "source": "inspection", "schedule": schedule, "at": _when(record)}
            for f in own
            if f.get("check") not in covered
        ]
        covered |= set(ledger.schedules.get(schedule) or [f.get("check") for f in own])
        if len(history) < _HISTORY:
            history.append(
                {
                    "at": _when(record),
                    "schedule": schedule,
                    "result": record.result,
                    "findings": [
                        {k: f.get(k) for k in ("check", "severity", "priority", "message")}
                        for f in own
                    ],
                }
            )
    return still, history


def _drift(ledger: _Ledger, host: str, environment: str) -> tuple[list, list]:
    mine = [
        r
        for r in ledger.records
        if r.kind == "drift" and r.environment == environment and _touches(r, host)
    ]
    mine.sort(key=_when, reverse=True)
    history = []
    for record in mine[:_HISTORY]:
        own = [f for f in record.findings if f.get("host") == host]
        tasks = [f"{f.get('role', '')}: {f.get('task', '')}" for f in own if f.get("task")]
        state = next((f["state"] for f in own if not f.get("task") and f.get("state")), "")
        state = state or (DriftState.DRIFTED if tasks else DriftState.IN_SYNC)
        history.append({"at": _when(record), "state": state, "tasks": tasks})
    still = []
    if history and history[0]["state"] != DriftState.IN_SYNC:
        newest = history[0]
        still.append(
            {
                "source": "drift",
                "check": "drift",
                "severity": "warning",
                "message": f"{newest['state']}: "
                + ("; ".join(newest["tasks"][:5]) or "see the record"),
                "at": newest["at"],
            }
        )
    return still, history


def _drills(ledger: _Ledger, host: str, environment: str) -> list[dict[str, Any]]:
    mine = [
        r
        for r in ledger.records
        if r.kind == "drill" and r.environment == environment and _touches(r, host)
    ]
    mine.sort(key=_when, reverse=True)
    return [
        {
            "at": _when(r),
            "result": r.result,
            "service": r.measurements.get("service", ""),
            "rto_s": r.measurements.get("rto_s"),
            "rpo_s": r.measurements.get("rpo_s"),
            "change": r.change,
        }
        for r in mine[:_HISTORY]
    ]


def _incidents(ledger: _Ledger, host: str, environment: str) -> list[dict[str, Any]]:
    return [
        {
            "id": i.id,
            "title": i.title,
            "status": i.status,
            "priority": i.priority,
            "class": i.klass,
            "detected_at": str(i.data.get("detected_at", "")),
        }
        for i in ledger.incidents
        if i.environment == environment and host in i.hosts
    ]


def _waivers(
    ledger: _Ledger, host: str, groups: list[str], environment: str, today: dt.date
) -> list[dict]:
    return [
        {
            "id": w.id,
            "controls": list(w.controls),
            "reason": w.reason,
            "expires": w.expires.isoformat(),
            "expired": w.expired(today),
        }
        for w in ledger.waivers
        if environment in w.environments
        and ("all" in w.hosts or host in w.hosts or set(groups) & set(w.hosts))
    ]


def _record_of(
    ledger: _Ledger, inventory: Inventory, host: str, environment: str, today: dt.date
) -> HostRecord:
    groups = inventory.ancestors(host)
    groups = [g for g in groups if g != "all"]
    runs = [r for r in ledger.runs if r.environment == environment and _touches(r, host)]
    findings, inspections = _inspections(ledger, host, environment)
    drifted, drift = _drift(ledger, host, environment)
    incidents = _incidents(ledger, host, environment)
    waivers = _waivers(ledger, host, groups, environment, today)
    open_findings = findings + drifted
    active = any(i["status"] in ("open", "acknowledged") for i in incidents)
    hardware = _hardware(runs, host)
    return HostRecord(
        host=host,
        environment=environment,
        status=HostStatus.ATTENTION if open_findings or active else HostStatus.CLEAN,
        groups=groups,
        variables=_variables(inventory, host),
        os=str(hardware.get("os", "")),
        hardware=hardware,
        last_patch=_last_patch(runs, host, ledger.titles),
        changes=[_change_entry(r, ledger.titles) for r in runs],
        open_findings=open_findings,
        inspections=inspections,
        drift=drift,
        drills=_drills(ledger, host, environment),
        incidents=incidents,
        waivers=waivers,
    )


def host_record(
    project: Project, *, host: str, environment: str | None = None, today: dt.date | None = None
) -> HostRecord:
    """One host's record, read from the repository (git for run records); no host contacted.

    Raises OpsledgerError (exit 2) when no inventory (of `environment`, or of any environment)
    has the host, or when several do and `environment` was not given.

    Example:
        record = host_record(find_project(), host="lab-db1")
        record.status, record.last_patch.get("packages", {}).get("upgraded")
    """
    inventories = _inventories(project, environment)
    holding = [name for name, inv in inventories.items() if host in inv.hosts]
    if not holding:
        where = f"environment {environment}" if environment else "any environment"
        raise OpsledgerError(
            Problem(
                f"no host {shown(host, 80)} in {where}",
                str(project.root / "inventories"),
                "host",
                "name a host of inventories/<env>/hosts.yml (opsledger host list shows them)",
            )
        )
    if len(holding) > 1:
        raise OpsledgerError(
            Problem(
                f"{host} is in several environments: {', '.join(holding)}",
                field="env",
                fix="choose one with --env",
            )
        )
    name = holding[0]
    today = today or dt.datetime.now(dt.UTC).date()
    return _record_of(_ledger(project), inventories[name], host, name, today)


_SEVERITY = ("ok", "warning", "critical")


def estate(project: Project, *, environment: str | None = None) -> Estate:
    """Every host with its groups, OS, last change, last patch and open findings.

    Example:
        [(r.host, r.open_findings) for r in estate(find_project(), environment="lab").rows]
    """
    ledger = _ledger(project)
    today = dt.datetime.now(dt.UTC).date()
    rows = []
    for name, inventory in _inventories(project, environment).items():
        for host in inventory.hosts:
            record = _record_of(ledger, inventory, host, name, today)
            last = record.changes[-1] if record.changes else {}
            patch = record.last_patch
            rows.append(
                EstateRow(
                    host=host,
                    environment=name,
                    groups=record.groups,
                    os=record.os,
                    last_change={k: last.get(k) for k in ("change", "result", "finished_at")}
                    if last
                    else {},
                    last_patch={
                        "change": patch.get("change"),
                        "finished_at": patch.get("finished_at"),
                        "upgraded": len(patch.get("packages", {}).get("upgraded", [])),
                    }
                    if patch
                    else {},
                    open_findings=len(record.open_findings),
                    worst=max(
                        (str(f.get("severity", "warning")) for f in record.open_findings),
                        key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else 1,
                        default="ok",
                    ),
                    status=record.status,
                )
            )
    attention = any(r.status is HostStatus.ATTENTION for r in rows)
    return Estate(HostStatus.ATTENTION if attention else HostStatus.CLEAN, rows)
