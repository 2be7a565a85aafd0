"""Runs that ended without their evidence in git: committed later, or recorded as interrupted.

Two faults leave a run's evidence incomplete, and neither may pass for something else:

- **the record's commit failed** (a held `.git/index.lock`, a read-only object store): the
  record file exists but does not count (only committed records do, `records.read_runs`). The
  commit is journaled in `.opsledger/outbox/` and retried by the next command; until it
  succeeds, apply refuses to run anything (exit 2) and says how to fix git.
- **the apply died** (kill -9, OOM, a machine or CI runner gone): its write-ahead record
  (`runs/<stamp>.started.json`, committed before the first task) has no final record. Once no
  process of that run is left on this machine (apply, guard, playbook), the next command writes
  the final record with result `interrupted` — what the write-ahead record knew, plus the hosts'
  results replayed from the run's event journal when it ran here — and commits it.

Evidence commits of one checkout are serialised by its commit lock (commitlock.py), so this
never sees a record between its writing and its commit by a live apply.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from opsledger import procs
from opsledger.commitlock import commit_lock
from opsledger.errors import EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import git
from opsledger.identity import commit_evidence, runner_identity
from opsledger.joblog import journal_log, log_path_of
from opsledger.layout import shown_path
from opsledger.lock import STALE_AFTER
from opsledger.playbook_runs import replay_journal
from opsledger.project import Project
from opsledger.records import (
    STARTED_SUFFIX,
    Record,
    RunFile,
    RunResult,
    Verified,
    final_path_of,
    open_runs,
)


@dataclass
class Reconciled:
    committed: list[str] = field(default_factory=list)  # records whose commit was retried
    interrupted: list[str] = field(default_factory=list)  # final records written as interrupted
    running: list[str] = field(default_factory=list)  # runs still going (run ids)
    removed: list[str] = field(default_factory=list)  # write-ahead files of runs never started
    problems: list[Problem] = field(default_factory=list)  # evidence still not committed

    @property
    def notes(self) -> list[str]:
        return (
            [f"committed {p} (its commit had failed)" for p in self.committed]
            + [f"recorded {p} as interrupted" for p in self.interrupted]
            + [f"removed {p}: that run never started" for p in self.removed]
        )

    def raise_problems(self) -> None:
        if self.problems:
            raise OpsledgerError(self.problems, EXIT_INVALID)


def _dirty(project: Project, paths: list[str]) -> list[str]:
    """Those of `paths` that exist and differ from HEAD (untracked, added or modified)."""
    existing = [p for p in paths if (project.root / p).exists()]
    if not existing:
        return []
    status = git(project.root, "status", "--porcelain", "-z", "--", *existing).stdout
    return sorted({entry[3:] for entry in status.split("\0") if len(entry) > 3})


def _uncommitted_problem(paths: list[str], result: str, why: str) -> Problem:
    shown = " ".join(paths)
    return Problem(
        f"the record of a run that ended {result} is not committed ({why})",
        paths[0],
        "git",
        "fix the repository (a stale .git/index.lock with no git running can be removed) and "
        f"run `opsledger apply --pending` to commit it, or commit it yourself: git add {shown}"
        f" && git commit -m 'Run record' -- {shown}",
    )


def commit_or_journal(
    project: Project, paths: list[Path], message: str, result: str
) -> tuple[str, Problem | None]:
    """Commit evidence; when git refuses, journal the commit for the next command to retry.

    Call it holding the checkout's commit lock (commitlock.py), the same hold that wrote the
    files. Returns (sha, None), or ("", the problem naming the files and the fix).
    """
    relative = [p.resolve().relative_to(project.root.resolve()).as_posix() for p in paths]
    try:
        return commit_evidence(project, paths, message), None
    except OpsledgerError as err:
        outbox = project.state_dir / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        entry = {"paths": relative, "message": message, "result": result}
        name = relative[0].replace("/", "_")
        (outbox / name).write_text(json.dumps(entry))
        why = err.problems[0].message if err.problems else str(err)
        return "", _uncommitted_problem(relative, result, why)


def _retry(
    project: Project, paths: list[str], message: str, result: str, done: Reconciled
) -> list[str] | None:
    """Commit what of `paths` git lacks; the paths committed, or None (problem noted)."""
    dirty = _dirty(project, paths)
    if not dirty:
        return []
    try:
        commit_evidence(project, [project.root / p for p in dirty], message)
    except OpsledgerError as err:
        why = err.problems[0].message if err.problems else str(err)
        done.problems.append(_uncommitted_problem(dirty, result, why))
        return None
    return dirty


def _interrupted(project: Project, started: RunFile, why: str, now: dt.datetime) -> Record:
    """The final record of a run whose apply died: what its write-ahead record and journal knew."""
    record = started.record
    runner = record.runner
    interruption = {
        "detected_at": now.isoformat(),
        "detected_by": runner_identity(),
        "why": why,
        "journal": "not on this machine",
    }
    stats: dict = {}
    changed: list = []
    journal = project.root / runner["journal"] if runner.get("journal") else None
    if journal and journal.is_dir():
        tally = replay_journal(journal)
        stats = {
            name: {
                "ok": h.ok,
                "changed": h.changed,
                "failed": h.failed,
                "unreachable": h.unreachable,
                "skipped": h.skipped,
            }
            for name, h in sorted(tally.hosts.items())
        }
        changed = [
            {"host": name, "task": c.task, "role": c.role}
            for name, h in sorted(tally.hosts.items())
            for c in h.changes
        ]
        interruption["journal"] = "replayed"
        interruption["last_task"] = tally.last_task
        guard_log = journal / "guard.log"
        if guard_log.is_file():  # what the guard did when the apply died
            interruption["guard"] = guard_log.read_text().splitlines()[-10:]
    return replace(
        record,
        result=RunResult.INTERRUPTED,
        finished_at=now.isoformat(),
        stats=stats,
        changed_tasks=changed,
        verification={"status": Verified.NOT_RUN, "why": "the run was interrupted"},
        rollback=None,
        interruption=interruption,
    )


def _gone(record: Record, now: dt.datetime) -> str | None:
    runner = record.runner
    why = procs.run_gone(
        machine_name=runner.get("machine", ""),
        key=runner.get("machine_key", ""),
        pid=runner.get("pid"),
        pid_start=runner.get("pid_start"),
        guard_pid=runner.get("guard_pid"),
        guard_start=runner.get("guard_start"),
        run=runner.get("run", ""),
    )
    if why:
        return f"its apply ended without a record: {why}"
    started = dt.datetime.fromisoformat(record.started_at)
    elsewhere = (runner.get("machine"), runner.get("machine_key")) != (
        procs.machine(),
        procs.machine_key(),
    )
    if elsewhere and now - started > STALE_AFTER:
        return (
            f"started on {runner.get('machine')} at {record.started_at}, no final record after "
            f"{STALE_AFTER}"
        )
    return None


def reconcile_runs(project: Project, *, now: dt.datetime | None = None) -> Reconciled:
    """Retry failed record commits; record runs whose apply died as interrupted.

    Example:
        done = reconcile_runs(find_project())
        done.notes, [str(p) for p in done.problems]
    """
    moment = now or dt.datetime.now(dt.UTC)
    done = Reconciled()
    with commit_lock(project.root):
        outbox = project.state_dir / "outbox"
        attempted: set[str] = set()
        for entry_file in sorted(outbox.glob("*.json")) if outbox.is_dir() else []:
            entry = json.loads(entry_file.read_text())
            attempted.update(entry["paths"])
            message = f"{entry['message']} (committed later)"
            committed = _retry(project, entry["paths"], message, entry["result"], done)
            if committed is not None:
                done.committed += [p for p in committed if "/runs/" in p]
                entry_file.unlink()
        ledger = open_runs(project)  # the open runs, not every committed record
        for loose in ledger.uncommitted:
            if loose.path in attempted:
                continue
            if loose.path.endswith(STARTED_SUFFIX):
                # Written ahead but never committed: the run starts only after that commit.
                (project.root / loose.path).unlink()
                done.removed.append(loose.path)
                continue
            record = loose.record
            message = f"Run {record.change}: {record.result} (committed later)"
            if _retry(project, [loose.path], message, record.result, done):
                done.committed.append(loose.path)
        if done.removed or done.committed:
            ledger = open_runs(project)  # the open runs, not every committed record
        for started in ledger.started:
            why = _gone(started.record, moment)
            if why is None:
                done.running.append(started.record.runner.get("run", started.path))
                continue
            # where the final record lies now: HEAD's path may be flat while a move to the
            # block is staged, and writing there would recreate the flat folder
            final_rel = shown_path(project.root, final_path_of(started.path))
            final = project.root / final_rel
            if final.exists():
                continue  # uncommitted: reported above
            record = _interrupted(project, started, why, moment)
            paths = [final_rel]
            journal_dir = started.record.runner.get("journal")
            log = journal_log(project.root / journal_dir) if journal_dir else None
            if log is not None:  # what the journal showed ran, kept like any run's log
                kept = log_path_of(final)
                kept.unlink(missing_ok=True)  # an earlier attempt's, never committed
                record = replace(record, log=log.write(kept))
                paths.append(kept.relative_to(project.root).as_posix())
            final.write_text(record.to_json())
            message = f"Run {record.change}: interrupted ({why})"
            if _retry(project, paths, message, RunResult.INTERRUPTED, done) is not None:
                done.interrupted.append(final_rel)
                journal = started.record.runner.get("journal")
                if journal:
                    shutil.rmtree(project.root / journal, ignore_errors=True)
    return done
