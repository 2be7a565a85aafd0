"""Drift: where the hosts no longer match the desired state in git, and who owns each gap.

The converge runbook runs in check mode with diff across an environment (nothing changes on
the hosts). Every task that would change is drift: it is reported with its host, its role, the
controls its name carries and the role variables its source uses — the knobs in the inventory
that decide that piece of state — with the diff. The result is a record (`records/drift/`),
committed like every other piece of evidence, so reports show drift over time.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from opsledger.errors import OpsledgerError
from opsledger.faults.detect import record_detection
from opsledger.gitrepo import head, is_repo
from opsledger.identity import runner_identity
from opsledger.playbook_runs import run_playbook
from opsledger.project import Project
from opsledger.records import DriftState, Record, RunResult, save_evidence
from opsledger.roledocs import CONTROL
from opsledger.runbooks import load_runbook
from opsledger.yamlio import load_yaml


@dataclass
class DriftItem:
    host: str
    task: str
    role: str
    controls: list[str]
    variables: list[str]
    diff: str = ""


@dataclass
class DriftResult:
    environment: str
    targets: str
    hosts: dict[str, DriftState]
    items: list[DriftItem] = field(default_factory=list)
    record_path: Path | None = None
    commit: str | None = None
    incidents: str = ""  # what the record did to incidents (faults.detect), for the operator

    @property
    def drifted(self) -> bool:
        return any(state != DriftState.IN_SYNC for state in self.hosts.values())


@functools.cache
def _task_sources(role_dir: str) -> dict[str, str]:
    """Task and handler name -> the YAML source of that task, for one role."""
    sources: dict[str, str] = {}
    folder = Path(role_dir)
    for path in sorted([*folder.glob("tasks/*.yml"), *folder.glob("handlers/*.yml")]):
        try:
            tasks = load_yaml(path, expect=object, what="task file") or []
        except OpsledgerError:
            continue
        stack = list(tasks) if isinstance(tasks, list) else []
        while stack:
            task = stack.pop()
            if not isinstance(task, dict):
                continue
            for key in ("block", "rescue", "always"):
                stack += task.get(key) or []
            if "name" in task:
                sources[str(task["name"])] = yaml.safe_dump(task)
    return sources


def owners(project: Project, role: str, task: str) -> tuple[list[str], list[str]]:
    """(controls, role variables) behind one task of a role, read from the role's source.

    Example:
        owners(project, "os_baseline", "Write the pre-login banner shown by sshd | OS-BAN-01")
        # (['OS-BAN-01'], ['os_baseline_banner_enabled', 'os_baseline_banner_text'])
    """
    controls = sorted(set(CONTROL.findall(task)))
    role_dir = project.root / "roles" / role
    source = _task_sources(str(role_dir)).get(task, "")
    for template in re.findall(r"\bsrc: *['\"]?([\w./-]+\.j2)", source):  # what it renders
        path = role_dir / "templates" / template
        if path.is_file():
            source += path.read_text(errors="replace")
    names = re.compile(rf"\b({re.escape(role)}_[a-z0-9_]+)\b")
    found = set(names.findall(source))
    # role__name variables are the role's internals (vars/): follow them to the knobs an
    # inventory sets, which is what a reader of the drift report can change
    internals = _internals(str(role_dir))
    pending = [v for v in found if v.startswith(f"{role}__")]
    while pending:
        name = pending.pop()
        for used in names.findall(internals.get(name, "")):
            if used not in found:
                found.add(used)
                pending.append(used)
    variables = sorted(v for v in found if not v.startswith(f"{role}__"))
    return controls, variables


@functools.cache
def _internals(role_dir: str) -> dict[str, str]:
    """The role's internal variables (vars/*.yml) and the source text defining each."""
    text: dict[str, str] = {}
    for path in sorted(Path(role_dir).glob("vars/*.yml")):
        try:
            data = load_yaml(path, expect=object, what="role vars") or {}
        except OpsledgerError:
            continue
        if isinstance(data, dict):
            text.update({str(k): yaml.safe_dump(v) for k, v in data.items()})
    return text


def drift(
    project: Project,
    *,
    environment: str = "lab",
    targets: str = "all",
    record: bool = True,
) -> DriftResult:
    """Compare the hosts with git (converge in check mode with diff); record the result.

    Example:
        result = drift(find_project(), environment="lab")
        [(i.host, i.role, i.task, i.variables) for i in result.items]
    """
    inventory = project.require_environment(environment)
    runbook = load_runbook(project, "converge")
    started = dt.datetime.now(dt.UTC)
    run = run_playbook(
        project,
        playbook=runbook.playbook,
        inventory=inventory,
        limit=targets,
        params={},
        check=True,
        diff=True,  # each drift item carries its diff
        timeout=runbook.timeout,
    )
    result = DriftResult(environment, targets, {})
    for name, host in sorted(run.hosts.items()):
        if host.unreachable:
            result.hosts[name] = DriftState.UNREACHABLE
        elif host.failed:
            result.hosts[name] = DriftState.CANNOT_CHECK
        else:
            result.hosts[name] = DriftState.DRIFTED if host.changes else DriftState.IN_SYNC
        for change in host.changes:
            controls, variables = owners(project, change.role, change.task)
            result.items.append(
                DriftItem(name, change.task, change.role, controls, variables, change.diff)
            )
    if record and is_repo(project.root):
        finished = dt.datetime.now(dt.UTC)
        entry = Record(
            kind="drift",
            environment=environment,
            result=RunResult.FAILED if result.drifted else RunResult.SUCCESS,
            started_at=started.isoformat(),
            finished_at=finished.isoformat(),
            targets=targets,
            hosts=sorted(result.hosts),
            runner=runner_identity(),
            git_commit=head(project.root),
            stats={
                h: {"drifted_tasks": sum(i.host == h for i in result.items)} for h in result.hosts
            },
            findings=[
                {
                    "host": i.host,
                    "role": i.role,
                    "task": i.task,
                    "controls": i.controls,
                    "variables": i.variables,
                    "state": DriftState.DRIFTED,
                }
                for i in result.items
            ]
            + [
                {"host": h, "state": state}
                for h, state in result.hosts.items()
                if state in (DriftState.UNREACHABLE, DriftState.CANNOT_CHECK)
            ],
        )
        verdict = "drift found" if result.drifted else "in sync"
        saved = save_evidence(
            project,
            entry,
            started=started,
            name=environment,
            message=f"Drift {environment}: {verdict}",
        )
        path = result.record_path = saved.path
        result.commit = saved.commit
        # a drifted host opens an incident; in sync resolves
        result.incidents = record_detection(project, [path]).summary()
    return result
