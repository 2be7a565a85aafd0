"""Incidents and problems on disk: `incidents/<ID>/incident.yml`, `problems/<ID>/problem.yml`.

The one place that knows those paths and their schemas. A file is validated when read and
before it is written, so a step that would leave an invalid file writes nothing. Files keep the
order a reader expects (what, where, how bad, who, state, then the timeline), and the
timeline is only ever appended to: git dates each entry by the commit that added it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.project import Project
from opsledger.schema import problems as schema_problems
from opsledger.schema import schema
from opsledger.yamlio import MAX_BYTES, load_yaml

INCIDENT_ID = re.compile(r"INC-([0-9]{4,9})")  # fullmatch: not "INC-0001\n", no other digits
PROBLEM_ID = re.compile(r"PRB-([0-9]{4,9})")
ACTIVE = ("open", "acknowledged")  # the fault is not fixed yet
SOURCES = ("user_report", "inspection", "drift", "verification", "rollback", "drill", "alert")
AUTOMATION = "opsledger"  # `by` of steps a detection took, committed as the runner identity


@dataclass
class Incident:
    """One incident: its file and its data (as written, in the schema's shape)."""

    id: str
    path: Path
    data: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def priority(self) -> str:
        return str(self.data["priority"])

    @property
    def environment(self) -> str:
        return str(self.data["environment"])

    @property
    def hosts(self) -> list[str]:
        return list(self.data.get("hosts") or [])

    @property
    def klass(self) -> str:
        return str(self.data["class"])

    @property
    def title(self) -> str:
        return str(self.data["title"])

    @property
    def timeline(self) -> list[dict[str, Any]]:
        return self.data["timeline"]

    @property
    def fingerprints(self) -> list[str]:
        return list(self.data.get("fingerprints") or [])

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def entries(self, action: str) -> list[dict[str, Any]]:
        return [e for e in self.timeline if e.get("action") == action]

    def relative(self, project: Project) -> str:
        return str(self.path.relative_to(project.root))


@dataclass
class ProblemRecord:
    """One problem (a recurring fault's cause): its file and its data."""

    id: str
    path: Path
    data: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def incidents(self) -> list[str]:
        return list(self.data["incidents"])

    @property
    def timeline(self) -> list[dict[str, Any]]:
        return self.data["timeline"]


INCIDENT_ORDER = (
    "id",
    "title",
    "detected_at",
    "source",
    "environment",
    "hosts",
    "services",
    "runbooks",
    "class",
    "class_confirmed",
    "impact",
    "urgency",
    "priority",
    "assignee",
    "status",
    "fingerprints",
    "signals",
    "evidence",
    "repeat_of",
    "problem",
    "resolution",
    "closure",
    "timeline",
)
PROBLEM_ORDER = (
    "id",
    "title",
    "status",
    "owner",
    "incidents",
    "fingerprints",
    "root_cause",
    "known_error",
    "fix_change",
    "timeline",
)


def checked_id(value: str, pattern: re.Pattern[str], example: str) -> str:
    """The id, or exit 2 before it becomes a path when it is not one.

    `../x`, `INC-0001/../INC-0002`, an id of 300 characters (the file system's "name too long"
    was a traceback), other scripts' digits and an id with a final newline are refused alike.
    """
    what = {"INC": "incident", "PRB": "problem"}.get(example[:3], "record")
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise OpsledgerError(
            Problem(
                f"{shown(value, 40)} is not {'an' if what[0] in 'aeiou' else 'a'} {what} id",
                field=f"{what.upper()}_ID",
                fix=f"write it as {example} (see opsledger {what} list)",
            )
        )
    return value


def incident_file(project: Project, incident_id: str) -> Path:
    incident_id = checked_id(incident_id, INCIDENT_ID, "INC-0001")
    return project.root / "incidents" / incident_id / "incident.yml"


def diagnostics_dir(project: Project, incident_id: str) -> Path:
    incident_id = checked_id(incident_id, INCIDENT_ID, "INC-0001")
    return project.root / "incidents" / incident_id / "diagnostics"


def problem_file(project: Project, problem_id: str) -> Path:
    problem_id = checked_id(problem_id, PROBLEM_ID, "PRB-0001")
    return project.root / "problems" / problem_id / "problem.yml"


def _ids(folder: Path, name: str, pattern: re.Pattern[str]) -> list[str]:
    found = [p.parent.name for p in folder.glob(f"*/{name}") if pattern.fullmatch(p.parent.name)]
    return sorted(found, key=lambda i: int(pattern.fullmatch(i).group(1)))  # type: ignore[union-attr]


def incident_ids(project: Project) -> list[str]:
    return _ids(project.root / "incidents", "incident.yml", INCIDENT_ID)


def problem_ids(project: Project) -> list[str]:
    return _ids(project.root / "problems", "problem.yml", PROBLEM_ID)


def next_id(project: Project, kind: str, taken: set[str] | None = None) -> str:
    """INC-0001 / PRB-0001 style: one more than the highest on disk (and than `taken`)."""
    prefix, pattern, ids = (
        ("INC", INCIDENT_ID, incident_ids(project))
        if kind == "incident"
        else ("PRB", PROBLEM_ID, problem_ids(project))
    )
    numbers = [int(m.group(1)) for i in [*ids, *(taken or ())] if (m := pattern.fullmatch(i))]
    return f"{prefix}-{(max(numbers, default=0) + 1):04d}"


def _ordered(data: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    return {k: data[k] for k in order if k in data} | {
        k: v for k, v in data.items() if k not in order
    }


# Unicode line breaks YAML would fold or normalise when written raw (NEL, LINE and PARAGRAPH
# SEPARATOR): PyYAML writes them unescaped in plain and single-quoted scalars when it may emit
# Unicode, and a note "a\x85b" read back as "a b". Text holding one is double-quoted (escaped).
_UNICODE_BREAKS = ("\x85", "\u2028", "\u2029")


class _Dumper(yaml.SafeDumper):
    """SafeDumper whose strings read back exactly, whatever Unicode they hold."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if any(b in text for b in _UNICODE_BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)
# a status enum (records.Verified, RunResult: StrEnums) is written as its plain string
_Dumper.add_multi_representer(str, _represent_str)


def dump(data: dict[str, Any], order: tuple[str, ...]) -> str:
    return "---\n" + yaml.dump(
        _ordered(data, order), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )


def stringify(value: Any) -> Any:
    """YAML reads unquoted times as datetimes; the schema speaks ISO 8601 strings."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stringify(v) for v in value]
    return value


def incident_problems(data: Any, file: str, incident_id: str | None = None) -> list[Problem]:
    """Schema and consistency problems of incident data, one per fault."""
    if not isinstance(data, dict):
        return [Problem("an incident must be a mapping", file, "top level", "write key: value")]
    found = schema_problems(data, schema("incident"), file)
    if incident_id and data.get("id") not in (None, incident_id):
        found.append(
            Problem(
                f"id {data.get('id')!r} differs from its folder {incident_id}",
                file,
                "id",
                f"set id: {incident_id}",
            )
        )
    detected = data.get("detected_at")
    if isinstance(detected, str):
        try:
            moment = dt.datetime.fromisoformat(detected)
        except ValueError:
            found.append(
                Problem(f"{detected!r} is not a date-time", file, "detected_at", "ISO 8601")
            )
        else:
            if moment.tzinfo is None:
                found.append(Problem("no time zone", file, "detected_at", "add an offset"))
    return found


def load_incident(project: Project, incident_id: str) -> Incident:
    """A valid incident, or OpsledgerError (exit 2) naming every problem."""
    checked_id(incident_id, INCIDENT_ID, "INC-0001")
    path = incident_file(project, incident_id)
    if not path.is_file():
        known = ", ".join(incident_ids(project)[-5:]) or "none yet"
        raise OpsledgerError(
            Problem(
                f"no incident {incident_id}",
                str(path),
                fix=f"see opsledger incident list (latest: {known})",
            )
        )
    data = stringify(load_yaml(path, what="incident"))
    found = incident_problems(data, str(path), incident_id)
    if found:
        raise OpsledgerError(found)
    return Incident(incident_id, path, data)


def load_incidents(project: Project) -> list[Incident]:
    """Every incident, or OpsledgerError (exit 2) naming each one that does not read.

    Counts, clocks and suggestions built on a subset would be wrong without saying so (a
    report undercounting, a breach not told), so whatever sums incidents reads them all or
    refuses; `scan_incidents` is for the few callers that show what they could not read.
    """
    incidents, problems = scan_incidents(project)
    if problems:
        raise OpsledgerError(problems)
    return incidents


def scan_incidents(project: Project) -> tuple[list[Incident], list[Problem]]:
    """Every incident that reads and validates, and the problems of those that do not.

    The caller must show the problems (incident list, audit findings, detection).
    """
    incidents, problems = [], []
    for incident_id in incident_ids(project):
        try:
            incidents.append(load_incident(project, incident_id))
        except OpsledgerError as err:
            problems += err.problems
    return incidents, problems


def incident_text(incident: Incident) -> str:
    """The file text of a valid incident; an invalid or oversized one raises (exit 2).

    Steps write through `ledger.record_step`, which writes and commits or restores, so a step
    refused here or by git leaves the file as it was.
    """
    found = incident_problems(incident.data, str(incident.path), incident.id)
    if found:
        raise OpsledgerError(found)
    return _bounded(dump(incident.data, INCIDENT_ORDER), incident.path, "incident")


def _bounded(text: str, path: Path, what: str) -> str:
    """Refuse a file the loader could not read back (MAX_BYTES): it would drop out of lists.

    Each text field has a schema limit, but a timeline grows with every step; past the loader's
    limit the file becomes unreadable and every list and report would have to skip it.
    """
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise OpsledgerError(
            Problem(
                f"the {what} would grow to {size} bytes, past the {MAX_BYTES}-byte limit "
                "of a readable file",
                str(path),
                "timeline",
                "keep the text short: attach long output with opsledger incident collect, "
                "or record the rest in a problem",
            )
        )
    return text


def load_problem(project: Project, problem_id: str) -> ProblemRecord:
    """A valid problem, or OpsledgerError (exit 2) naming every problem."""
    checked_id(problem_id, PROBLEM_ID, "PRB-0001")
    path = problem_file(project, problem_id)
    if not path.is_file():
        raise OpsledgerError(
            Problem(f"no problem {problem_id}", str(path), fix="see opsledger problem list")
        )
    data = stringify(load_yaml(path, what="problem"))
    found = schema_problems(data, schema("problem"), str(path))
    if data.get("id") not in (None, problem_id):
        found.append(Problem(f"id differs from its folder {problem_id}", str(path), "id"))
    if found:
        raise OpsledgerError(found)
    return ProblemRecord(problem_id, path, data)


def load_problems(project: Project) -> list[ProblemRecord]:
    """Every problem, or OpsledgerError (exit 2) naming each one that does not read."""
    found, problems = scan_problems(project)
    if problems:
        raise OpsledgerError(problems)
    return found


def scan_problems(project: Project) -> tuple[list[ProblemRecord], list[Problem]]:
    """Every problem that reads and validates, and the problems of those that do not."""
    found, problems = [], []
    for problem_id in problem_ids(project):
        try:
            found.append(load_problem(project, problem_id))
        except OpsledgerError as err:
            problems += err.problems
    return found, problems


def problem_text(record: ProblemRecord) -> str:
    """The file text of a valid problem; an invalid or oversized one raises (exit 2)."""
    found = schema_problems(record.data, schema("problem"), str(record.path))
    if found:
        raise OpsledgerError(found)
    return _bounded(dump(record.data, PROBLEM_ORDER), record.path, "problem")
