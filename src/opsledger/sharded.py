"""Sharded applies as use cases: run one shard of a change, merge the shards into its run.

The split, the shard records and the pure merge are in shards.py; this module runs them with
apply (lock, run, verify, roll back) and writes the merged run record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.apply import ApplyResult, apply_change
from opsledger.changes import Change, load_change
from opsledger.commitlock import commit_lock
from opsledger.errors import EXIT_LOCKED, OpsledgerError, Problem
from opsledger.execution import Events
from opsledger.faults.detect import record_detection
from opsledger.identity import commit_evidence
from opsledger.layout import stored_file
from opsledger.lock import lock_policy
from opsledger.origin_records import OriginRecords
from opsledger.project import Project
from opsledger.records import Record, run_record_path, save_record
from opsledger.reviews import open_review
from opsledger.rollback import roll_back_hosts
from opsledger.runbooks import load_runbook
from opsledger.shards import (
    Shard,
    ShardFile,
    ShardRun,
    latest_attempt,
    merge_records,
    merged_already,
    next_attempt,
    plan_shards,
    reports_of,
    worst,
)


def shard_of(project: Project, change_id: str, shard: Shard) -> ShardRun | None:
    """The shard's part of the change (None when all its hosts are on other shards).

    Example:
        shard_of(find_project(), "CHG-0001", Shard(2, 3)).hosts
    """
    from opsledger.changes import validate_change

    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    hosts = validate_change(project, change_id).hosts
    plan = plan_shards(
        project, environment=change.environment, runbook=runbook, hosts=hosts, count=shard.count
    )
    mine = plan.hosts_of(shard.index)
    if not mine:
        return None
    if not plan.split:
        return ShardRun(Shard(1, 1), next_attempt(project, change_id), tuple(mine))
    return ShardRun(shard, next_attempt(project, change_id), tuple(mine))


def apply_shard(
    project: Project,
    change_id: str,
    shard: Shard,
    *,
    origin: OriginRecords | None = None,
    events: Events | None = None,
    **options: Any,
) -> ApplyResult:
    """Apply one shard of a change, then merge the shards when it was the last to report.

    A runbook that may not be split runs whole on shard 1 as an ordinary run (its own run
    record); the other shards have nothing of it (exit 4, field `shard`: pending lists it as
    `other shards`). Options are apply_change's.

    Example:
        apply_shard(find_project(), "CHG-0001", Shard.parse("2/3")).result
    """
    run = shard_of(project, change_id, shard)
    if run is None:
        raise OpsledgerError(
            Problem(
                f"shard {shard} holds none of {change_id}'s hosts",
                stored_file(project.root, change_id),
                "shard",
                "nothing to do here: the other shards run it",
            ),
            EXIT_LOCKED,
        )
    whole = run.shard.count == 1
    result = apply_change(
        project, change_id, origin=origin, events=events, shard=None if whole else run, **options
    )
    if whole or not result.committed:
        return result
    if origin is not None:
        origin.pull()
    merged = merge_shards(
        project, change_id, count=run.shard.count, attempt=run.attempt, origin=origin
    )
    if events and merged.merged:
        where = merged.record_path.relative_to(project.root) if merged.record_path else ""
        events(
            {
                "event": "opsledger_phase",
                "phase": "merge",
                "message": f"shards merged into {where}: {merged.result}",
            }
        )
    return result


def shard_runner(shard: Shard) -> Callable[..., ApplyResult]:
    """apply_change's shape, running one shard: what `apply --pending` runs per change."""

    def run(project: Project, change_id: str, **options: Any) -> ApplyResult:
        return apply_shard(project, change_id, shard, **options)

    return run


@dataclass
class MergeResult:
    change_id: str
    attempt: int
    count: int
    result: str
    record: Record | None = None
    record_path: Path | None = None
    commit: str = ""
    waiting: list[str] = field(default_factory=list)  # shards not reported yet
    others_rolled_back: dict[str, Any] | None = None
    already: bool = False  # the merged record was there already

    @property
    def merged(self) -> bool:
        return self.record_path is not None


def merge_shards(
    project: Project,
    change_id: str,
    *,
    count: int,
    attempt: int | None = None,
    final: bool = False,
    origin: OriginRecords | None = None,
    events: Events | None = None,
) -> MergeResult:
    """Write the change's run record from its shards' records, once all of them reported.

    Without `final`, a shard with no final record yet means "not yet" (`waiting`), and
    nothing is written. With `final` (the pipeline's merge job, after every shard job ended),
    such a shard counts as interrupted. With `origin` the record is claimed there: exit 4
    when another merge wrote it first. With `shards.on_failure: all` (policies/locks.yml), the
    hosts of shards that succeeded are rolled back when another one did not.

    Example:
        merge_shards(find_project(), "CHG-0001", count=3, final=True).result
    """
    change = load_change(project, change_id)
    if attempt is None:
        attempt = latest_attempt(project, change_id, count)
    done = merged_already(project, change_id, attempt)
    if done is not None:
        return MergeResult(change_id, attempt, count, done.result, done, already=True)
    reports = reports_of(project, change_id, attempt, count)
    waiting = [f"{i}/{count}" for i, f in reports.items() if f is None or f.started]
    if waiting and not final:
        return MergeResult(change_id, attempt, count, "", waiting=waiting)
    record = merge_records(change, count, attempt, reports)
    others = _roll_back_others(project, change, record, reports, events)
    if others is not None:
        after = "rolled_back" if others.get("result") == "success" else "rollback_failed"
        record = dataclasses.replace(
            record,
            rollback={**(record.rollback or {}), "others": others},
            result=worst([record.result, after]),
        )
    started = (
        dt.datetime.fromisoformat(record.started_at)
        if record.started_at
        else dt.datetime.now(dt.UTC)
    )
    path = run_record_path(project, change_id, started)
    record = _told(project, change, record, path, events)
    with commit_lock(project.root):
        sha = save_record(
            project,
            path,
            record,
            f"Run {change_id}: {record.result} (merged from {count} shards, set {attempt})",
        )
        if origin is not None:
            origin.claim(change_id, path)  # exit 4 when another merge came first
        # What apply does after a run: an emergency change's review falls due, in its own
        # commit (a lost claim drops exactly the record's commit).
        finished = record.finished_at or started.isoformat()
        review = open_review(project, change, dt.datetime.fromisoformat(finished))
        if review is not None:
            commit_evidence(project, [review], f"Review of {change_id} due")
    detected = record_detection(project, [path])  # incidents follow committed evidence
    if events and detected.summary():
        events({"event": "opsledger_phase", "phase": "incidents", "message": detected.summary()})
    return MergeResult(
        change_id, attempt, count, record.result, record, path, sha, others_rolled_back=others
    )


def _told(
    project: Project, change: Change, record: Record, path: Path, events: Events | None
) -> Record:
    """Notify the merged run as apply notifies a run (its shards told nobody)."""
    from opsledger.notify import notify, run_notice

    failure = "; ".join(
        f"shard {s['shard']}: {s['result']}" for s in record.runner.get("shards", [])
        if s["result"] != "success"
    )  # fmt: skip
    told = notify(
        project,
        run_notice(
            change.id,
            change.title,
            change.environment,
            change.targets,
            record.runbook or "",
            record.result,
            failure,
            path.relative_to(project.root).as_posix(),
            hosts=record.hosts,
            rollback="",
        ),
    )
    for line in told.lines():
        if events:
            events({"event": "opsledger_phase", "phase": "notify", "message": line})
    return dataclasses.replace(record, notifications=told.as_list())


def _roll_back_others(
    project: Project,
    change: Change,
    record: Record,
    reports: dict[int, ShardFile | None],
    events: Events | None,
) -> dict[str, Any] | None:
    """With on_failure `all`: roll back the hosts of the shards that succeeded."""
    if record.result == "success":
        return None
    if lock_policy(project, change.environment).shards.get("on_failure", "own") != "all":
        return None
    hosts = sorted(
        h
        for f in reports.values()
        if f and not f.started and f.record and f.record.result == "success"
        for h in f.record.hosts
    )
    if not hosts:
        return None
    reason = f"another shard ended {record.result} (policies/locks.yml on_failure: all)"
    return roll_back_hosts(project, change, hosts, reason=reason, events=events)


@dataclass
class MergeAllResult:
    merges: list[MergeResult]

    @property
    def ok(self) -> bool:
        return all(m.result == "success" for m in self.merges if m.merged and not m.already)


def merge_all(
    project: Project,
    *,
    environment: str | None = None,
    final: bool = False,
    origin: OriginRecords | None = None,
    events: Events | None = None,
) -> MergeAllResult:
    """Merge every set of shard records HEAD holds that has no run record yet.

    What the pipeline's merge job runs once the shard jobs ended (`final`): a shard that never
    reported is recorded as interrupted, so the change runs again later rather than vanish.

    Example:
        merge_all(find_project(), environment="production", final=True).ok
    """
    from opsledger.changes import change_ids
    from opsledger.shards import committed_shard_files

    if origin is not None:
        origin.pull()
    merges = []
    for change_id in change_ids(project):
        files = committed_shard_files(project, change_id)
        if not files:
            continue
        if environment is not None and load_change(project, change_id).environment != environment:
            continue
        for attempt, count in sorted({(f.attempt, f.shard.count) for f in files}):
            if merged_already(project, change_id, attempt) is not None:
                continue
            merges.append(
                merge_shards(
                    project,
                    change_id,
                    count=count,
                    attempt=attempt,
                    final=final,
                    origin=origin,
                    events=events,
                )
            )
    if origin is not None and any(m.merged for m in merges):
        origin.publish()
    return MergeAllResult(merges)
