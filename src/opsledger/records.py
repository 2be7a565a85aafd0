"""The one record format: what happened, when, by whom, judged by what, with what result.

Runs of changes (`changes/<ID>/runs/<UTC timestamp>.json`) use it now; inspections, drift
checks and DR drills will write the same model under `records/`, so audit and reports read them
all alike. Records are JSON (stable key order), written once and committed; audit treats any
later edit of one as a finding.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError
from opsledger.project import Project
from opsledger.yamlio import load_json

KINDS = ("run", "inspection", "drift", "drill")
RESULTS = ("success", "failed", "rolled_back", "rollback_failed", "canceled")
FORMAT_VERSION = 1


@dataclass
class Record:
    kind: str
    environment: str
    result: str
    started_at: str
    finished_at: str
    change: str | None = None
    runbook: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    targets: str = ""
    hosts: list[str] = field(default_factory=list)
    runner: dict[str, Any] = field(default_factory=dict)  # person, machine, ci
    git_commit: str = ""
    content_sha256: str = ""
    policy_sha256: str = ""
    decision: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # per host counts
    changed_tasks: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    rollback: dict[str, Any] | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)  # inspections, drills
    measurements: dict[str, Any] = field(default_factory=dict)  # e.g. RTO, RPO
    version: int = FORMAT_VERSION

    @property
    def finished(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.finished_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_SHAPES: dict[str, tuple[type, ...]] = {
    "change": (str, type(None)),
    "runbook": (str, type(None)),
    "params": (dict,),
    "hosts": (list,),
    "runner": (dict,),
    "decision": (dict,),
    "stats": (dict,),
    "changed_tasks": (list,),
    "verification": (dict,),
    "rollback": (dict, type(None)),
    "findings": (list,),
    "measurements": (dict,),
    "version": (int,),
}


def read_record(path: Path) -> Record | None:
    """A record file as a Record, or None when it is not one (wrong shape, bad times, not JSON).

    Records sort by time and feed decisions (promotion, "already applied"), so a hand-made
    file with `finished_at: 5` must be ignored like any unreadable one, not crash them.
    """
    try:
        data = load_json(path, what="record")
    except OpsledgerError:
        return None
    if not isinstance(data, dict):
        return None
    for name, kinds in _SHAPES.items():
        if name in data and not isinstance(data[name], kinds):
            return None
    for name in ("findings", "changed_tasks"):  # read entry by entry with .get()
        if not all(isinstance(entry, dict) for entry in data.get(name) or []):
            return None
    approvers = (data.get("decision") or {}).get("approvers", [])
    if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
        return None
    for key, value in (data.get("measurements") or {}).items():
        if key.endswith("_s") and (isinstance(value, bool) or not isinstance(value, int | float)):
            return None
    try:
        record = Record.from_dict(data)
        texts = (record.kind, record.environment, record.result, record.targets)
        if not all(isinstance(t, str) for t in texts):
            return None
        for moment in (record.started_at, record.finished_at):
            if not isinstance(moment, str) or dt.datetime.fromisoformat(moment).tzinfo is None:
                return None
    except (ValueError, TypeError):
        return None
    return record


def stamp(moment: dt.datetime) -> str:
    """File-name timestamp in UTC, sortable: 20261201T203000Z."""
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def run_record_path(project: Project, change_id: str, started: dt.datetime) -> Path:
    return project.root / "changes" / change_id / "runs" / f"{stamp(started)}.json"


def write_record(path: Path, record: Record) -> Path:
    """Write a record once; an existing record is never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as handle:
        handle.write(record.to_json())
    return path


def change_runs(project: Project) -> list[Record]:
    """Every change run record, oldest first (unreadable files are skipped)."""
    records = []
    for path in (project.root / "changes").glob("*/runs/*.json"):
        if (record := read_record(path)) is not None:
            records.append(record)
    return sorted(records, key=lambda r: r.finished_at)


def load_records(project: Project, kind: str | None = None) -> list[Record]:
    """Inspection, drift and drill records (`records/<kind>s/*.json`), oldest first."""
    records = []
    for path in (project.root / "records").glob("*/*.json"):
        record = read_record(path)
        if record is None:
            continue
        if kind is None or record.kind == kind:
            records.append(record)
    return sorted(records, key=lambda r: r.finished_at)
