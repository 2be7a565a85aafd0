"""Runbooks: named, parameterised procedures (`runbooks/<name>/runbook.yml` + a playbook).

A runbook's metadata says what a change using it may pass (a JSON Schema for its params), how
risky it is, which change types may use it, whether check mode predicts it, how to verify it,
what rolls it back, and how it runs (serial, max fail percentage, timeout).

The metadata is the truth: `serial` and `max_fail_percentage` must be what every play that can
change a host says (`check_runbooks`, `opsledger runbook check`); apply refuses a runbook whose
plays disagree, so a reviewer never approves "one host at a time" while all run at once.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.playbooks import batch_size, fail_limit, plays_of
from opsledger.project import Project
from opsledger.schema import fast_schema, schema, schema_fingerprint, schema_problems
from opsledger.schema import problems as schema_problems_of
from opsledger.steady import remembered
from opsledger.yamlio import load_yaml, outside_problem

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Runbook:
    name: str
    path: Path  # the runbook's folder
    description: str
    playbook: Path
    parameters: dict[str, Any]
    change_types: tuple[str, ...]
    standard: bool
    risk: str
    check_mode: bool
    roles: tuple[str, ...]
    verify_suites: tuple[str, ...]
    verify_targets: str | None
    rollback: str | None
    serial: int | str | None
    max_fail_percentage: int | None
    timeout: int
    promotion: bool
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    # `parameters` as JSON when loaded (schema.schema_fingerprint): the fast path's key,
    # taken once per runbook version, not once per change an audit checks against it
    parameters_text: str | None = field(repr=False, compare=False, default=None)

    def param_problems(self, params: Any, file: str) -> list[Problem]:
        """Problems with a change's params against this runbook's parameter schema."""
        if self.parameters_text is not None and fast_schema(self.parameters_text).valid(params):
            return []
        return schema_problems_of(params, self.parameters, file, "params")


def runbook_dir(project: Project) -> Path:
    return project.root / "runbooks"


def runbook_names(project: Project) -> list[str]:
    return sorted(p.parent.name for p in runbook_dir(project).glob("*/runbook.yml"))


def load_runbook(project: Project, name: str) -> Runbook:
    """Load and check one runbook; every problem is reported at once.

    Example:
        load_runbook(find_project(), "converge").verify_suites
    """
    if not isinstance(name, str) or len(name) > 64 or not _NAME.fullmatch(name):
        raise OpsledgerError(
            Problem(
                f"{name!r} is not a runbook name",
                field="runbook",
                fix="use lowercase letters, digits and dashes",
            )
        )
    folder = runbook_dir(project) / name
    return remembered(("runbook", str(folder)), lambda: _fresh_runbook(project, name, folder))


def _fresh_runbook(project: Project, name: str, folder: Path) -> Runbook:
    """The runbook, loaded again only when a file it depends on changed since."""
    file = folder / "runbook.yml"
    key = (str(folder), _stamp(project, folder))
    if key in _CACHE:  # audits load the same runbook for every change
        return _CACHE[key]
    runbook = _load_runbook(project, name, folder, file)
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = runbook
    return runbook


_CACHE: dict[tuple, Runbook] = {}


def _stamp(project: Project, folder: Path) -> tuple:
    """What a loaded runbook depends on: its files, and which roles, suites, runbooks exist."""
    watched = [
        *(sorted(folder.glob("*")) if folder.is_dir() else []),
        runbook_dir(project),
        project.root / "roles",
        project.root / "tests" / "infra",
    ]
    return tuple((str(p), p.stat().st_mtime_ns) for p in watched if p.exists())


def _load_runbook(project: Project, name: str, folder: Path, file: Path) -> Runbook:
    if not file.is_file():
        known = ", ".join(runbook_names(project)) or "none yet"
        raise OpsledgerError(
            Problem(f"no runbook named {name!r}", str(file), "runbook", f"use one of: {known}")
        )
    data = load_yaml(file, what="runbook", root=project.root)
    problems = schema_problems_of(data, schema("runbook"), str(file))
    if problems:
        raise OpsledgerError(problems)
    problems += schema_problems(data["parameters"], str(file), "parameters")
    playbook = folder / data["playbook"]
    if refused := outside_problem(playbook, project.root):  # what runs is what git records
        problems.append(
            Problem(
                f"playbook {data['playbook']} {refused.message}",
                str(file),
                "playbook",
                refused.fix,
            )
        )
    elif not playbook.is_file():
        problems.append(
            Problem(
                f"playbook {data['playbook']} not found",
                str(file),
                "playbook",
                "create it next to runbook.yml",
            )
        )
    roles_dir = project.root / "roles"
    for role in data.get("roles", []):
        if not (roles_dir / role / "tasks" / "main.yml").is_file():
            problems.append(
                Problem(f"unknown role {role!r}", str(file), "roles", "name a folder of roles/")
            )
    suites_dir = project.root / "tests" / "infra"
    for suite in data["verification"]["suites"]:
        if not (suites_dir / f"test_{suite}.py").is_file():
            problems.append(
                Problem(
                    f"unknown verification suite {suite!r}",
                    str(file),
                    "verification.suites",
                    "name a tests/infra/test_<suite>.py",
                )
            )
    rollback = data.get("rollback", None)
    if rollback and not (runbook_dir(project) / rollback / "runbook.yml").is_file():
        problems.append(
            Problem(
                f"rollback runbook {rollback!r} does not exist",
                str(file),
                "rollback",
                f"use one of: {', '.join(runbook_names(project))}",
            )
        )
    if data.get("standard") and "standard" not in data["change_types"]:
        problems.append(
            Problem(
                "standard: true but 'standard' is not in change_types",
                str(file),
                "change_types",
                "add standard",
            )
        )
    if problems:
        raise OpsledgerError(problems)
    return Runbook(
        name=name,
        path=folder,
        description=data["description"].strip(),
        playbook=playbook,
        parameters=data["parameters"],
        change_types=tuple(data["change_types"]),
        standard=bool(data.get("standard", False)),
        risk=data["risk"],
        check_mode=data["check_mode"],
        roles=tuple(data.get("roles", [])),
        verify_suites=tuple(data["verification"]["suites"]),
        verify_targets=data["verification"].get("targets"),
        rollback=rollback,
        serial=data.get("serial"),
        max_fail_percentage=data.get("max_fail_percentage"),
        timeout=data["timeout"],
        promotion=bool(data.get("promotion", False)),
        raw=data,
        parameters_text=schema_fingerprint(data["parameters"]),
    )


def list_runbooks(project: Project) -> list[Runbook]:
    """Every runbook, checked; a broken one fails the whole listing with its problems.

    Example:
        [r.name for r in list_runbooks(find_project())]
    """
    problems: list[Problem] = []
    found = []
    for name in runbook_names(project):
        try:
            found.append(load_runbook(project, name))
        except OpsledgerError as exc:
            problems += exc.problems
    if problems:
        raise OpsledgerError(problems)
    return found


class CheckStatus(enum.Enum):
    AGREES = "agrees"
    DISAGREES = "disagrees"


@dataclass
class RunbookCheck:
    """Each runbook checked: its metadata against its plays (serial, max_fail_percentage)."""

    status: CheckStatus
    checked: list[str]
    problems: list[Problem]


def batch_problems(runbook: Runbook) -> list[Problem]:
    """Where the plays disagree with runbook.yml on serial or max_fail_percentage.

    A play that does not say takes Ansible's default (one batch of every host; no failure
    limit), so the metadata must say the same: `serial: "100%"`, `max_fail_percentage: null`.
    Plays that only sort or check hosts are not rollout plays and are left out (playbooks.py).
    """
    try:
        plays = plays_of(runbook.playbook)
    except OpsledgerError as err:
        return err.problems
    file = str(runbook.path / "runbook.yml")
    declared = {
        "serial": batch_size(runbook.serial),
        "max_fail_percentage": fail_limit(runbook.max_fail_percentage),
    }
    problems = []
    for play in (p for p in plays if p.rollout):
        written = {
            "serial": batch_size(play.serial),
            "max_fail_percentage": fail_limit(play.max_fail_percentage),
        }
        for key, want in declared.items():
            if written[key] != want:
                problems.append(
                    Problem(
                        f"runbook.yml says {_said(want)} but {play.file.name} {play.where} "
                        f"runs with {_said(written[key])}",
                        file,
                        key,
                        f"make them agree: write {key}: {_yaml(want)} on the play, or "
                        f"declare {_yaml(written[key])} here",
                    )
                )
    return problems


def _said(value: Any) -> str:
    return "no limit (null)" if value is None else repr(value)


def _yaml(value: Any) -> str:
    return "null" if value is None else f'"{value}"' if isinstance(value, str) else str(value)


def check_runbooks(project: Project, names: list[str] | None = None) -> RunbookCheck:
    """Check runbooks (default: all): metadata loads and says what the plays run with.

    Its serial and max_fail_percentage must be what every rollout play uses.

    Example:
        check_runbooks(find_project()).status  # CheckStatus.AGREES
    """
    problems: list[Problem] = []
    checked = []
    for name in names or runbook_names(project):
        try:
            runbook = load_runbook(project, name)
        except OpsledgerError as err:
            problems += err.problems
            continue
        checked.append(name)
        problems += batch_problems(runbook)
    status = CheckStatus.DISAGREES if problems else CheckStatus.AGREES
    return RunbookCheck(status, checked, problems)


def require_truthful(runbook: Runbook) -> None:
    """Refuse (exit 2) to run a runbook whose plays disagree with its metadata."""
    problems = batch_problems(runbook)
    if problems:
        raise OpsledgerError(problems)
