"""`policy check`: every policy file linted at once; the gate that refuses bad rules.

It sits above the modules whose policy files it checks (the policy bundle, inspections.yml,
dr.yml, sla.yml's business hours and incidents.yml, notifications.yml, locks.yml), so each of
them keeps its own loader and none imports the check back: there is no late import to dodge a
cycle. decide, plan, apply and ci call `require_policies`; the CLI calls `policy_check`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opsledger.drill import load_services
from opsledger.errors import OpsledgerError, Problem
from opsledger.faults.policy import fault_policy_problems
from opsledger.inspections import load_inspection_plan
from opsledger.layout import CHANGES, RECORDS, policies_folder
from opsledger.maintenance import selects_somewhere
from opsledger.notify import load_notify_policy
from opsledger.policy.bundle import Policies, load_policies
from opsledger.policy.files import policy_path, read_policy
from opsledger.project import Project


@dataclass
class PolicyCheck:
    problems: list[Problem]
    hash: str
    summary: dict[str, int]
    policies: Policies | None = None


def policy_check(project: Project) -> PolicyCheck:
    """Lint the policies; problems come back (the CLI exits 2 when there are any).

    Example:
        policy_check(find_project()).problems  # []
    """
    policies, problems = load_policies(project, strict=False)
    for name, load in (("inspections.yml", load_inspection_plan), ("dr.yml", load_services)):
        path = policies_folder(project.root, name)
        if path.exists() or path.is_symlink():
            try:
                loaded = load(project)
            except OpsledgerError as err:
                problems += err.problems
            else:
                if name == "dr.yml":
                    problems += _dr_target_problems(project, loaded)
    problems += fault_policy_problems(project)  # sla.yml business hours, incidents.yml
    problems += load_notify_policy(project)[1]  # notifications.yml: schema, routes, URLs set here
    problems += _lock_policy_problems(project)
    # Two checks may find the same fault (a schema and a rule): list it once.
    problems = list({(p.file, p.field, p.message): p for p in problems}.values())
    summary = {
        "people": len(policies.people),
        "teams": len(policies.teams),
        "rules": len(policies.rules),
        "freezes": len(policies.freezes),
        "environments with windows": len(policies.windows),
    }
    return PolicyCheck(problems, policies.hash, summary, policies)


def _dr_target_problems(project: Project, services: dict) -> list[Problem]:
    """Each DR service's targets must select hosts in some environment's inventory.

    A misspelt group selected no host, silently: no backup before an upgrade (upgrade_backup)
    and no primary to drill. An environment without the service's hosts is fine.
    """
    return [
        Problem(
            f"{service.targets!r} selects no host in any environment's inventory",
            str(policies_folder(project.root, "dr.yml")),
            f"services.{name}.targets",
            "name the group of the service's hosts (e.g. db)",
        )
        for name, service in services.items()
        if not selects_somewhere(project, service.targets)
    ]


def _lock_policy_problems(project: Project) -> list[Problem]:
    """locks.yml against its schema, and naming only environments that exist."""
    path = policy_path(project, "locks")
    if not (path.exists() or path.is_symlink()):
        return []
    data, problems = read_policy(project, "locks", "lock policy")
    if data is None:
        return problems
    known = sorted(p.parent.name for p in project.root.glob("inventories/*/hosts.yml"))
    return [
        Problem(
            f"no inventory for environment {name!r}",
            str(path),
            f"environments.{name}",
            f"use one of: {', '.join(known)}",
        )
        for name in data.get("environments") or {}
        if name not in known
    ]


def require_policies(project: Project) -> Policies:
    """Policies that pass `policy check`, else OpsledgerError (exit 2) naming each problem.

    Nothing is decided on rules that do not check: decide, plan, apply and ci fail closed.

    Example:
        policies = require_policies(find_project())
    """
    stamp = _inputs_stamp(project)
    if stamp in _PASSED:  # apply --pending decides many changes: one check while nothing moved
        return _PASSED[stamp]
    checked = policy_check(project)
    if checked.problems:
        refusal = Problem(
            "policy check fails: nothing is decided on these rules",
            str(policies_folder(project.root)),
            fix="fix the problems above (opsledger policy check)",
        )
        raise OpsledgerError([*checked.problems, refusal])
    assert checked.policies is not None
    after = _inputs_stamp(project)  # reading an inventory sets Ansible's own variables
    _PASSED.clear()
    if after[:2] == stamp[:2]:  # no file moved while it was checked
        _PASSED[after] = checked.policies
    return checked.policies


_PASSED: dict[tuple, Policies] = {}  # this process's last passing check, by _inputs_stamp
# Bookkeeping policy check never reads (change requests, records) and what is not the project.
_NOT_READ = {".git", CHANGES, RECORDS, "incidents", "problems", ".opsledger", ".venv"}


def _inputs_stamp(project: Project) -> tuple:
    """What a passing policy check in this process stands on: the files and the environment.

    Every file it may read, by lstat, and the environment (notification URLs come from it).
    Each file of the project but bookkeeping and git, so a rule, an inventory, a runbook or a
    role edited between two decisions of one `apply --pending` is checked again.
    """
    root = str(project.root)
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if d not in ("__pycache__", "node_modules") and not (folder == root and d in _NOT_READ)
        ]
        for name in files:
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            entries.append((path, info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino))
    return (root, tuple(sorted(entries)), tuple(sorted(os.environ.items())))
