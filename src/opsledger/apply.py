"""Applying a change: decide now, lock, run, verify, roll back on failure, record in git.

The order is the safety argument. The decision is taken again at apply time (approvals,
windows and freezes are judged at the moment the run starts), so a plan approved yesterday
cannot run in tonight's freeze. The environment's target hosts are locked before anything
touches them. The runbook runs through ansible-runner; then the Testinfra suites the runbook
names prove the result. A failed run or a failed verification runs the rollback runbook
against the desired state as it was *before* the change (a git worktree of that commit) and
verifies again, so "rolled back" means "proven back", not "attempted". A Ctrl-C cancels the
run and is recorded as such. Whatever happened, one run record is written and committed: it is
the evidence auditors read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.changes import Change, change_ids, load_change
from opsledger.content import change_content
from opsledger.decide import Decision, decide
from opsledger.errors import EXIT_DENIED, EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import git, head, is_repo
from opsledger.identity import commit_evidence, runner_identity
from opsledger.lock import HeldLocks, locked
from opsledger.project import DEFAULT_ENVIRONMENT, Project
from opsledger.readguard import outside_content, watching_reads
from opsledger.records import Record, change_runs, run_record_path, write_record
from opsledger.reviews import open_review
from opsledger.runbooks import Runbook, load_runbook
from opsledger.runner import PlaybookRun, run_playbook
from opsledger.verify import VerifyResult, verify

Events = Callable[[dict[str, Any]], None]
RETRYABLE = ("canceled",)  # results after which the same content may run again by itself


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
        }


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

    @property
    def ok(self) -> bool:
        return self.result == "success"


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


def rollback_base(project: Project, change_id: str) -> str:
    """The commit holding the desired state before the change.

    It is the first parent of the commit that brought `changes/<ID>/change.yml` into this
    branch, following first parents: after a merge, the target branch as it was before the
    merge; after a squash or a direct commit, the commit before it. Desired-state edits
    therefore belong in the change's commit or branch.
    """
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


@contextlib.contextmanager
def checkout_of(project: Project, commit: str) -> Iterator[Project]:
    """A temporary git worktree of `commit` that reaches the same hosts.

    Machine-local files git ignores (lab keys and known_hosts under .opsledger/, vault password
    files, the venv) are linked in from the project.
    """
    with tempfile.TemporaryDirectory(prefix="opsledger-rollback-") as tmp:
        tree = Path(tmp) / "tree"
        git(project.root, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            ignored = git(
                project.root,
                "ls-files",
                "--others",
                "--ignored",
                "--exclude-standard",
                "--directory",
            ).stdout.splitlines()
            for line in ignored:
                parts = Path(line.rstrip("/")).parts
                for depth in range(1, len(parts) + 1):  # link the first missing level
                    target = tree.joinpath(*parts[:depth])
                    if not target.exists() and not target.is_symlink():
                        target.symlink_to(project.root.joinpath(*parts[:depth]))
                        break
            yield Project(tree)
        finally:
            git(project.root, "worktree", "remove", "--force", str(tree), check=False)
            git(project.root, "worktree", "prune", check=False)


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


def _already_applied(project: Project, change_id: str) -> Record | None:
    for record in reversed(change_runs(project)):
        if record.change == change_id and record.result == "success":
            return record
    return None


def _run(
    project: Project,
    change: Change,
    runbook: Runbook,
    params: dict[str, Any],
    events: Events | None,
    interrupt: _Interrupt,
    env: dict[str, str] | None = None,
) -> PlaybookRun:
    return run_playbook(
        project,
        playbook=runbook.playbook,
        inventory=project.inventory_file(change.environment),
        limit=change.targets,
        params=params,
        tags=params.get("tags"),
        timeout=runbook.timeout,
        event_handler=events,
        cancel=interrupt,
        env=env,
    )


def _clock_override(project: Project, change_id: str, now: dt.datetime | None) -> None:
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
    project: Project, change: Change, runbook: Runbook, decision: Decision, opened: set[str]
) -> str:
    """Why the run cannot count as the approved content, or "" when it can."""
    if decision.content is None:
        return "no approved content to compare the run with"
    after = change_content(project, change, runbook, decision.hosts)
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
) -> RollbackOutcome | None:
    name = change.rollback or runbook.rollback
    if not name:
        _phase(events, "rollback", f"{runbook.name} declares no rollback runbook: none run")
        return None
    base = rollback_base(project, change.id)
    _phase(events, "rollback", f"rolling back with {name} to {base[:10]} ({reason})")
    with checkout_of(project, base) as before:
        back = load_runbook(before, name)
        run = _run(before, change, back, change.params, events, interrupt)
        checked = None
        if run.status == "successful" and not skip_verify:
            checked = _verify(before, change, back, events)
    ok = run.status == "successful" and (checked is None or checked.ok)
    return RollbackOutcome(name, base, reason, run, checked, ok)


def apply_change(
    project: Project,
    change_id: str,
    *,
    now: dt.datetime | None = None,
    wait: float = 0,
    skip_verify: bool = False,
    again: bool = False,
    events: Events | None = None,
    base: str | None = None,
) -> ApplyResult:
    """Decide now, lock the targets, run, verify, roll back on failure, commit the record.

    Raises OpsledgerError with exit 3 when policy denies the change and exit 4 when another
    run holds a target's lock; in both cases nothing has run. `now` (a chosen clock) is for
    the lab only (exit 2 elsewhere). Otherwise the result says success, failed, rolled_back,
    rollback_failed or canceled, and the record is committed. A run that read files outside
    the approved content, or during which the content changed, is not a success.

    Example:
        result = apply_change(find_project(), "CHG-0001")
        result.result, result.record_path, result.commit
    """
    if not is_repo(project.root):
        raise OpsledgerError(
            Problem(
                "not a git repository", str(project.root), "git", "apply runs from a git checkout"
            )
        )
    _clock_override(project, change_id, now)
    _phase(events, "decide", f"deciding {change_id}")
    decision = decide(project, change_id, now=now, base=base)
    if not decision.allowed:
        raise OpsledgerError(
            [
                Problem(f"denied by rule {c.rule}: {c.why}", f"changes/{change_id}", c.rule)
                for c in decision.checks
                if not c.passed
            ],
            EXIT_DENIED,
        )
    previous = _already_applied(project, change_id)
    if previous and not again:
        raise OpsledgerError(
            Problem(
                f"already applied successfully at {previous.finished_at}",
                f"changes/{change_id}/runs",
                "result",
                "pass --again to run it once more (recorded as another run)",
            ),
            EXIT_INVALID,
        )
    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    identity = runner_identity()
    commit = head(project.root)
    _phase(events, "lock", f"locking {', '.join(decision.hosts)}")
    lock_started = time.monotonic()
    with (
        locked(
            project,
            environment=change.environment,
            hosts=decision.hosts,
            change=change_id,
            owner=identity["person"],
            wait=wait,
        ) as held,
        _Interrupt() as interrupt,
    ):
        for note in held.taken_over:
            _phase(events, "lock", f"stale lock taken over: {note}")
        events = _noting_runner(held, interrupt, events)
        lock_wait = time.monotonic() - lock_started
        started = dt.datetime.now(dt.UTC)
        timings: dict[str, float] = {"lock_wait_s": round(lock_wait, 3)}
        _phase(events, "run", f"running {runbook.name} on {change.environment}:{change.targets}")
        clock = time.monotonic()
        with watching_reads() as watch:
            run = _run(project, change, runbook, change.params, events, interrupt, watch.env())
            opened = watch.files()
        timings["run_s"] = round(time.monotonic() - clock, 3)
        checked: VerifyResult | None = None
        back: RollbackOutcome | None = None
        failure = ""
        unapproved = _unapproved_reads(project, change, runbook, decision, opened)
        if run.status not in ("successful", "canceled") and not interrupt.requested:
            failed = [f"{h}: {r.failures[0]}" for h, r in run.hosts.items() if r.failures]
            failure = f"run {run.status}: " + ("; ".join(failed) or f"rc={run.rc}")
        elif unapproved and run.status == "successful":
            failure = unapproved
        elif run.status == "successful" and not skip_verify and not interrupt.requested:
            clock = time.monotonic()
            try:
                checked = _verify(project, change, runbook, events)
            except OpsledgerError as err:  # the suites could not run: the change is unproven
                failure = f"verification could not run: {err}"
            timings["verify_s"] = round(time.monotonic() - clock, 3)
            if checked is not None and not checked.ok:
                names = [f"{o.test}[{o.host}]" for o in checked.failures[:5]]
                failure = "verification failed: " + (", ".join(names) or "no test passed")
        if interrupt.requested or run.status == "canceled":
            result = "canceled"  # the operator stopped it: no rollback they did not ask for
        elif not failure:
            result = "success"
        else:
            _phase(events, "failed", failure)
            clock = time.monotonic()
            try:
                back = _rollback(project, change, runbook, failure, events, interrupt, skip_verify)
            except OpsledgerError as err:
                back = RollbackOutcome(
                    change.rollback or runbook.rollback or "",
                    "",
                    f"{failure}; {err}",
                    None,
                    None,
                    False,
                )
            timings["rollback_s"] = round(time.monotonic() - clock, 3)
            result = "failed" if back is None else "rolled_back" if back.ok else "rollback_failed"
        finished = dt.datetime.now(dt.UTC)
        content = change_content(project, change, runbook, decision.hosts)
        record = Record(
            kind="run",
            environment=change.environment,
            result=result,
            started_at=started.isoformat(),
            finished_at=finished.isoformat(),
            change=change_id,
            runbook=runbook.name,
            params=change.params,
            targets=change.targets,
            hosts=decision.hosts,
            runner=identity,
            git_commit=commit,
            content_sha256=content.sha256,
            policy_sha256=decision.policy_sha256,
            decision=decision.as_dict(),
            stats=run.host_stats(),
            changed_tasks=[
                {"host": name, "task": c.task, "role": c.role}
                for name, h in sorted(run.hosts.items())
                for c in h.changes
            ],
            verification=_verification_entry(checked, skip_verify, result, failure),
            rollback=back.as_dict() if back else None,
            # what made the run unprovable as the approved content (read watch, see readguard)
            findings=[{"rule": "approved-content", "message": unapproved}] if unapproved else [],
            measurements=timings,
        )
        path = write_record(run_record_path(project, change_id, started), record)
        review = open_review(project, change, finished)
        drilled, drill_path = _drill_record(
            project, change, runbook, started, run, checked, decision.hosts
        )
        if drilled:
            _phase(events, "drill", drilled)
        sha = commit_evidence(
            project,
            [path] + ([review] if review else []) + ([drill_path] if drill_path else []),
            f"Run {change_id}: {result} ({runbook.name} on {change.environment}:{change.targets})",
        )
        _phase(events, "record", f"{path.relative_to(project.root)} committed as {sha[:10]}")
    return ApplyResult(
        change_id,
        result,
        decision,
        record,
        path,
        sha,
        run,
        checked,
        back,
        review,
        held.taken_over,
    )


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


@dataclass
class PendingItem:
    change_id: str
    action: str  # applied | waiting | not approved | skipped
    why: str
    result: ApplyResult | None = None


@dataclass
class PendingResult:
    items: list[PendingItem]

    @property
    def applied(self) -> list[ApplyResult]:
        return [i.result for i in self.items if i.result]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.applied)


def apply_pending(
    project: Project,
    *,
    now: dt.datetime | None = None,
    wait: float = 0,
    skip_verify: bool = False,
    events: Events | None = None,
    environment: str | None = None,
    base: str | None = None,
) -> PendingResult:
    """Apply, oldest window first, every approved change on this branch not yet applied.

    Pending means: no successful run, and no failed run of the same content (a failed change
    is not retried by itself: amend it, which needs new approvals, or apply it by hand). A
    change whose window has not opened, or that is in a freeze, waits; one without valid
    approvals is skipped; both are reported. `environment` limits it to one environment (CI
    applies one environment at a time). What CI runs after a merge.

    Example:
        outcome = apply_pending(find_project())
        [(i.change_id, i.action, i.why) for i in outcome.items]
    """
    if environment is not None:
        project.require_environment(environment)
    records = change_runs(project)
    candidates = []
    for change_id in change_ids(project):
        runs = [r for r in records if r.change == change_id]
        if any(r.result == "success" for r in runs):
            continue
        change = load_change(project, change_id)
        if environment is None or change.environment == environment:
            candidates.append((change, runs))
    candidates.sort(key=lambda item: (item[0].window_start, item[0].id))
    for change, _ in candidates:  # refuse a chosen clock before anything runs
        _clock_override(project, change.id, now)
    items = []
    for change, runs in candidates:
        decision = decide(project, change.id, now=now, base=base)
        failed_before = [
            r
            for r in runs
            if r.result not in RETRYABLE and r.content_sha256 == decision.content_sha256
        ]
        if failed_before:
            last = failed_before[-1]
            items.append(
                PendingItem(
                    change.id,
                    "skipped",
                    f"its run at {last.finished_at} ended {last.result}; amend the change or "
                    "apply it by hand",
                )
            )
            continue
        failing = [c for c in decision.checks if not c.passed]
        if any(c.rule in ("approvals", "requester") for c in failing):
            why = "; ".join(f"{c.rule}: {c.why}" for c in failing)
            items.append(PendingItem(change.id, "not approved", why))
            continue
        if failing:
            why = "; ".join(f"{c.rule}: {c.why}" for c in failing)
            items.append(PendingItem(change.id, "waiting", why))
            continue
        result = apply_change(
            project,
            change.id,
            now=now,
            wait=wait,
            skip_verify=skip_verify,
            events=events,
            base=base,
        )
        items.append(PendingItem(change.id, "applied", result.result, result))
    return PendingResult(items)
