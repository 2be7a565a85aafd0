"""`policy check`: every policy file linted at once; the gate that refuses bad rules.

It sits above the modules whose policy files it checks (the policy bundle, inspections.yml,
dr.yml, sla.yml's business hours and incidents.yml, notifications.yml, locks.yml), so each of
them keeps its own loader and none imports the check back: there is no late import to dodge a
cycle. decide, plan, apply and ci call `require_policies`; the CLI calls `policy_check`.

A passing check is remembered twice: in the process, while no file it may read moved (lstat),
and between commands in `.opsledger/cache/policycheck.json` (localcache: authenticated by
the clone's key, ignored by git), by a digest of the content of every file it may read, the
environment, the day and opsledger's own code. Only a pass is kept: a failing check is run
again every time, and a kept pass loads the policies from the files again (strictly), so
what a decision judges is always read from the files as they are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.layout import CHANGES, RECORDS, policies_folder
from opsledger.localcache import load_cache, save_cache, strings
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
    # The loaders of the other policy files, imported when a check runs: a decision whose
    # pass was kept (require_policies) never needs them, and they cost a third of its start.
    from opsledger.drill import load_services
    from opsledger.faults.policy import fault_policy_problems
    from opsledger.inspections import load_inspection_plan
    from opsledger.notify import load_notify_policy

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
    from opsledger.maintenance import selects_somewhere

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
    digest = _inputs_digest(project, stamp)
    if digest in strings(load_cache(project, _CACHE).get("passed")):  # these very bytes passed
        policies = load_policies(project)[0]  # strict: raises on any problem it meets
        _PASSED.clear()
        _PASSED[stamp] = policies
        return policies
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
        # Kept under the environment it started with (reading an inventory sets Ansible's
        # variables), if no file's content moved while it was checked.
        if _inputs_digest(project, stamp) == digest:
            kept = strings(load_cache(project, _CACHE).get("passed"))
            passed = [d for d in kept if d != digest]
            save_cache(project, _CACHE, {"passed": [*passed[-(_KEPT - 1) :], digest]})
    return checked.policies


_CACHE = "policycheck"
_KEPT = 8  # passing digests kept: a few branches or environments switched between
# What shells set for themselves, different with each way of starting the same command.
_SHELL_ONLY = {"_", "OLDPWD", "SHLVL"}
_CODE = Path(__file__).resolve().parent  # opsledger's own code: its rules are part of a pass


def _inputs_digest(project: Project, stamp: tuple) -> str:
    """A digest of what a pass stands on, by content, for the cache between commands.

    Every file of the stamp (by its bytes), the environment, today's date (UTC: nothing dated
    is trusted past a day) and the opsledger code that checked it (its .py and schema files)
    with the Python version.
    """
    digest = hashlib.sha256(f"policycheck-1 {sys.version}\0".encode())
    digest.update(dt.datetime.now(dt.UTC).date().isoformat().encode())
    code = sorted(str(p) for p in _CODE.rglob("*") if p.suffix in (".py", ".json"))
    for path in [entry[0] for entry in stamp[1]] + code:
        try:
            with open(path, "rb") as handle:
                content = hashlib.sha256(handle.read()).hexdigest()
        except OSError:  # a socket, a dangling link: named, not read
            content = "unreadable"
        digest.update(f"\0{path}\0{content}".encode(errors="surrogateescape"))
    for name, value in stamp[2]:
        if name in _SHELL_ONLY:
            continue
        digest.update(f"\0{name}={value}".encode(errors="surrogateescape"))
    return digest.hexdigest()


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
