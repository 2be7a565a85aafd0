"""The policy files, each read with the one YAML loader and checked against its JSON Schema.

The semantic checks (policy.bundle, policy.waivers, inspections, drill) only ever see data
that passed its schema. Policies must fail closed: read leniently, a misspelt `environment:` in
a freeze is a freeze of nothing, `four_eyes: "false"` is true and `approvals: false` is zero
approvals, and each of those quietly allows what the rules meant to stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.layout import policies_folder
from opsledger.project import Project
from opsledger.schema import problems as schema_problems_of
from opsledger.schema import schema
from opsledger.yamlio import load_yaml, plain

# Schema name -> file under policies/ (`opsledger policy schema NAME` prints the schema).
POLICY_FILES = {
    "people": "people.yml",
    "changes": "changes.yml",
    "windows": "windows.yml",
    "sla": "sla.yml",
    "waivers": "waivers.yml",
    "inspections": "inspections.yml",
    "dr": "dr.yml",
    "incidents": "incidents.yml",
    "locks": "locks.yml",
    "notifications": "notifications.yml",
}


def policy_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one policy file (a key of POLICY_FILES)."""
    if name not in POLICY_FILES:
        raise OpsledgerError(
            Problem(
                f"no policy schema {name!r}",
                field="NAME",
                fix=f"use one of: {', '.join(POLICY_FILES)}",
            )
        )
    return schema(f"policy-{name}")


def policy_path(project: Project, name: str) -> Path:
    return policies_folder(project.root, POLICY_FILES[name])


def data_problems(data: Any, name: str, file: str) -> list[Problem]:
    """Every way a policy file's data breaks its schema (dates judged as the text written)."""
    return schema_problems_of(plain(data), policy_schema(name), file)


def read_policy(
    project: Project, name: str, what: str
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """A policy file's data when it is readable and passes its schema, else None and why.

    Example:
        data, problems = read_policy(find_project(), "windows", "windows file")
    """
    path = policy_path(project, name)
    try:
        data = load_yaml(path, what=what, root=project.root)
    except OpsledgerError as exc:
        return None, exc.problems
    found = data_problems(data, name, str(path))
    return (None if found else data), found
