"""Rolling a change back: to the desired state as it was before the change, proven by verify.

A failed run or a failed verification runs the rollback runbook against an export of the state
the environment last ran and verified before the change (evidence.py), else the commit before
the change arrived, and verifies again, so "rolled back" means "proven back".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from opsledger.changes import Change
from opsledger.errors import OpsledgerError, Problem
from opsledger.execution import Events, Interrupt, phase, run_runbook, verification, verify_run
from opsledger.export import commit_content, exported
from opsledger.gitrepo import git
from opsledger.identity import runner_identity
from opsledger.layout import REQUEST, change_pathspecs, stored_file
from opsledger.lock import acquire, release
from opsledger.maintenance import maintenance_of
from opsledger.playbook_runs import PlaybookRun
from opsledger.project import Project
from opsledger.records import Record, RunResult, stamp
from opsledger.runbooks import Runbook, load_runbook
from opsledger.verify import VerifyResult


@dataclass
class RollbackOutcome:
    runbook: str
    base_commit: str
    reason: str
    run: PlaybookRun | None
    verification: VerifyResult | None
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "base_commit": self.base_commit,
            "reason": self.reason,
            "result": "success" if self.ok else "failed",
            "run_status": self.run.status if self.run else "not run",
            "stats": self.run.host_stats() if self.run else {},
            "verification": verification(self.verification),
            "maintenance": maintenance_of(self.run.data) if self.run else {},
        }

    def summary(self) -> str:
        """One line for the run's notice: the rollback run, how it ended, its first failure."""
        status = self.run.status if self.run else "not run"
        failures = [
            f"{host}: {run.failures[0]}"
            for host, run in sorted((self.run.hosts if self.run else {}).items())
            if run.failures
        ]
        if self.verification is not None and not self.verification.ok:
            failures += [
                f"verification failed: {o.test}[{o.host}]" for o in self.verification.failures[:1]
            ]
        ended = "succeeded" if self.ok else "FAILED"
        return (
            f"rollback {self.runbook}: {ended} (run {status}"
            + "".join(f"; {f}" for f in failures[:2])
            + ")"
        )


def rollback_base(project: Project, change_id: str, environment: str | None = None) -> str:
    """The commit holding the desired state a rollback of the change returns to.

    With `environment`: the state that environment last ran and verified before the change came
    in — the commit of the newest successful run record that is evidence (committed by CI on the
    protected base, see evidence.py) and an ancestor of the change's arrival. That state was
    approved and applied. Only without such a run (a new environment): the first parent of the
    commit that brought `changes/<ID>/change.yml` into this branch, following first parents —
    after a merge, the target branch as it was before the merge; after a squash or a direct
    commit, the commit before it. After a fast-forward or rebase merge that parent is the
    requester's own commit, which nobody approved (hostile review F1), hence evidence first.
    """
    arrival = _before_arrival(project, change_id)
    if environment:
        verified = last_verified_state(project, environment, before=arrival, other_than=change_id)
        if verified:
            return verified
    return arrival


def last_verified_state(
    project: Project, environment: str, *, before: str, other_than: str = ""
) -> str | None:
    """The commit of the newest successful, evidenced run in `environment` that `before` holds."""
    from opsledger.base import resolve_base
    from opsledger.evidence import run_evidence

    def wanted(record: Record) -> bool:
        return (
            record.environment == environment
            and record.result == RunResult.SUCCESS
            and record.change != other_than
            and bool(record.git_commit)
        )

    try:
        base = resolve_base(project)
    except OpsledgerError:  # no protected base here: no evidence either
        return None
    for evidence in reversed(run_evidence(project, base, only=wanted)):
        commit = evidence.record.git_commit if evidence.record else ""
        if not evidence.trusted or not commit:
            continue
        held = git(project.root, "merge-base", "--is-ancestor", commit, before, check=False)
        if held.returncode == 0:
            return commit
    return None


def _before_arrival(project: Project, change_id: str) -> str:
    """The first parent of the commit that brought the change's change.yml into the branch."""
    rel = stored_file(project.root, change_id, REQUEST)
    added = git(
        project.root,
        "log",
        "--first-parent",
        "--diff-filter=A",
        "--format=%H",
        "--",
        *change_pathspecs(change_id, REQUEST),  # the oldest add, in either layout
    ).stdout.split()
    if not added:
        raise OpsledgerError(
            Problem(
                "the change file is not committed",
                rel,
                "git",
                "commit the change (and its desired-state edits) before applying it",
            )
        )
    parent = git(project.root, "rev-parse", "--verify", "-q", f"{added[-1]}^1", check=False)
    if parent.returncode != 0:
        raise OpsledgerError(
            Problem(
                "the change was added in the repository's first commit: there is no earlier "
                "state to roll back to",
                rel,
                "rollback",
                "commit the desired state before the change",
            ),
            1,
        )
    return parent.stdout.strip()


def roll_back(
    project: Project,
    change: Change,
    runbook: Runbook,
    reason: str,
    events: Events | None,
    interrupt: Interrupt,
    skip_verify: bool,
    marker: str,
) -> RollbackOutcome | None:
    name = change.rollback or runbook.rollback
    if not name:
        phase(events, "rollback", f"{runbook.name} declares no rollback runbook: none run")
        return None
    base = rollback_base(project, change.id, change.environment)
    phase(events, "rollback", f"rolling back with {name} to {base[:10]} ({reason})")
    # The desired state as it was, exported like the run's own content (export.py).
    with exported(project, commit_content(project, base, change.id)) as before:
        back = load_runbook(before, name)
        run = run_runbook(before, change, back, events, interrupt, marker)
        checked = None
        if run.status == "successful" and not skip_verify:
            checked = verify_run(before, change, back, events)
    ok = run.status == "successful" and (checked is None or checked.ok)
    return RollbackOutcome(name, base, reason, run, checked, ok)


def roll_back_hosts(
    project: Project,
    change: Change,
    hosts: list[str],
    *,
    reason: str,
    events: Events | None = None,
    wait: float = 600,
) -> dict[str, Any] | None:
    """Roll back some hosts of a change, locked, and verify them; None without a rollback.

    For a sharded run whose policy rolls every shard back when one fails (shards.py,
    `on_failure: all`): the shards that succeeded released their hosts, so they are locked
    again here (waiting up to `wait` s) and rolled back to the same base a failed shard uses.

    Example:
        roll_back_hosts(project, load_change(project, "CHG-0001"), ["lab-app1"], reason="x")
    """
    runbook = load_runbook(project, change.runbook)
    limited = replace(change, targets=",".join(hosts))
    started = dt.datetime.now(dt.UTC)
    held = acquire(
        project,
        environment=change.environment,
        hosts=hosts,
        change=change.id,
        owner=runner_identity()["person"],
        wait=wait,
    )
    try:
        with Interrupt() as interrupt:
            back = roll_back(
                project,
                limited,
                runbook,
                reason,
                events,
                interrupt,
                not runbook.verify_suites,
                f"{change.id}/{stamp(started)}-others",
            )
    finally:
        release(held)
    return None if back is None else {**back.as_dict(), "hosts": hosts}
