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

This module is the use case; running a runbook is execution.py, rolling back rollback.py, and
what a runbook declares to follow its run (a DR drill's record) afterrun.py.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from opsledger import procs
from opsledger.afterrun import after_run
from opsledger.changes import Change, load_change, load_withdrawal
from opsledger.commitlock import commit_lock
from opsledger.content import change_content, require_committed
from opsledger.decide import Decision, decide_again
from opsledger.errors import EXIT_DENIED, EXIT_INVALID, OpsledgerError, Problem
from opsledger.execution import (
    Events,
    Interrupt,
    noting_runner,
    phase,
    run_runbook,
    verification_entry,
    verify_run,
)
from opsledger.export import altered, exported
from opsledger.faults.detect import record_detection
from opsledger.gitrepo import head, require_history
from opsledger.guard import Guard
from opsledger.identity import runner_identity
from opsledger.joblog import JobLog, log_path_of
from opsledger.layout import REQUEST, RUNS, policy_file, shown_path, stored_file
from opsledger.lock import HeldLocks, acquire, release
from opsledger.maintenance import maintenance_of, run_vars
from opsledger.notify import denied_notice, notify, notify_records, run_notice
from opsledger.origin_records import OriginRecords, refuse_running
from opsledger.playbook_runs import PlaybookRun
from opsledger.policycheck import require_policies
from opsledger.project import DEFAULT_ENVIRONMENT, Project
from opsledger.readguard import outside_content, watching_reads
from opsledger.reconcile import Reconciled, commit_or_journal, reconcile_runs
from opsledger.records import (
    Record,
    RunResult,
    run_record_path,
    runs_of,
    save_record,
    stamp,
    started_record_path,
    write_record,
)
from opsledger.reviews import open_review
from opsledger.rollback import RollbackOutcome, roll_back
from opsledger.runbooks import Runbook, load_runbook, require_truthful
from opsledger.shards import ShardRun, refuse_shard_ran
from opsledger.verify import VerifyResult

# Results after which the same content may run again by itself: nobody judged it a failure.
RETRYABLE = (RunResult.CANCELED, RunResult.INTERRUPTED)


@dataclass
class ApplyResult:
    change_id: str
    result: RunResult
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
        return self.result == RunResult.SUCCESS and self.committed

    @property
    def committed(self) -> bool:
        return self.commit_problem is None


def _already_applied(project: Project, change_id: str, content: str = "") -> Record | None:
    """The change's successful run; with `content`, also a run of it that ended for good."""
    for record in reversed(runs_of(project, [change_id])[change_id]):
        if record.result == RunResult.SUCCESS:
            return record
        if content and record.content_sha256 == content and record.result not in RETRYABLE:
            return record
    return None


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
                stored_file(project.root, change_id, REQUEST),
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
        shown = [shown_path(project.root, p) for p in rewritten[:5]]  # keys, named where they lie
        return "the run changed the approved content it ran from: " + ", ".join(shown)
    try:
        after = change_content(project, change, runbook, decision.hosts)
    except OpsledgerError as err:  # e.g. a symlink out of the repository appeared
        return f"the content cannot be read after the run: {err}"
    if after.sha256 != decision.content.sha256:
        changed = [shown_path(project.root, p) for p in after.changed_since(decision.content.files)]
        return "the content changed during the run: " + ", ".join(changed[:5])
    stray = outside_content(project, decision.content, opened)
    if stray:
        return (
            "Ansible read files outside the approved content: "
            + ", ".join(stray[:5])
            + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        )
    return ""


def _refuse_applied(project: Project, change_id: str, again: bool, content: str = "") -> None:
    previous = _already_applied(project, change_id, content)
    if previous and not again:
        raise OpsledgerError(
            Problem(
                f"already applied successfully at {previous.finished_at}"
                if previous.result == RunResult.SUCCESS
                else f"already run: its run at {previous.finished_at} ended {previous.result}",
                stored_file(project.root, change_id, RUNS),
                "result",
                "pass --again to run it once more (recorded as another run)",
            ),
            EXIT_INVALID,
        )


def _refuse_denied(
    change_id: str, decision: Decision, when: str = "", *, project: Project
) -> OpsledgerError:
    """The denial; one denied while its change window is open is also notified."""
    folder = stored_file(project.root, change_id)
    problems = [
        Problem(f"denied by rule {c.rule}{when}: {c.why}", folder, c.rule)
        for c in decision.checks
        if not c.passed
    ]
    change = load_change(project, change_id)
    if change.window_start <= decision.at <= change.window_end:
        reasons = [p.message for p in problems]
        for line in notify(project, denied_notice(change_id, change.environment, reasons)).lines():
            problems.append(Problem(line, policy_file("notifications.yml"), "channels"))
    return OpsledgerError(problems, EXIT_DENIED)


def reconcile_first(project: Project, events: Events | None) -> Reconciled:
    """Settle earlier runs' evidence first: nothing runs while a record is not committed."""
    done = reconcile_runs(project)
    for note in done.notes:
        phase(events, "reconcile", note)
    done.raise_problems()
    return done


@dataclass
class _Outcome:
    result: RunResult
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
    interrupt: Interrupt,
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
        return _Outcome(RunResult.FAILED, None, None, None, "no approved content to run", timings)
    # Run and verify from an export of exactly the approved content (export.py): bookkeeping,
    # untracked files and submodules are not there for a play, a lookup or a suite to read.
    with exported(project, decision.content.files) as tree:
        runbook = load_runbook(tree, runbook.name)
        phase(events, "run", f"running {runbook.name} on {change.environment}:{change.targets}")
        clock = time.monotonic()
        with watching_reads() as watch:
            try:
                run: PlaybookRun | None = run_runbook(
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
                return _Outcome(RunResult.FAILED, None, None, None, f"run failed: {err}", timings)
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
                checked = verify_run(tree, change, runbook, events)
            except OpsledgerError as err:  # the suites could not run: the change is unproven
                failure = f"verification could not run: {err}"
            timings["verify_s"] = round(time.monotonic() - clock, 3)
            if checked is not None and not checked.ok:
                names = [f"{o.test}[{o.host}]" for o in checked.failures[:5]]
                failure = "verification failed: " + (", ".join(names) or "no test passed")
        if interrupt.requested or run.status == "canceled":
            # The operator stopped it: no rollback they did not ask for.
            return _Outcome(RunResult.CANCELED, run, checked, None, failure, timings, findings)
        if not failure:
            return _Outcome(RunResult.SUCCESS, run, checked, None, failure, timings, findings)
        phase(events, "failed", failure)
        clock = time.monotonic()
        try:
            back = roll_back(
                project, change, runbook, failure, events, interrupt, skip_verify, marker
            )
        except OpsledgerError as err:
            name = change.rollback or runbook.rollback or ""
            back = RollbackOutcome(name, "", f"{failure}; {err}", None, None, False)
        timings["rollback_s"] = round(time.monotonic() - clock, 3)
        result = (
            RunResult.FAILED
            if back is None
            else RunResult.ROLLED_BACK
            if back.ok
            else RunResult.ROLLBACK_FAILED
        )
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
    verified and rolled back, and the records are the shard's (`changes/<block>/<ID>/shards/`),
    never a run record: the change's run record is the merge of its shards (shards.merge_shards).

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
    phase(events, "decide", f"deciding {change_id}")
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
    phase(events, "lock", f"locking {', '.join(hosts)}")
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
            phase(events, "lock", f"taken over: {note}")
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
        with Interrupt() as interrupt:
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
        phase(events, "lock", warning)
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
        result=RunResult.STARTED,
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
    run: _Run, interrupt: Interrupt, events: Events | None, skip_verify: bool
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
                with commit_lock(project.root):
                    run.origin.claim(change.id, ahead_path)
        except OpsledgerError:
            shutil.rmtree(journal, ignore_errors=True)
            raise
        phase(events, "record", f"run {run_id} recorded as started")
        log = JobLog(then=events)  # every task result, kept with the record (joblog.py)
        outcome = _execute(
            project,
            change,
            runbook,
            run.decision,
            noting_runner(run.held, interrupt, log),
            interrupt,
            skip_verify,
            marker,
            journal,
            run.verbosity,
        )
        finished = dt.datetime.now(dt.UTC)
        played = outcome.run
        # Where the change's folder lies now: `change migrate-layout` may have moved it to its
        # block during the run; the path chosen before the run would recreate the flat folder,
        # the change then in both layouts (refused by every reader).
        _, final = run.record_paths(started)
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
            phase(events, "notify", line)
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
            verification=verification_entry(
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
        with commit_lock(project.root):
            kept = log_path_of(final)
            record = replace(record, log=log.write(kept))
            path = write_record(final, record)
            review = None if run.shard else open_review(project, change, finished)
            steps = []
            if played and not run.shard:  # what the runbook declares to follow its run
                steps = after_run(
                    project,
                    change,
                    runbook,
                    started=started,
                    run=played,
                    checked=outcome.checked,
                    hosts=record.hosts,
                )
            evidence = [s.evidence for s in steps if s.evidence]
            sha, problem = commit_or_journal(
                project,
                [path, kept] + ([review] if review else []) + evidence,
                f"Run {change.id}: {outcome.result} ({runbook.name} on "
                f"{change.environment}:{change.targets})",
                outcome.result,
            )
        for step in steps:
            phase(events, step.phase, step.line)
        if problem is None and run.shard is None:  # incidents follow committed evidence only
            detected = record_detection(project, [path, *evidence])
            if detected.summary():
                phase(events, "incidents", detected.summary())
        if problem is None and run.origin is not None:
            try:  # before the locks go: the next holder must see it
                run.origin.publish()
            except OpsledgerError as err:  # ci apply publishes again, and fails loudly
                phase(events, "record", f"not yet on the origin: {err}")
        if problem is None and evidence:  # told like the command of its own kind (`drill`)
            for step_told in notify_records(project, evidence):
                for line in step_told.lines():
                    phase(events, "notify", line)
        shutil.rmtree(journal, ignore_errors=True)
    finally:
        guard.done()
    where = path.relative_to(project.root)
    if problem is None:
        phase(events, "record", f"{where} committed as {sha[:10]}")
    else:
        phase(events, "record", f"{where} NOT COMMITTED: {problem}")
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
    """Commit the started record before the first task, or run nothing (exit 2).

    A withdrawal another command committed after this run's decision is read again here,
    under the commit lock that `change withdraw` holds for its own check and commit: one of
    the two comes first, and a withdrawn change never starts (exit 3).
    """
    with commit_lock(project.root):
        withdrawal = load_withdrawal(project, change_id, [head(project.root)])
        if withdrawal is not None:
            raise OpsledgerError(
                Problem(
                    f"withdrawn by {withdrawal.person} at {withdrawal.at} while this run was "
                    f"being prepared: {withdrawal.reason}; nothing was run",
                    str(withdrawal.path.relative_to(project.root)),
                    "withdrawn",
                    "nothing to do: a withdrawn change never runs",
                ),
                EXIT_DENIED,
            )
        try:
            save_record(project, path, ahead, f"Run {change_id}: started")
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
