"""Applying a change: decide now, lock, run, verify, roll back on failure, record in git.

The order is the safety argument. Earlier runs' evidence is settled first (reconcile.py), and
nothing runs unless git holds the content exactly (content.require_committed). The
decision is taken at apply time (approvals, windows and freezes are judged at the moment the
run starts), so a plan approved yesterday cannot run in tonight's freeze; and taken again once
the target hosts are locked (lock.py), because waiting for a lock may outlast the window. A
write-ahead record (result `started`) is committed before the first task and a guard process
(guard.py) ends the playbook if this process dies, so a killed apply is found and recorded as
`interrupted` by the next command instead of vanishing. The runbook runs through ansible-runner
from an export of exactly the approved content (export.py: no bookkeeping, nothing untracked,
whatever a play computes) and watched (readguard.py): a run that reads a tracked file outside
the approved content, or rewrites its export, is not the approved change and fails; then the
Testinfra suites the runbook names prove the result. A chosen clock (`now`) is for the lab
only. A failed run or a failed verification runs the rollback runbook against the desired state
as it was *before* the change (an export of that commit's content) and verifies again, so
"rolled back" means "proven back", not "attempted". A Ctrl-C cancels the run and is recorded as
such. Whatever happened, the final record is written and committed: it is the evidence auditors
read; when git refuses the commit, the result says so and names the file, and the next command
commits it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from opsledger import procs
from opsledger.changes import Change, load_change
from opsledger.content import change_content, require_committed
from opsledger.decide import Decision, decide_again
from opsledger.errors import EXIT_DENIED, EXIT_INVALID, OpsledgerError, Problem
from opsledger.export import altered, commit_content, exported
from opsledger.faults.detect import record_detection
from opsledger.gitrepo import git, head, require_history
from opsledger.guard import Guard
from opsledger.identity import commit_evidence, runner_identity
from opsledger.joblog import JobLog, log_path_of
from opsledger.lock import HeldLocks, acquire, release
from opsledger.maintenance import maintenance_of, run_vars
from opsledger.notify import denied_notice, notify, notify_records, run_notice
from opsledger.origin_records import OriginRecords, refuse_running
from opsledger.policy import require_policies
from opsledger.project import DEFAULT_ENVIRONMENT, Project
from opsledger.readguard import outside_content, watching_reads
from opsledger.reconcile import Reconciled, commit_lock, commit_or_journal, reconcile_runs
from opsledger.records import (
    STARTED,
    Record,
    change_runs,
    run_record_path,
    stamp,
    started_record_path,
    write_record,
)
from opsledger.reviews import open_review
from opsledger.runbooks import Runbook, load_runbook, require_truthful
from opsledger.runner import PlaybookRun, run_playbook
from opsledger.shards import ShardRun, refuse_shard_ran
from opsledger.verify import VerifyResult, verify

Events = Callable[[dict[str, Any]], None]
# Results after which the same content may run again by itself: nobody judged it a failure.
RETRYABLE = ("canceled", "interrupted")


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
            "verification": _verification(self.verification),
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


@dataclass
class ApplyResult:
    change_id: str
    result: str  # one of records.RESULTS
    decision: Decision
    record: Record
    record_path: Path
    commit: str
    run: PlaybookRun | None = None
    verification: VerifyResult | None = None
    rollback: RollbackOutcome | None = None
    review_path: Path | None = None
    stale_locks: list[str] = field(default_factory=list)
    commit_problem: Problem | None = None  # the record is written but git refused it

    @property
    def ok(self) -> bool:
        return self.result == "success" and self.committed

    @property
    def committed(self) -> bool:
        return self.commit_problem is None


def _verification(result: VerifyResult | None) -> dict[str, Any]:
    if result is None:
        return {"status": "skipped"}
    return {
        "status": "passed" if result.ok else "failed",
        "environment": result.environment,
        "targets": result.targets,
        "suites": list(result.suites),
        "passed": result.count("passed"),
        "failed": result.count("failed") + result.count("error"),
        "skipped": result.count("skipped"),
        "duration_s": result.duration_s,
        "failures": [
            {"test": o.test, "host": o.host, "message": o.message} for o in result.failures
        ],
    }


def _verification_entry(
    checked: VerifyResult | None, skipped: bool, result: str, failure: str
) -> dict[str, Any]:
    if checked is not None or skipped:
        return _verification(checked)
    if failure.startswith("verification could not run"):
        return {"status": "error", "why": failure}
    why = "the run was canceled" if result == "canceled" else "the run did not succeed"
    return {"status": "not run", "why": why}


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
            and record.result == "success"
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
    rel = f"changes/{change_id}/change.yml"
    added = git(
        project.root,
        "log",
        "--first-parent",
        "--diff-filter=A",
        "--format=%H",
        "--",
        rel,
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


class _Interrupt:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a cancel request the runner polls.

    ansible-playbook runs in its own session, so a terminal's Ctrl-C reaches only us. We pass
    it on as SIGINT, which ansible-playbook handles by stopping after its running tasks and
    cleaning up its workers; only if it has not ended within GRACE seconds does ansible-runner
    kill it.
    """

    GRACE = 60.0

    def __init__(self) -> None:
        self.requested = False
        self.runner_pid: int | None = None
        self._signaled_at: float | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        if not self.requested:
            return False
        if self.runner_pid is None:
            return True
        if self._signaled_at is None:
            self._signaled_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.runner_pid, signal.SIGINT)
        return time.monotonic() - self._signaled_at > self.GRACE


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _phase(events: Events | None, phase: str, message: str, **extra: Any) -> None:
    if events:
        events({"event": "opsledger_phase", "phase": phase, "message": message, **extra})


def _noting_runner(held: HeldLocks, interrupt: _Interrupt, events: Events | None) -> Events:
    """Pass events on, noting the ansible-playbook pid (locks, cancel) when it first shows."""
    seen: set[int] = set()

    def handle(event: dict[str, Any]) -> None:
        pid = event.get("pid")
        if isinstance(pid, int) and pid not in seen:
            seen.add(pid)
            held.note_runner(pid)
            interrupt.runner_pid = pid
        if events:
            events(event)

    return handle


def _already_applied(project: Project, change_id: str, content: str = "") -> Record | None:
    """The change's successful run; with `content`, also a run of it that ended for good."""
    for record in reversed(change_runs(project)):
        if record.change != change_id:
            continue
        if record.result == "success":
            return record
        if content and record.content_sha256 == content and record.result not in RETRYABLE:
            return record
    return None


def _run(
    project: Project,
    change: Change,
    runbook: Runbook,
    events: Events | None,
    interrupt: _Interrupt,
    marker: str,
    journal: Path | None = None,
    env: dict[str, str] | None = None,
    verbosity: int = 0,
) -> PlaybookRun:
    return run_playbook(
        project,
        playbook=runbook.playbook,
        inventory=project.inventory_file(change.environment),
        limit=change.targets,
        params=change.params,
        tags=change.params.get("tags"),
        timeout=runbook.timeout,
        event_handler=events,
        cancel=interrupt,
        private_dir=journal,
        # The guard finds the run's processes by the marker; `env` adds the read watch.
        extra_env={**(env or {}), **procs.run_env(marker)},
        extravars=run_vars(project, change.environment),  # backup-first hosts (dr.yml)
        verbosity=verbosity,
        diff=True,  # the job log keeps a summary of each diff (joblog.py)
    )


def clock_override(project: Project, change_id: str, now: dt.datetime | None) -> None:
    """A chosen clock (`--at`) judges what-ifs; it never lets a run start outside the lab.

    Windows and freezes are judged at the moment the run starts: outside the lab that moment
    is the machine's clock, so `apply --at` cannot reopen yesterday's window.
    """
    if now is None:
        return
    change = load_change(project, change_id)
    if change.environment != DEFAULT_ENVIRONMENT:
        raise OpsledgerError(
            Problem(
                f"a chosen time (--at) applies only in the {DEFAULT_ENVIRONMENT}, "
                f"not in {change.environment}",
                f"changes/{change_id}/change.yml",
                "--at",
                "apply without --at, inside the change's window (decide and plan take --at "
                "for what-ifs)",
            ),
            EXIT_INVALID,
        )


def _unapproved_reads(
    project: Project,
    tree: Project,
    change: Change,
    runbook: Runbook,
    decision: Decision,
    opened: set[str],
) -> str:
    """Why the run cannot count as the approved content, or "" when it can."""
    if decision.content is None:
        return "no approved content to compare the run with"
    rewritten = altered(project, tree, decision.content.files)
    if rewritten:  # e.g. a task on localhost planted vars or a suite before verification
        return "the run changed the approved content it ran from: " + ", ".join(rewritten[:5])
    try:
        after = change_content(project, change, runbook, decision.hosts)
    except OpsledgerError as err:  # e.g. a symlink out of the repository appeared
        return f"the content cannot be read after the run: {err}"
    if after.sha256 != decision.content.sha256:
        changed = after.changed_since(decision.content.files)
        return "the content changed during the run: " + ", ".join(changed[:5])
    stray = outside_content(project, decision.content, opened)
    if stray:
        return (
            "Ansible read files outside the approved content: "
            + ", ".join(stray[:5])
            + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        )
    return ""


def _verify(
    project: Project, change: Change, runbook: Runbook, events: Events | None
) -> VerifyResult:
    targets = runbook.verify_targets or change.targets
    _phase(
        events, "verify", f"verifying {change.environment}:{targets} with {runbook.name}'s suites"
    )
    return verify(
        project, environment=change.environment, targets=targets, suites=runbook.verify_suites
    )


def _rollback(
    project: Project,
    change: Change,
    runbook: Runbook,
    reason: str,
    events: Events | None,
    interrupt: _Interrupt,
    skip_verify: bool,
    marker: str,
) -> RollbackOutcome | None:
    name = change.rollback or runbook.rollback
    if not name:
        _phase(events, "rollback", f"{runbook.name} declares no rollback runbook: none run")
        return None
    base = rollback_base(project, change.id, change.environment)
    _phase(events, "rollback", f"rolling back with {name} to {base[:10]} ({reason})")
    # The desired state as it was, exported like the run's own content (export.py).
    with exported(project, commit_content(project, base, change.id)) as before:
        back = load_runbook(before, name)
        run = _run(before, change, back, events, interrupt, marker)
        checked = None
        if run.status == "successful" and not skip_verify:
            checked = _verify(before, change, back, events)
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
        with _Interrupt() as interrupt:
            back = _rollback(
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


def _refuse_applied(project: Project, change_id: str, again: bool, content: str = "") -> None:
    previous = _already_applied(project, change_id, content)
    if previous and not again:
        raise OpsledgerError(
            Problem(
                f"already applied successfully at {previous.finished_at}"
                if previous.result == "success"
                else f"already run: its run at {previous.finished_at} ended {previous.result}",
                f"changes/{change_id}/runs",
                "result",
                "pass --again to run it once more (recorded as another run)",
            ),
            EXIT_INVALID,
        )


def _refuse_denied(
    change_id: str, decision: Decision, when: str = "", *, project: Project | None = None
) -> OpsledgerError:
    """The denial; one denied while its change window is open is also notified."""
    problems = [
        Problem(f"denied by rule {c.rule}{when}: {c.why}", f"changes/{change_id}", c.rule)
        for c in decision.checks
        if not c.passed
    ]
    if project is not None:
        change = load_change(project, change_id)
        if change.window_start <= decision.at <= change.window_end:
            reasons = [p.message for p in problems]
            for line in notify(
                project, denied_notice(change_id, change.environment, reasons)
            ).lines():
                problems.append(Problem(line, "policies/notifications.yml", "channels"))
    return OpsledgerError(problems, EXIT_DENIED)


def reconcile_first(project: Project, events: Events | None) -> Reconciled:
    """Settle earlier runs' evidence first: nothing runs while a record is not committed."""
    done = reconcile_runs(project)
    for note in done.notes:
        _phase(events, "reconcile", note)
    done.raise_problems()
    return done


@dataclass
class _Outcome:
    result: str
    run: PlaybookRun | None
    checked: VerifyResult | None
    back: RollbackOutcome | None
    failure: str
    timings: dict[str, float]
    # what made the run unprovable as the approved content (read watch, see readguard.py)
    findings: list[dict[str, Any]] = field(default_factory=list)


def _execute(
    project: Project,
    change: Change,
    runbook: Runbook,
    decision: Decision,
    events: Events | None,
    interrupt: _Interrupt,
    skip_verify: bool,
    marker: str,
    journal: Path,
    verbosity: int = 0,
) -> _Outcome:
    """Run, verify, and roll back on failure; what happened, never an exception from the run.

    The run is watched (readguard.py): a run that read files outside the approved content, or
    during which the content changed, is not the approved change and is treated as failed.
    """
    timings: dict[str, float] = {}
    if decision.content is None:  # never run what no approval covers
        return _Outcome("failed", None, None, None, "no approved content to run", timings)
    # Run and verify from an export of exactly the approved content (export.py): bookkeeping,
    # untracked files and submodules are not there for a play, a lookup or a suite to read.
    with exported(project, decision.content.files) as tree:
        runbook = load_runbook(tree, runbook.name)
        _phase(events, "run", f"running {runbook.name} on {change.environment}:{change.targets}")
        clock = time.monotonic()
        with watching_reads() as watch:
            try:
                run: PlaybookRun | None = _run(
                    tree,
                    change,
                    runbook,
                    events,
                    interrupt,
                    marker,
                    journal,
                    watch.env(),
                    verbosity,
                )
            except OpsledgerError as err:  # ansible-playbook failed before reaching any host
                timings["run_s"] = round(time.monotonic() - clock, 3)
                return _Outcome("failed", None, None, None, f"run failed: {err}", timings)
            opened = watch.files()
        assert run is not None
        timings["run_s"] = round(time.monotonic() - clock, 3)
        checked: VerifyResult | None = None
        back: RollbackOutcome | None = None
        failure = ""
        unapproved = _unapproved_reads(project, tree, change, runbook, decision, opened)
        findings = [{"rule": "approved-content", "message": unapproved}] if unapproved else []
        if run.status not in ("successful", "canceled") and not interrupt.requested:
            failed = [f"{h}: {r.failures[0]}" for h, r in run.hosts.items() if r.failures]
            failure = f"run {run.status}: " + ("; ".join(failed) or f"rc={run.rc}")
        elif unapproved and run.status == "successful":
            failure = unapproved
        elif run.status == "successful" and not skip_verify and not interrupt.requested:
            clock = time.monotonic()
            try:
                checked = _verify(tree, change, runbook, events)
            except OpsledgerError as err:  # the suites could not run: the change is unproven
                failure = f"verification could not run: {err}"
            timings["verify_s"] = round(time.monotonic() - clock, 3)
            if checked is not None and not checked.ok:
                names = [f"{o.test}[{o.host}]" for o in checked.failures[:5]]
                failure = "verification failed: " + (", ".join(names) or "no test passed")
        if interrupt.requested or run.status == "canceled":
            # The operator stopped it: no rollback they did not ask for.
            return _Outcome("canceled", run, checked, None, failure, timings, findings)
        if not failure:
            return _Outcome("success", run, checked, None, failure, timings, findings)
        _phase(events, "failed", failure)
        clock = time.monotonic()
        try:
            back = _rollback(
                project, change, runbook, failure, events, interrupt, skip_verify, marker
            )
        except OpsledgerError as err:
            name = change.rollback or runbook.rollback or ""
            back = RollbackOutcome(name, "", f"{failure}; {err}", None, None, False)
        timings["rollback_s"] = round(time.monotonic() - clock, 3)
        result = "failed" if back is None else "rolled_back" if back.ok else "rollback_failed"
        return _Outcome(result, run, checked, back, failure, timings, findings)


def _journal(project: Project, run_id: str) -> Path:
    """Machine-local folder of one run: ansible-runner's event journal and the guard's log."""
    return project.state_dir / "runs" / run_id.replace("/", "-")


def apply_change(
    project: Project,
    change_id: str,
    *,
    now: dt.datetime | None = None,
    wait: float = 0,
    skip_verify: bool = False,
    again: bool = False,
    events: Events | None = None,
    origin: OriginRecords | None = None,
    base: str | None = None,
    verbosity: int = 0,
    decided: Decision | None = None,
    shard: ShardRun | None = None,
) -> ApplyResult:
    """Decide, lock, settle and decide again, record ahead, run, verify, roll back, record.

    With `shard` (shards.py: `apply --shard I/N`), only the shard's hosts are locked, run,
    verified and rolled back, and the records are the shard's (`changes/<ID>/shards/`), never
    a run record: the change's run record is the merge of its shards (shards.merge_shards).

    With `origin` (CI: `ci apply --push`), the run records on the origin decide who runs
    (origin_records.py): pulled once the hosts are locked, the run claimed by pushing its
    write-ahead record (exit 4 when another controller's claim came first), the final record
    published before the locks are released.

    Raises OpsledgerError with exit 3 when policy denies the change (before the locks or once they
    are held: a `wait` may outlast the window), exit 4 when another run holds a target's lock, and
    exit 2 when earlier evidence or the write-ahead record cannot be committed, or when `now` (a
    chosen clock, for the lab only) is given for another environment; in all these cases nothing has
    run. It exits 2 too when the content is not committed (a tracked file modified or staged, or an
    untracked one outside bookkeeping: content.py). `base` names the protected branch decide trusts;
    `decided` is a decision of this change already made (apply --pending), reused while HEAD,
    base and content are the same (decide_again), so a queue is decided once per change.
    Otherwise the result says success, failed, rolled_back, rollback_failed or canceled, and
    `committed` whether git has the record (when not, `commit_problem` names the file and the fix,
    and the next command retries the commit). A run that read files outside the approved content, or
    during which the content changed, is not a success.

    Example:
        result = apply_change(find_project(), "CHG-0001")
        result.result, result.record_path, result.commit
    """
    require_history(project.root, "apply")
    require_policies(project)  # fail closed before anything is touched, reconciling included
    clock_override(project, change_id, now)  # a chosen clock: the lab only
    reconciled = reconcile_first(project, events)
    require_committed(project, change_id)  # what runs is what git holds, and approvals bind
    _phase(events, "decide", f"deciding {change_id}")
    decision = decide_again(project, change_id, decided, now=now, base=base)
    if not decision.allowed:
        raise _refuse_denied(change_id, decision, project=project)
    _refuse_applied(project, change_id, again)
    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    require_truthful(runbook)  # its plays batch as runbook.yml says, or nothing runs
    run_vars(project, change.environment)  # dr.yml's backup-first hosts resolve, or nothing runs
    skip_verify = skip_verify or not runbook.verify_suites  # the schema's "[] = none"
    identity = runner_identity()
    hosts = list(shard.hosts) if shard else decision.hosts
    _phase(events, "lock", f"locking {', '.join(hosts)}")
    lock_started = time.monotonic()
    held = acquire(
        project,
        environment=change.environment,
        hosts=hosts,
        change=change_id,
        owner=identity["person"],
        wait=wait,
        runner=" ".join(filter(None, (procs.ci_job(), f"shard {shard.shard}" if shard else ""))),
    )
    try:
        lock_wait = time.monotonic() - lock_started
        for note in held.taken_over:
            _phase(events, "lock", f"taken over: {note}")
        # Decide again now that the hosts are ours: a wait may have outlasted the window, or
        # another change may have run meanwhile.
        again_at = now + dt.timedelta(seconds=lock_wait) if now else None
        if origin is not None:  # what other controllers ran meanwhile is on the origin
            origin.pull()
        # Settle again: the run whose hosts we waited for may have died meanwhile (its guard
        # held them until its playbook ended); its `interrupted` record goes before ours.
        settled = reconcile_first(project, events)
        reconciled = Reconciled(
            reconciled.committed + settled.committed,
            reconciled.interrupted + settled.interrupted,
            settled.running,
            reconciled.removed + settled.removed,
        )
        if origin is not None:
            refuse_running(project, change_id)
        if shard is not None:
            refuse_shard_ran(project, change_id, shard)  # another job ran this shard
        require_committed(project, change_id)  # nothing slipped in while we waited
        decision = decide_again(project, change_id, decision, now=again_at, base=base)
        if not decision.allowed:
            raise _refuse_denied(
                change_id, decision, f" after waiting {lock_wait:.0f} s", project=project
            )
        # by the run we waited for; in CI (origin) also one that ended for good: pending would
        # not have chosen this change had it known (its content "cannot run" again)
        _refuse_applied(project, change_id, again, decision.content_sha256 if origin else "")
        with _Interrupt() as interrupt:
            result = _locked_run(
                _Run(
                    project,
                    change,
                    runbook,
                    decision,
                    held,
                    identity,
                    lock_wait,
                    reconciled,
                    origin,
                    verbosity,
                    shard,
                ),
                interrupt,
                events,
                skip_verify,
            )
    finally:
        warnings = release(held)
    for warning in warnings:
        _phase(events, "lock", warning)
    return result


@dataclass
class _Run:
    """What a run is about, fixed before its first task."""

    project: Project
    change: Change
    runbook: Runbook
    decision: Decision
    held: HeldLocks
    identity: dict[str, Any]
    lock_wait: float
    reconciled: Reconciled
    origin: OriginRecords | None = None
    verbosity: int = 0  # -v/-vv: passed to ansible-playbook, its output shown on stderr
    shard: ShardRun | None = None  # one shard of the change (shards.py): its hosts only

    def __post_init__(self) -> None:
        if self.shard is not None:  # the shard's hosts are what runs, verifies, rolls back
            self.change = replace(self.change, targets=",".join(self.shard.hosts))
            self.runbook = replace(self.runbook, verify_targets=None)

    @property
    def hosts(self) -> list[str]:
        return list(self.shard.hosts) if self.shard else self.decision.hosts

    def record_paths(self, started: dt.datetime) -> tuple[Path, Path]:
        """(write-ahead, final): the run's under runs/, or the shard's under shards/."""
        if self.shard is not None:
            return self.shard.paths(self.project, self.change.id)
        return (
            started_record_path(self.project, self.change.id, started),
            run_record_path(self.project, self.change.id, started),
        )


def _ahead(run: _Run, started: dt.datetime, guard: Guard, journal: Path) -> Record:
    """The write-ahead record: who runs what, judged how, and how to tell if it still lives."""
    change, project = run.change, run.project
    return Record(
        kind="run",
        environment=change.environment,
        result=STARTED,
        started_at=started.isoformat(),
        finished_at="",
        change=change.id,
        runbook=run.runbook.name,
        params=change.params,
        targets=change.targets,
        hosts=run.hosts,
        runner={
            **run.identity,
            "machine_key": procs.machine_key(),
            "pid_start": procs.start_time(os.getpid()),
            "guard_pid": guard.pid,
            "guard_start": procs.start_time(guard.pid),
            "run": run.held.holder.run,
            "journal": journal.relative_to(project.root).as_posix(),
            **({"shard": run.shard.as_dict()} if run.shard else {}),
        },
        git_commit=head(project.root),
        content_sha256=run.decision.content_sha256,
        policy_sha256=run.decision.policy_sha256,
        decision=run.decision.as_dict(),
        lock={
            **run.held.as_dict(),
            "reconciled": run.reconciled.notes,
            "wait_s": round(run.lock_wait, 3),
        },
    )


def _locked_run(
    run: _Run, interrupt: _Interrupt, events: Events | None, skip_verify: bool
) -> ApplyResult:
    """Everything that happens while the hosts are locked, with the guard watching."""
    project, change, runbook = run.project, run.change, run.runbook
    started = dt.datetime.now(dt.UTC)
    run_id = f"{change.id}/{stamp(started)}"
    marker = procs.new_marker(run_id)  # its processes, told apart from any other checkout's
    journal = _journal(project, run_id)
    journal.mkdir(parents=True, exist_ok=True)
    origin = run.held.origin.as_spec() if run.held.origin is not None else None
    guard = Guard(marker, run.held.fds, origin, journal / "guard.log")
    try:
        run.held.note(run=marker, guard_pid=guard.pid, guard_start=procs.start_time(guard.pid))
        ahead = _ahead(run, started, guard, journal)
        ahead_path, final = run.record_paths(started)
        try:
            ahead_path = _write_ahead(project, change.id, ahead_path, ahead)
            if run.origin is not None:  # the origin's branch is where a run is claimed
                with commit_lock(project):
                    run.origin.claim(change.id, ahead_path)
        except OpsledgerError:
            shutil.rmtree(journal, ignore_errors=True)
            raise
        _phase(events, "record", f"run {run_id} recorded as started")
        log = JobLog(then=events)  # every task result, kept with the record (joblog.py)
        outcome = _execute(
            project,
            change,
            runbook,
            run.decision,
            _noting_runner(run.held, interrupt, log),
            interrupt,
            skip_verify,
            marker,
            journal,
            run.verbosity,
        )
        finished = dt.datetime.now(dt.UTC)
        played = outcome.run
        notice = run_notice(
            change.id,
            change.title,
            change.environment,
            change.targets,
            runbook.name,
            outcome.result,
            outcome.failure,
            final.relative_to(project.root).as_posix(),
            hosts=run.hosts,
            rollback=outcome.back.summary() if outcome.back else "",
        )
        # A shard tells nobody: the change's run is the merge of its shards (shards.py).
        told = None if run.shard else notify(project, notice)
        for line in told.lines() if told else []:
            _phase(events, "notify", line)
        record = replace(
            ahead,
            result=outcome.result,
            finished_at=finished.isoformat(),
            runner={
                **run.identity,
                "run": run_id,
                **(
                    {"shard": run.shard.as_dict(), "lock_runner": run.held.holder.runner}
                    if run.shard
                    else {}
                ),
            },
            stats=played.host_stats() if played else {},
            changed_tasks=[
                {"host": name, "task": c.task, "role": c.role}
                for name, h in sorted(played.hosts.items())
                for c in h.changes
            ]
            if played
            else [],
            verification=_verification_entry(
                outcome.checked, skip_verify, outcome.result, outcome.failure
            ),
            rollback=outcome.back.as_dict() if outcome.back else None,
            findings=outcome.findings,
            measurements={"lock_wait_s": round(run.lock_wait, 3), **outcome.timings},
            maintenance=maintenance_of(played.data) if played else {},
            notifications=told.as_list() if told else [],
        )
        # Written and committed under one hold of the checkout's commit lock: another command
        # settling evidence never sees this record between the two.
        with commit_lock(project):
            kept = log_path_of(final)
            record = replace(record, log=log.write(kept))
            path = write_record(final, record)
            review = None if run.shard else open_review(project, change, finished)
            drilled, drill_path = ("", None)
            if played and not run.shard:
                drilled, drill_path = _drill_record(
                    project, change, runbook, started, played, outcome.checked, record.hosts
                )
            sha, problem = commit_or_journal(
                project,
                [path, kept] + ([review] if review else []) + ([drill_path] if drill_path else []),
                f"Run {change.id}: {outcome.result} ({runbook.name} on "
                f"{change.environment}:{change.targets})",
                outcome.result,
            )
        if drilled:
            _phase(events, "drill", drilled)
        if problem is None and run.shard is None:  # incidents follow committed evidence only
            detected = record_detection(project, [path] + ([drill_path] if drill_path else []))
            if detected.summary():
                _phase(events, "incidents", detected.summary())
        if problem is None and run.origin is not None:
            try:  # before the locks go: the next holder must see it
                run.origin.publish()
            except OpsledgerError as err:  # ci apply publishes again, and fails loudly
                _phase(events, "record", f"not yet on the origin: {err}")
        if problem is None and drill_path:  # a failed drill run is told like `drill`'s
            for drill_told in notify_records(project, [drill_path]):
                for line in drill_told.lines():
                    _phase(events, "notify", line)
        shutil.rmtree(journal, ignore_errors=True)
    finally:
        guard.done()
    where = path.relative_to(project.root)
    if problem is None:
        _phase(events, "record", f"{where} committed as {sha[:10]}")
    else:
        _phase(events, "record", f"{where} NOT COMMITTED: {problem}")
    return ApplyResult(
        change.id,
        outcome.result,
        run.decision,
        record,
        path,
        sha,
        played,
        outcome.checked,
        outcome.back,
        review,
        run.held.taken_over,
        problem,
    )


def _write_ahead(project: Project, change_id: str, path: Path, ahead: Record) -> Path:
    """Commit the started record before the first task, or run nothing (exit 2)."""
    with commit_lock(project):
        path = write_record(path, ahead)
        try:
            commit_evidence(project, [path], f"Run {change_id}: started")
        except OpsledgerError as err:
            path.unlink(missing_ok=True)
            raise OpsledgerError(
                [
                    Problem(
                        f"cannot commit the run's write-ahead record ({p.message}); nothing was "
                        "run",
                        str(path.relative_to(project.root)),
                        "git",
                        "fix the repository (a stale .git/index.lock with no git running can "
                        "be removed) and apply again",
                    )
                    for p in err.problems
                ],
                EXIT_INVALID,
            ) from None
    return path


def _drill_record(
    project: Project,
    change: Change,
    runbook: Runbook,
    started: dt.datetime,
    run: PlaybookRun,
    checked: VerifyResult | None,
    hosts: list[str],
) -> tuple[str, Path | None]:
    """A change that runs a DR drill runbook also leaves a drill record (committed with the run).

    Returns the one-line verdict and the record's path; ("", None) when the runbook is no drill.
    """
    service_name = runbook.raw.get("drill")
    if not service_name:
        return "", None
    from opsledger.drill import drill_record, load_services

    service = load_services(project).get(service_name)
    if service is None:
        return f"runbook drills {service_name!r}, not in policies/dr.yml: no drill record", None
    result = drill_record(
        project,
        service,
        environment=change.environment,
        started=started,
        run=run,
        checked=checked,
        hosts=hosts,
        params=change.params,
        change=change.id,
        commit=False,
    )
    verdict = "passed" if result.passed else "FAILED: " + "; ".join(result.reasons)
    return f"DR drill {service.name}: {verdict}", result.record_path
