"""The compliance table: each role control mapped to a benchmark, its task, its test, its waivers.

An auditor reads a hardening baseline against a benchmark (CIS Debian Linux 12, dev-sec's
os_hardening/ssh_hardening). The reference is data kept next to the control it describes:
`roles/<role>/meta/controls.yml` maps control ids to benchmark items. Tasks and tests come from
the role itself (roledocs: the task name ending `| OS-SSH-05`, the test `test_..._os_ssh_05`),
and waivers from `policies/waivers.yml`, so the table can never claim a control the role does
not implement or a test that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.policy.waivers import Waiver, load_waivers
from opsledger.roledocs import CONTROL, load_role
from opsledger.yamlio import load_yaml

CONTROLS_FILE = Path("meta") / "controls.yml"


@dataclass(frozen=True)
class ControlRow:
    role: str
    control: str
    title: str
    references: tuple[str, ...]  # benchmark items, e.g. ("5.1.20",); empty: no mapping
    tasks: tuple[str, ...]
    tests: tuple[str, ...]
    waivers: tuple[str, ...]  # "W-0001 (lab, molecule) until 2027-11-21: reason"


@dataclass
class ControlTable:
    benchmark: str
    title: str  # the benchmark's full name and version, from the controls files
    rows: list[ControlRow] = field(default_factory=list)

    def unmapped(self) -> list[str]:
        """Controls with no reference in this benchmark."""
        return [r.control for r in self.rows if not r.references]


def _text_list(value: Any, path: Path, where: str, problems: list[Problem]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    problems.append(
        Problem("not a list of benchmark items", str(path), where, 'write e.g. ["5.1.20"]')
    )
    return ()


def _load_controls(
    path: Path, known: set[str], problems: list[Problem]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """A role's controls file: (benchmark titles, control id -> entry); problems appended."""
    data = load_yaml(path, what="controls file")
    if not isinstance(data, dict):
        problems.append(
            Problem("not a mapping", str(path), "controls.yml", "write benchmarks: and controls:")
        )
        return {}, {}
    benchmarks = data.get("benchmarks") or {}
    controls = data.get("controls") or {}
    if not isinstance(benchmarks, dict) or not isinstance(controls, dict):
        problems.append(
            Problem(
                "benchmarks and controls must be mappings",
                str(path),
                "benchmarks/controls",
                "map a benchmark name to its title, a control id to its references",
            )
        )
        return {}, {}
    for control, entry in controls.items():
        if not CONTROL.fullmatch(str(control)):
            problems.append(
                Problem("not a control id", str(path), f"controls.{control}", "use e.g. OS-SSH-05")
            )
        elif control not in known:
            problems.append(
                Problem(
                    "no task of the role implements this control",
                    str(path),
                    f"controls.{control}",
                    "fix the id, or end the implementing task's name with | " + str(control),
                )
            )
        if not isinstance(entry, dict):
            problems.append(
                Problem(
                    "not a mapping",
                    str(path),
                    f"controls.{control}",
                    "give title: and one list per benchmark",
                )
            )
    return {str(k): str(v) for k, v in benchmarks.items()}, controls


def _waiver_text(waiver: Waiver) -> str:
    return (
        f"{waiver.id} ({', '.join(waiver.environments)}) until {waiver.expires}: "
        f"{' '.join(waiver.reason.split())}"
    )


def control_table(
    *, roles_dir: Path, tests_dir: Path, waivers_path: Path, benchmark: str
) -> ControlTable:
    """Every control of every role, with its reference in `benchmark`, tasks, tests, waivers.

    Raises OpsledgerError (exit 2) naming file and field for a malformed controls file, a
    reference to a control no task implements, or a benchmark no controls file names.

    Example:
        table = control_table(roles_dir=Path("roles"), tests_dir=Path("tests/infra"),
                              waivers_path=Path("policies/waivers.yml"), benchmark="cis")
        table.rows[0].references  # ("5.4.1.1", ...)
    """
    problems: list[Problem] = []
    waivers = load_waivers(waivers_path)
    titles: dict[str, str] = {}
    rows: list[ControlRow] = []
    for path in sorted(p.parent.parent for p in roles_dir.glob("*/meta/argument_specs.yml")):
        role = load_role(path, tests_dir)
        entries: dict[str, dict[str, Any]] = {}
        controls_path = path / CONTROLS_FILE
        if controls_path.exists():
            names, entries = _load_controls(controls_path, set(role.controls), problems)
            titles.update(names)
        for control in role.controls.values():
            entry = entries.get(control.id)
            entry = entry if isinstance(entry, dict) else {}
            refs = _text_list(
                entry.get(benchmark, []),
                controls_path,
                f"controls.{control.id}.{benchmark}",
                problems,
            )
            rows.append(
                ControlRow(
                    role=role.name,
                    control=control.id,
                    title=str(entry.get("title", "")),
                    references=refs,
                    tasks=tuple(dict.fromkeys(control.tasks)),
                    tests=tuple(control.tests),
                    waivers=tuple(_waiver_text(w) for w in waivers if control.id in w.controls),
                )
            )
    if benchmark not in titles:
        known = ", ".join(sorted(titles)) or "none"
        problems.append(
            Problem(
                f"unknown benchmark {benchmark!r}",
                str(roles_dir / "*" / CONTROLS_FILE),
                "benchmarks",
                f"use one of: {known}",
            )
        )
    if problems:
        raise OpsledgerError(problems)
    return ControlTable(benchmark=benchmark, title=titles[benchmark], rows=rows)


def render_markdown(table: ControlTable) -> str:
    """The table as Markdown, for an audit report or a pull request."""

    def cell(items: tuple[str, ...], code: bool = False) -> str:
        text = ", ".join(f"`{i}`" if code else i for i in items) if items else "—"
        return text.replace("|", "\\|")

    lines = [
        f"Benchmark: {table.title}",
        "",
        f"| control | {table.benchmark} | title | task | test | waiver |",
        "|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        lines.append(
            f"| {row.control} | {cell(row.references)} | {row.title.replace('|', '/')} | "
            f"{cell(row.tasks)} | {cell(row.tests, code=True)} | {cell(row.waivers)} |"
        )
    return "\n".join(lines) + "\n"
